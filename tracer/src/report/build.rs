//! Assembling a [`Report`] from what a trace collected: the kernel's figures per stack, the
//! symbolized frames and sample history of each stack, the traced processes, and the verdict.
//!
//! It takes plain values, not the trace session, so a report can be built (and tested) without
//! probes or processes.

use tracer_common::{Counter, CounterKind};

use super::{
    MappingKind, ModuleMapping, ProcessEntry, Report, Stack, StackPoint, Target, TimelinePoint,
    Totals, Verdict, plumbing::Plumbing,
};
use crate::{
    collect::{MemoryKind, StackFigures},
    growth::{self, Class, Growth, MIN_SAMPLES, Thresholds, settled},
    target::memory::MemoryLimit,
    units::{human_bytes, human_duration, human_rate},
};

/// What a report says about the trace besides its stacks.
#[derive(Clone, Debug, Default)]
pub struct TraceFacts {
    /// Every traced process, by pid.
    pub processes: Vec<ProcessEntry>,
    /// The command leaktracer launched, if it did.
    pub launched_command: Option<Vec<String>>,
    /// With `--cgroup` or `--container`: the cgroup v2 directory traced.
    pub cgroup: Option<String>,
    pub duration_secs: f64,
    /// Why the trace ended, or `running` for a live snapshot.
    pub end_reason: String,
    pub thresholds: Thresholds,
    pub min_age_secs: Option<f64>,
    pub sample_bytes: Option<u64>,
    /// The memory limit of the (first) target, last read while it was alive.
    pub limit: Option<MemoryLimit>,
    /// The whole process at each sample.
    pub timeline: Vec<TimelinePoint>,
    /// The mapped objects the stacks' addresses fall in.
    pub mappings: Vec<ModuleMapping>,
    /// How the launched command ended, if it did.
    pub target_exit: Option<super::TargetExit>,
    /// Execs of traced processes.
    pub execs: Vec<super::ExecEvent>,
    /// `--unwind cfi`: what the unwinder had and did.
    pub unwind: Option<super::UnwindStats>,
    /// `--reachability`: the scan's summary.
    pub reachability: Option<super::Reachability>,
    /// Attach and detach figures.
    pub attach: Option<super::AttachSummary>,
}

/// One stack's entry: the kernel's figures, its symbolized frames (their leading allocator
/// plumbing marked by `plumbing`) and its history.
pub fn stack(
    pid: u32,
    comm: String,
    figures: &StackFigures,
    mut frames: Vec<super::Frame>,
    plumbing: &Plumbing,
    timeline: Vec<StackPoint>,
    growth: Option<Growth>,
) -> Stack {
    plumbing.mark(&mut frames);
    let thread_stacks = figures.kind == MemoryKind::ThreadStack;
    Stack {
        mapping_kind: match figures.kind {
            MemoryKind::Heap => None,
            MemoryKind::Mapping => Some(MappingKind::Mapping),
            MemoryKind::ThreadStack => Some(MappingKind::ThreadStack),
        },
        threads: thread_stacks.then_some(figures.threads),
        cached_stacks: thread_stacks.then(|| {
            figures
                .outstanding_allocations
                .saturating_sub(figures.threads)
        }),
        resident_bytes: figures.resident_bytes.filter(|_| thread_stacks),
        id: Stack::id_of(&frames),
        outstanding_bytes: figures.outstanding_bytes,
        outstanding_allocations: figures.outstanding_allocations,
        total_allocations: figures.total_allocations,
        total_bytes: figures.total_bytes,
        pid,
        comm,
        frames,
        growth,
        timeline,
        reachability: None,
    }
}

/// The stacks a report shows alike, as groups of indices into `stacks` (each its process, kind
/// and frames), in the order of each group's first member. Alike: the same process and kind,
/// and frames that read the same (function, module, file and line, in order), whatever the
/// addresses behind them. Two kernel stacks of one Python line differ in return addresses
/// inside the eval loop (a call's first run and its specialized runs), which every frame of
/// the report replaces; listed apart they would split one site's figures. Not by [`Stack::id`]:
/// it hashes functions and modules only, and two call sites of one function share it.
pub fn alike(stacks: &[(u32, MemoryKind, &[super::Frame])]) -> Vec<Vec<usize>> {
    type Shown<'a> = (
        u32,
        MemoryKind,
        Vec<(&'a str, &'a str, Option<&'a str>, Option<u32>)>,
    );
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: std::collections::HashMap<Shown, usize> = std::collections::HashMap::new();
    for (i, (pid, kind, frames)) in stacks.iter().enumerate() {
        let shown = frames
            .iter()
            .map(|f| {
                (
                    f.function.as_str(),
                    f.module.as_str(),
                    f.file.as_deref(),
                    f.line,
                )
            })
            .collect();
        let group = *index.entry((*pid, *kind, shown)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(i);
    }
    groups
}

/// Sorts stacks the way reports list them: what they cost first (outstanding bytes; for
/// thread stacks, what is resident of them).
pub fn sort_stacks(stacks: &mut [Stack]) {
    stacks.sort_by(|a, b| {
        b.cost_bytes()
            .cmp(&a.cost_bytes())
            .then(b.outstanding_bytes.cmp(&a.outstanding_bytes))
            .then(b.outstanding_allocations.cmp(&a.outstanding_allocations))
            .then(a.pid.cmp(&b.pid))
    });
}

/// The totals: outstanding figures summed over `stacks`, the rest from the kernel's counters.
pub fn totals(stacks: &[Stack], counters: &[u64]) -> Totals {
    let counter = |c: Counter| counters[c as usize];
    let of_kind = |kind: CounterKind| {
        Counter::ALL
            .iter()
            .filter(|c| c.kind() == kind)
            .map(|c| (c.name().to_string(), counter(*c)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let dropped_by_cause = of_kind(CounterKind::Dropped);
    Totals {
        outstanding_bytes: stacks.iter().map(|s| s.outstanding_bytes).sum(),
        outstanding_allocations: stacks.iter().map(|s| s.outstanding_allocations).sum(),
        allocations: counter(Counter::Allocations),
        frees: counter(Counter::Frees),
        dropped: dropped_by_cause.values().sum(),
        dropped_by_cause,
        ignored: of_kind(CounterKind::Ignored),
    }
}

/// The report of a trace: `stacks` sorted (see [`sort_stacks`]), `counters` the kernel's
/// counter slots summed over CPUs.
pub fn report(stacks: Vec<Stack>, counters: &[u64], facts: TraceFacts) -> Report {
    let totals = totals(&stacks, counters);
    let oom_kills = oom_kills(&facts);
    // A process that has ended reaches no limit: with every one ended, nothing is predicted.
    let all_ended = facts.processes.iter().all(|p| p.exit.is_some())
        && (!facts.processes.is_empty() || facts.target_exit.is_some());
    let verdict = verdict_with_endings(
        &stacks,
        &facts.timeline,
        facts.limit.clone(),
        &oom_kills,
        counters[Counter::AllocMapFull as usize],
        all_ended,
    );
    let functions = functions(&stacks);
    let root_command = facts
        .processes
        .first()
        .map(|p| p.command.clone())
        .filter(|c| !c.is_empty());
    Report {
        target: Target {
            pids: facts.processes.iter().map(|p| p.pid).collect(),
            command: facts.launched_command.or(root_command),
            comms: facts.processes.iter().map(|p| p.comm.clone()).collect(),
            cgroup: facts.cgroup,
        },
        duration_secs: facts.duration_secs,
        totals,
        stacks,
        allocators: facts
            .processes
            .iter()
            .map(|p| super::AllocatorUsed {
                pid: p.pid,
                object: p.allocator.clone(),
            })
            .collect(),
        processes: facts.processes,
        end_reason: facts.end_reason,
        timeline: facts.timeline,
        verdict: Some(verdict),
        thresholds: Some(facts.thresholds),
        min_age_secs: facts.min_age_secs,
        sample_bytes: facts.sample_bytes,
        mappings: facts.mappings,
        target_exit: facts.target_exit,
        execs: facts.execs,
        unwind: facts.unwind,
        functions,
        reachability: facts.reachability,
        attach: facts.attach,
    }
}

/// Outstanding memory by function, inclusive (see [`super::FunctionTotal`]), most first, each
/// stack by what it costs (thread stacks by what is resident of them).
/// Frames folded as allocator plumbing do not count: the first function is the program's own.
pub fn functions(stacks: &[Stack]) -> Vec<super::FunctionTotal> {
    use std::collections::{BTreeSet, HashMap};
    let mut by_function: HashMap<(&str, &str), super::FunctionTotal> = HashMap::new();
    let holding: Vec<&Stack> = stacks.iter().filter(|s| s.cost_bytes() > 0).collect();
    for stack in &holding {
        let on_stack: BTreeSet<(&str, &str, bool)> = super::shown_frames(&stack.frames)
            .into_iter()
            .filter(|f| !f.plumbing)
            .map(|f| {
                // A runtime's function (a Python one) is told apart by its source file, not
                // the interpreter.
                let (module, standard) = match (f.kind.rules(), &f.file) {
                    (Some(rules), Some(file)) => (file.as_str(), rules.in_standard_library(file)),
                    _ => (f.module.as_str(), false),
                };
                let module = module.rsplit('/').next().unwrap_or(module);
                (f.function.as_str(), module, standard)
            })
            .collect();
        for (function, module, standard_library) in on_stack {
            let total =
                by_function
                    .entry((function, module))
                    .or_insert_with(|| super::FunctionTotal {
                        function: function.to_string(),
                        module: module.to_string(),
                        standard_library,
                        ..Default::default()
                    });
            total.outstanding_bytes += stack.cost_bytes();
            total.outstanding_allocations += stack.outstanding_allocations;
            total.bytes_per_sec += stack.growth.as_ref().map_or(0.0, |g| g.bytes_per_sec);
            total.stacks += 1;
        }
    }
    let mut functions: Vec<super::FunctionTotal> = by_function
        .into_values()
        .map(|mut total| {
            total.on_every_stack = holding.len() > 1 && total.stacks == holding.len();
            total
        })
        .collect();
    functions.sort_by(|a, b| {
        b.outstanding_bytes
            .cmp(&a.outstanding_bytes)
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.module.cmp(&b.module))
    });
    functions
}

/// The traced processes the OOM killer ended, each once: the launched command or `--pid`
/// target, and any other process in scope.
fn oom_kills(facts: &TraceFacts) -> Vec<super::TargetExit> {
    let mut kills: Vec<super::TargetExit> = Vec::new();
    let ends = facts
        .target_exit
        .iter()
        .chain(facts.processes.iter().filter_map(|p| p.exit.as_ref()));
    for exit in ends.filter(|e| e.oom_killed) {
        if kills.iter().all(|k| k.pid != exit.pid) {
            kills.push(exit.clone());
        }
    }
    kills
}

/// The verdict: is anything leaking, how fast does the process's outstanding memory grow, and
/// when does it reach its limit at that rate.
pub fn verdict(
    stacks: &[Stack],
    timeline: &[TimelinePoint],
    limit: Option<MemoryLimit>,
) -> Verdict {
    verdict_with_endings(stacks, timeline, limit, &[], 0, false)
}

/// [`verdict`], saying first which processes the OOM killer ended (`oom_kills`): their limit
/// was reached, so no time to it is predicted. With `unrecorded` allocations (the record table
/// full), a verdict that finds no leak says first that it is incomplete: a table full since
/// early on reads as no growth at all. When `all_ended` (every traced process has exited or
/// was killed), no time to the limit is predicted either: a dead process reaches none.
pub fn verdict_with_endings(
    stacks: &[Stack],
    timeline: &[TimelinePoint],
    limit: Option<MemoryLimit>,
    oom_kills: &[super::TargetExit],
    unrecorded: u64,
    all_ended: bool,
) -> Verdict {
    let times: Vec<f64> = timeline.iter().map(|p| p.t_secs).collect();
    let bytes: Vec<f64> = timeline.iter().map(|p| p.cost() as f64).collect();
    let (times, bytes) = settled(&times, &bytes);
    let rate = growth::slope(times, bytes);
    let standing = Standing::of(stacks);
    let leaking_stacks = standing.leaking_stacks;
    let lost_bytes = standing.lost_bytes;
    let referenced_growth_stacks = standing.referenced_growth_stacks;
    let leaking_threads: u64 = standing.thread_leaks.iter().filter_map(|s| s.threads).sum();
    let judged = times.len() >= MIN_SAMPLES;
    let seconds_to_limit = limit
        .as_ref()
        .filter(|_| rate > 0.0 && judged && oom_kills.is_empty() && !all_ended)
        .map(|l| l.headroom() as f64 / rate);
    let mut summary = standing.summary(judged.then_some(rate), times.len(), unrecorded);
    if let Some(limit) = limit.as_ref().filter(|_| oom_kills.is_empty()) {
        match seconds_to_limit {
            Some(secs) => summary.push_str(&format!(
                "; {} limit ({}) reached in about {} at this rate",
                human_bytes(limit.limit_bytes),
                limit.source,
                human_duration(secs)
            )),
            None => summary.push_str(&format!(
                "; limit {} ({})",
                human_bytes(limit.limit_bytes),
                limit.source
            )),
        }
    }
    if unrecorded > 0 && leaking_stacks == 0 {
        summary = format!(
            "INCOMPLETE: {unrecorded} allocations were not recorded (the record table was full: raise --max-allocations), so a leak among them is not seen; {summary}"
        );
    }
    if !oom_kills.is_empty() {
        let kills: Vec<String> = oom_kills
            .iter()
            .map(|exit| format!("pid {} was {}", exit.pid, exit.describe()))
            .collect();
        summary = format!("OOM-KILLED: {}; {summary}", kills.join("; "));
    }
    let scanned = stacks.iter().any(|s| s.reachability.is_some());
    Verdict {
        oom_killed: !oom_kills.is_empty(),
        leak: leaking_stacks > 0,
        leaking_stacks,
        lost_bytes: scanned.then_some(lost_bytes),
        referenced_growth_stacks,
        leaking_threads,
        growth_bytes_per_sec: rate,
        memory_limit_bytes: limit.as_ref().map(|l| l.limit_bytes),
        memory_usage_bytes: limit.as_ref().map(|l| l.usage_bytes),
        memory_limit_source: limit.map(|l| l.source),
        seconds_to_limit,
        unrecorded_allocations: unrecorded,
        summary,
    }
}

/// How the stacks stand, the figures the verdict is made of.
struct Standing<'a> {
    /// Stacks with bytes no pointer leads to (a scan found them), and those bytes.
    lost_stacks: usize,
    lost_bytes: u64,
    /// Stacks classed leak whose bytes are not all still referenced.
    growing_leaks: usize,
    /// Stacks classed leak with every byte still referenced (a store to bound).
    referenced_growth_stacks: usize,
    /// Stacks that leak: lost bytes, or a growing leak.
    leaking_stacks: usize,
    /// Thread stacks classed `leak`: their thread count keeps growing.
    thread_leaks: Vec<&'a Stack>,
}

impl<'a> Standing<'a> {
    fn of(stacks: &'a [Stack]) -> Self {
        let growing = |s: &&Stack| s.growth.is_some_and(|g| g.class == Class::Leak);
        // With a reachability scan: bytes no pointer leads to are leaks whatever their growth,
        // and a stack that grows with every byte still referenced is a store to bound, not a leak.
        let lost = |s: &&Stack| {
            s.reachability
                .is_some_and(|r| r.definitely_lost.bytes + r.indirectly_lost.bytes > 0)
        };
        let referenced = |s: &&Stack| {
            s.reachability
                .is_some_and(|r| r.lost_bytes() == 0 && r.still_reachable.bytes > 0)
        };
        let lost_stacks = stacks.iter().filter(lost).count();
        let lost_bytes: u64 = stacks
            .iter()
            .filter_map(|s| s.reachability)
            .map(|r| r.definitely_lost.bytes + r.indirectly_lost.bytes)
            .sum();
        let growing_leaks = stacks
            .iter()
            .filter(|s| growing(s) && !referenced(s))
            .count();
        let referenced_growth_stacks = stacks
            .iter()
            .filter(|s| growing(s) && referenced(s))
            .count();
        let leaking_stacks = stacks
            .iter()
            .filter(|s| lost(s) || (growing(s) && !referenced(s)))
            .count();
        // Thread stacks classed `leak`: their thread count keeps growing.
        let thread_leaks: Vec<&Stack> = stacks
            .iter()
            .filter(|s| s.is_thread_stacks() && growing(s) && !referenced(s))
            .collect();
        Self {
            lost_stacks,
            lost_bytes,
            growing_leaks,
            referenced_growth_stacks,
            leaking_stacks,
            thread_leaks,
        }
    }

    /// The verdict's sentence before the limit: lost bytes, growing leaks or none; `rate` the
    /// growth of all outstanding memory, when there were enough samples (`samples`) to judge
    /// it; `unrecorded` allocations make "no leak found" say "among those recorded".
    fn summary(&self, rate: Option<f64>, samples: usize, unrecorded: u64) -> String {
        let Self {
            lost_stacks,
            lost_bytes,
            growing_leaks,
            referenced_growth_stacks,
            ref thread_leaks,
            ..
        } = *self;
        let judged = rate.is_some();
        let rate = rate.unwrap_or_default();
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let no_leak_found = if unrecorded > 0 {
            "no leak found among those recorded"
        } else {
            "no leak found"
        };
        if lost_stacks > 0 {
            let mut text = format!(
                "LEAK: {} lost on {lost_stacks} stack{} (definitely or indirectly: no pointer to it is left)",
                human_bytes(lost_bytes),
                plural(lost_stacks)
            );
            if judged && growing_leaks > 0 {
                text.push_str(&format!(
                    "; {growing_leaks} stack{} growing steadily",
                    plural(growing_leaks)
                ));
            }
            if judged {
                text.push_str(&format!("; outstanding memory {}", human_rate(rate)));
            }
            text
        } else if !judged {
            format!(
                "too short to judge growth: {} samples (trace longer, or sample more often with --interval)",
                samples
            )
        } else if growing_leaks > 0 {
            format!(
                "LEAK: {growing_leaks} stack{} growing steadily{}; outstanding memory {}",
                plural(growing_leaks),
                describe_thread_leak(thread_leaks, growing_leaks),
                human_rate(rate)
            )
        } else if referenced_growth_stacks > 0 {
            format!(
                "{no_leak_found}: {referenced_growth_stacks} stack{} grow{} steadily, but every byte is still referenced (a cache or store to bound, not a leak); outstanding memory {}",
                plural(referenced_growth_stacks),
                if referenced_growth_stacks == 1 {
                    "s"
                } else {
                    ""
                },
                human_rate(rate)
            )
        } else {
            format!(
                "{no_leak_found}: no stack grows steadily (outstanding memory {})",
                human_rate(rate)
            )
        }
    }
}

/// The verdict's words for leaking thread stacks (` (a leak of threads: ...)`), empty without
/// any; `leaks` is how many stacks leak in all.
fn describe_thread_leak(thread_leaks: &[&Stack], leaks: usize) -> String {
    if thread_leaks.is_empty() {
        return String::new();
    }
    let threads: u64 = thread_leaks.iter().filter_map(|s| s.threads).sum();
    let rate: f64 = thread_leaks
        .iter()
        .filter_map(|s| s.growth.and_then(|g| g.threads_per_sec))
        .sum();
    let reserved: u64 = thread_leaks.iter().map(|s| s.outstanding_bytes).sum();
    let resident: u64 = thread_leaks.iter().map(|s| s.cost_bytes()).sum();
    let mut starters: Vec<&str> = thread_leaks.iter().map(|s| thread_starter(s)).collect();
    starters.dedup();
    let which = if thread_leaks.len() == leaks {
        String::new()
    } else {
        format!("{} of them ", thread_leaks.len())
    };
    format!(
        " ({which}a leak of threads: {threads} thread{} started at {} still running, {:+.2} threads/s; their stacks {} reserved, {} resident)",
        if threads == 1 { "" } else { "s" },
        starters.join(", "),
        rate,
        human_bytes(reserved),
        human_bytes(resident)
    )
}

/// Where a stack of thread stacks started its threads: its innermost runtime (Python)
/// function, else its first own frame past the C library's thread creation (`pthread_create`'s caller).
pub fn thread_starter(stack: &Stack) -> &str {
    const CREATION: &[&str] = &[
        "pthread_create",
        "__pthread_create_2_1",
        "create_thread",
        "thrd_create",
        "__clone",
        "__clone3",
        "__clone_internal",
        "clone",
        "clone3",
    ];
    let own = stack.own_frames();
    if let Some(runtime) = own.iter().find(|f| !f.kind.is_native()) {
        return &runtime.function;
    }
    let name = |f: &super::Frame| -> bool {
        let bare = f.function.split('@').next().unwrap_or_default();
        CREATION.contains(&bare.strip_prefix("__GI_").unwrap_or(bare))
    };
    own.iter()
        .find(|f| !name(f))
        .or(own.first())
        .map_or("[unknown stack]", |f| f.function.as_str())
}

#[cfg(test)]
mod tests {
    use tracer_common::{COUNTER_SLOTS, Counter};

    use super::*;
    use crate::report::Frame;

    fn leaf(name: &str) -> Vec<Frame> {
        vec![
            Frame {
                function: "zmalloc_usable".into(),
                module: "/bin/app".into(),
                ..Default::default()
            },
            Frame {
                function: name.into(),
                module: "/bin/app".into(),
                ..Default::default()
            },
        ]
    }

    /// A stack of `names` (innermost first) holding `bytes` in `allocations`.
    fn stack_of(names: &[&str], bytes: u64, allocations: u64) -> Stack {
        Stack {
            outstanding_bytes: bytes,
            outstanding_allocations: allocations,
            frames: names
                .iter()
                .map(|name| Frame {
                    function: name.to_string(),
                    module: "/srv/app".into(),
                    plumbing: *name == "zmalloc",
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn stacks_that_read_the_same_are_one_group() {
        let frame = |function: &str, line| Frame {
            function: function.into(),
            module: "python3.14".into(),
            file: Some("leak.py".into()),
            line: Some(line),
            ..Frame::default()
        };
        let at = |address| Frame {
            address,
            ..frame("PyBytes_FromSize", 10)
        };
        // One Python line, reached through two return addresses in the eval loop.
        let first = [at(0x1000), frame("leak", 15), frame("main", 22)];
        let specialized = [at(0x2000), frame("leak", 15), frame("main", 22)];
        // Another line of the same function: a site of its own.
        let other_line = [at(0x1000), frame("leak", 16), frame("main", 22)];
        let heap = MemoryKind::Heap;
        let stacks: Vec<(u32, MemoryKind, &[Frame])> = vec![
            (7, heap, &first),
            (7, heap, &other_line),
            (7, heap, &specialized),
            // Another process, or mappings, are never one with the heap stacks of pid 7.
            (8, heap, &first),
            (7, MemoryKind::Mapping, &first),
        ];
        assert_eq!(alike(&stacks), [vec![0, 2], vec![1], vec![3], vec![4]]);
        assert!(alike(&[]).is_empty());
    }

    #[test]
    fn functions_add_up_inclusively_each_stack_once() {
        let stacks = vec![
            stack_of(&["zmalloc", "cache_put", "handle_search", "main"], 3000, 3),
            stack_of(&["cache_put", "handle_lookup", "main"], 500, 1),
            // Recursion: walk is on this stack three times, counted once.
            stack_of(&["walk", "walk", "walk", "handle_search", "main"], 200, 2),
            stack_of(&["handle_ping", "main"], 0, 0),
        ];
        let functions = functions(&stacks);
        let row = |name: &str| {
            functions.iter().find(|f| f.function == name).map(|f| {
                (
                    f.outstanding_bytes,
                    f.outstanding_allocations,
                    f.stacks,
                    f.on_every_stack,
                )
            })
        };
        assert_eq!(row("main"), Some((3700, 6, 3, true)));
        assert_eq!(row("handle_search"), Some((3200, 5, 2, false)));
        assert_eq!(row("cache_put"), Some((3500, 4, 2, false)));
        assert_eq!(row("walk"), Some((200, 2, 1, false)));
        assert_eq!(row("handle_lookup"), Some((500, 1, 1, false)));
        // Plumbing does not count; a stack holding nothing adds nothing.
        assert_eq!(row("zmalloc"), None);
        assert_eq!(row("handle_ping"), None);
        let order: Vec<&str> = functions.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(
            order,
            [
                "main",
                "cache_put",
                "handle_search",
                "handle_lookup",
                "walk"
            ]
        );
        assert_eq!(functions[0].module, "app");
    }

    #[test]
    fn a_report_from_plain_values() {
        let figures = |bytes, allocations| StackFigures {
            outstanding_bytes: bytes,
            outstanding_allocations: allocations,
            total_allocations: allocations + 1,
            total_bytes: bytes * 2,
            ..Default::default()
        };
        let mut stacks = vec![
            stack(
                7,
                "app".into(),
                &figures(128, 1),
                leaf("small"),
                &Plumbing::default(),
                vec![],
                None,
            ),
            stack(
                7,
                "app".into(),
                &figures(4096, 4),
                leaf("large"),
                &Plumbing::default(),
                vec![],
                None,
            ),
        ];
        sort_stacks(&mut stacks);
        let mut counters = vec![0u64; COUNTER_SLOTS as usize];
        counters[Counter::Allocations as usize] = 9;
        counters[Counter::Frees as usize] = 4;
        counters[Counter::StackFailed as usize] = 2;
        counters[Counter::UnknownFrees as usize] = 3;
        let facts = TraceFacts {
            processes: vec![ProcessEntry {
                pid: 7,
                comm: "app".into(),
                command: vec!["/bin/app".into(), "-v".into()],
                allocator: "/lib/libc.so.6".into(),
                ..Default::default()
            }],
            end_reason: "duration".into(),
            duration_secs: 2.0,
            ..Default::default()
        };
        let report = report(stacks, &counters, facts);
        let order: Vec<&str> = report
            .stacks
            .iter()
            .map(|s| s.first_own_frame().unwrap().function.as_str())
            .collect();
        assert_eq!(order, ["large", "small"]);
        // The wrapper is marked (and kept), the id is that of every frame.
        let large = &report.stacks[0];
        assert!(large.frames[0].plumbing && !large.frames[1].plumbing);
        assert_eq!(large.id, Stack::id_of(&leaf("large")));
        assert_eq!(report.totals.outstanding_bytes, 4096 + 128);
        assert_eq!(report.totals.outstanding_allocations, 5);
        assert_eq!((report.totals.allocations, report.totals.frees), (9, 4));
        assert_eq!(report.totals.dropped, 2);
        assert_eq!(report.totals.dropped_by_cause["stack_failed"], 2);
        assert_eq!(report.totals.ignored["unknown_frees"], 3);
        assert_eq!(report.target.pids, [7]);
        assert_eq!(
            report.target.command,
            Some(vec!["/bin/app".to_string(), "-v".to_string()])
        );
        assert_eq!(report.allocators[0].object, "/lib/libc.so.6");
        let verdict = report.verdict.unwrap();
        assert!(!verdict.leak);
        assert!(verdict.summary.starts_with("too short to judge growth"));
    }

    /// Ten samples of a process growing 1000 B/s.
    fn growing_timeline() -> Vec<TimelinePoint> {
        (0..10)
            .map(|i| TimelinePoint {
                t_secs: i as f64,
                outstanding_bytes: 1000 * i,
                rss_bytes: None,
                cost_bytes: None,
            })
            .collect()
    }

    fn with_classes(mut stack: Stack, lost: u64, reachable: u64, growing: bool) -> Stack {
        let figures = |bytes| crate::report::ClassFigures {
            bytes,
            allocations: u64::from(bytes > 0),
        };
        stack.reachability = Some(crate::report::StackReachability {
            definitely_lost: figures(lost),
            still_reachable: figures(reachable),
            ..Default::default()
        });
        if growing {
            stack.growth = Some(Growth {
                bytes_per_sec: 1000.0,
                non_decreasing_ratio: 1.0,
                class: Class::Leak,
                severity: crate::growth::Severity::Low,
                recent_bytes_per_sec: 1000.0,
                threads_per_sec: None,
            });
        }
        stack
    }

    const MIB: u64 = 1 << 20;

    /// The stack glibc's thread stacks are recorded at, started by `spawn_worker`: `threads`
    /// live and `cached` of threads that ended, 8 MiB reserved and 12 KiB resident each, its
    /// thread count classed `class`.
    fn thread_stacks(threads: u64, cached: u64, class: Class, threads_per_sec: f64) -> Stack {
        let stacks = threads + cached;
        let figures = StackFigures {
            outstanding_bytes: stacks * 8 * MIB,
            outstanding_allocations: stacks,
            total_allocations: stacks,
            total_bytes: stacks * 8 * MIB,
            kind: MemoryKind::ThreadStack,
            threads,
            resident_bytes: Some(stacks * 12 * 1024),
        };
        let frames = [
            "__GI_mprotect",
            "allocate_stack",
            "pthread_create@@GLIBC_2.34",
        ]
        .iter()
        .chain(&["spawn_worker", "main"])
        .map(|name| Frame {
            function: name.to_string(),
            module: "/lib/libc.so.6".into(),
            ..Default::default()
        })
        .collect();
        let growth = Growth {
            bytes_per_sec: 12.0 * 1024.0 * threads_per_sec,
            non_decreasing_ratio: 1.0,
            class,
            severity: crate::growth::Severity::Low,
            recent_bytes_per_sec: 12.0 * 1024.0 * threads_per_sec,
            threads_per_sec: Some(threads_per_sec),
        };
        stack(
            7,
            "app".into(),
            &figures,
            frames,
            &Plumbing::default(),
            vec![],
            Some(growth),
        )
    }

    fn leaking(mut stack: Stack) -> Stack {
        stack.growth = Some(Growth {
            bytes_per_sec: 102_400.0,
            non_decreasing_ratio: 1.0,
            class: Class::Leak,
            severity: crate::growth::Severity::High,
            recent_bytes_per_sec: 102_400.0,
            threads_per_sec: None,
        });
        stack
    }

    #[test]
    fn thread_stacks_count_what_is_resident_and_stay_out_of_the_verdict_while_a_pool() {
        let pool = thread_stacks(8, 1, Class::Plateau, 0.0);
        assert_eq!(pool.mapping_kind, Some(MappingKind::ThreadStack));
        assert_eq!(
            (pool.threads, pool.cached_stacks, pool.resident_bytes),
            (Some(8), Some(1), Some(9 * 12 * 1024))
        );
        assert_eq!(pool.outstanding_bytes, 72 * MIB);
        assert_eq!(pool.cost_bytes(), 9 * 12 * 1024);
        assert_eq!(thread_starter(&pool), "spawn_worker");
        let leak = leaking(stack_of(&["remember_session", "main"], 1600 * 1024, 800));
        let mut stacks = vec![pool, leak];
        sort_stacks(&mut stacks);
        // Ranked by what they cost: the leak's 1.56 MiB before the threads' 108 KiB resident
        // (of 72 MiB reserved).
        assert_eq!(
            stacks[0].first_own_frame().unwrap().function,
            "remember_session"
        );
        let verdict = verdict(&stacks, &growing_timeline(), None);
        assert_eq!((verdict.leaking_stacks, verdict.leaking_threads), (1, 0));
        assert!(
            verdict
                .summary
                .starts_with("LEAK: 1 stack growing steadily; outstanding memory"),
            "{}",
            verdict.summary
        );
        // The by-function view and the flamegraph's widths count the same.
        let spawn = functions(&stacks)
            .into_iter()
            .find(|f| f.function == "spawn_worker")
            .unwrap();
        assert_eq!(spawn.outstanding_bytes, 9 * 12 * 1024);
        let report = Report {
            stacks,
            ..Default::default()
        };
        assert_eq!(
            report.folded_lines(),
            [
                "main;remember_session 1638400".to_string(),
                format!(
                    "main;spawn_worker;pthread_create@@GLIBC_2.34 {}",
                    9 * 12 * 1024
                )
            ]
        );
    }

    #[test]
    fn a_thread_count_that_keeps_growing_is_a_leak_of_threads() {
        let stacks = vec![thread_stacks(50, 0, Class::Leak, 5.0)];
        let verdict = verdict(&stacks, &growing_timeline(), None);
        assert!(verdict.leak);
        assert_eq!((verdict.leaking_stacks, verdict.leaking_threads), (1, 50));
        assert_eq!(
            verdict.summary,
            "LEAK: 1 stack growing steadily (a leak of threads: 50 threads started at spawn_worker still running, +5.00 threads/s; their stacks 400.00 MiB reserved, 600.00 KiB resident); outstanding memory +1000 B/s"
        );
        // Beside a leak of memory, the threads are said to be one of the two.
        let both = vec![
            stacks[0].clone(),
            leaking(stack_of(&["remember_session", "main"], 1600 * 1024, 800)),
        ];
        let verdict = verdict_of(&both);
        assert!(
            verdict.summary.starts_with(
                "LEAK: 2 stacks growing steadily (1 of them a leak of threads: 50 threads"
            ),
            "{}",
            verdict.summary
        );
    }

    #[test]
    fn the_verdict_rate_counts_thread_stacks_by_what_they_cost() {
        // Reserved stacks grow by 8 MiB a second, what is resident of them by 1000 B/s.
        let timeline: Vec<TimelinePoint> = (0..10)
            .map(|i| TimelinePoint {
                t_secs: i as f64,
                outstanding_bytes: 8 * MIB * i,
                rss_bytes: None,
                cost_bytes: Some(1000 * i),
            })
            .collect();
        let verdict = verdict(&[], &timeline, None);
        assert!(
            (verdict.growth_bytes_per_sec - 1000.0).abs() < 1e-6,
            "{}",
            verdict.growth_bytes_per_sec
        );
    }

    #[test]
    fn growth_that_is_all_still_referenced_is_not_called_a_leak() {
        let stacks = vec![with_classes(
            stack_of(&["cache_put", "main"], 9000, 9),
            0,
            9000,
            true,
        )];
        let verdict = verdict(&stacks, &growing_timeline(), None);
        assert!(!verdict.leak, "{}", verdict.summary);
        assert_eq!(verdict.referenced_growth_stacks, 1);
        assert_eq!(verdict.lost_bytes, Some(0));
        assert!(
            verdict.summary.contains("still referenced"),
            "{}",
            verdict.summary
        );
        // Without a scan, the same growth is a leak.
        let mut unscanned = stacks.clone();
        unscanned[0].reachability = None;
        assert!(verdict_of(&unscanned).leak);
    }

    #[test]
    fn definitely_lost_bytes_are_a_leak_whatever_their_growth() {
        let stacks = vec![
            with_classes(stack_of(&["drop_it", "main"], 300, 3), 300, 0, false),
            with_classes(stack_of(&["cache_put", "main"], 9000, 9), 0, 9000, true),
        ];
        let verdict = verdict(&stacks, &growing_timeline(), None);
        assert!(verdict.leak);
        assert_eq!(verdict.leaking_stacks, 1);
        assert_eq!(verdict.lost_bytes, Some(300));
        assert!(
            verdict.summary.starts_with("LEAK: 300 B lost on 1 stack"),
            "{}",
            verdict.summary
        );
        // Even in a trace too short to judge growth.
        let short = verdict_of_short(&stacks);
        assert!(short.leak, "{}", short.summary);
    }

    #[test]
    fn allocations_left_unrecorded_make_a_no_leak_verdict_incomplete() {
        // A full record table stops growth from showing at all: "no leak" cannot be vouched for.
        let stacks = vec![with_classes(
            stack_of(&["cache_put", "main"], 9000, 9),
            0,
            9000,
            true,
        )];
        let verdict = verdict_with_endings(&stacks, &growing_timeline(), None, &[], 4321, false);
        assert!(!verdict.leak);
        assert_eq!(verdict.unrecorded_allocations, 4321);
        assert!(
            verdict.summary.starts_with(
                "INCOMPLETE: 4321 allocations were not recorded (the record table was full: raise --max-allocations), so a leak among them is not seen; no leak found among those recorded: 1 stack grows steadily"
            ),
            "{}",
            verdict.summary
        );
        // A leak found is a leak whatever was missed; nothing missed changes nothing.
        let leaking = vec![with_classes(
            stack_of(&["drop_it", "main"], 300, 3),
            300,
            0,
            false,
        )];
        let leak = verdict_with_endings(&leaking, &growing_timeline(), None, &[], 10, false);
        assert!(leak.leak, "{}", leak.summary);
        assert_eq!(
            (leak.summary, leak.unrecorded_allocations),
            (verdict_of(&leaking).summary, 10)
        );
        let clean = verdict_with_endings(&stacks, &growing_timeline(), None, &[], 0, false);
        assert_eq!(clean.summary, verdict_of(&stacks).summary);
    }

    #[test]
    fn a_process_that_has_ended_reaches_no_limit() {
        let limit = MemoryLimit {
            limit_bytes: 64 << 20,
            usage_bytes: 0,
            source: "MemTotal (no cgroup memory limit)".into(),
            oom_events: None,
        };
        let facts = |exit: Option<crate::report::TargetExit>| TraceFacts {
            processes: vec![ProcessEntry {
                pid: 7,
                exit: exit.clone(),
                ..Default::default()
            }],
            target_exit: exit,
            timeline: growing_timeline(),
            limit: Some(limit.clone()),
            ..Default::default()
        };
        let counters = vec![0u64; COUNTER_SLOTS as usize];
        let running = report(vec![], &counters, facts(None)).verdict.unwrap();
        // 64 MiB at 1000 B/s from nothing used: 67108.864 s.
        assert_eq!(running.seconds_to_limit, Some(67108.864));
        assert!(
            running.summary.contains("reached in about"),
            "{}",
            running.summary
        );
        let crashed = crate::report::TargetExit {
            pid: 7,
            signal: Some("SIGSEGV".into()),
            ..Default::default()
        };
        let ended = report(vec![], &counters, facts(Some(crashed)))
            .verdict
            .unwrap();
        assert_eq!(ended.seconds_to_limit, None);
        assert!(
            ended
                .summary
                .ends_with("; limit 64.00 MiB (MemTotal (no cgroup memory limit))"),
            "{}",
            ended.summary
        );
    }

    fn verdict_of(stacks: &[Stack]) -> Verdict {
        verdict(stacks, &growing_timeline(), None)
    }

    fn verdict_of_short(stacks: &[Stack]) -> Verdict {
        verdict(stacks, &growing_timeline()[..1], None)
    }
}
