//! One trace session: find the processes and their allocators, attach, sample until the end,
//! collect, symbolize, report.

use aya::sys::{Stats, enable_stats};
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use tracer_common::{Counter, CounterKind};

use crate::{
    attach::{
        allocator::{self, AttachPlan},
        probes::{self, MapSizes, Probes},
    },
    cli::TraceArgs,
    collect::{Collector, KernelSnapshot},
    error::TraceError,
    recording::{Recorder, verdict},
    report::{
        self, AllocatorUsed, ProcessEntry, Report, Stack, Target, Totals, human_bytes, human_rate,
    },
    serve::{LiveProcess, Published, Server},
    symbolize::{AddressSpaces, Symbolizer},
    target::{
        cgroup::{Cgroup, find_container},
        launch::{LaunchedChild, predict_loaded_objects},
        maps::read_maps,
        memory::{MemoryLimit, memory_limit, rss_bytes},
        process::{ProcessInfo, ProcessUsage, descendants, is_alive},
    },
};

/// How often liveness, new processes and memory maps are checked.
const POLL: Duration = Duration::from_millis(100);
/// Polls in a row a new process may fail to attach (mid-exec, libraries not mapped yet) before
/// it is given up with a warning: a second.
const ATTACH_ATTEMPTS: u32 = 10;
/// A launched command still running when the trace ends gets this long to exit after SIGTERM.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// Why the trace stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Duration,
    Interrupted,
    TargetExited,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Duration => "duration",
            Self::Interrupted => "interrupted",
            Self::TargetExited => "target exited",
        }
    }
}

/// Which processes a trace covers.
enum Scope {
    /// One process (a pid, or the launched command), with its descendants if followed.
    Process { root: u32, follow_children: bool },
    /// Every process in a cgroup v2 directory and below.
    Cgroup(Cgroup),
}

impl Scope {
    /// The processes to trace now.
    fn members(&self) -> Vec<u32> {
        match self {
            Scope::Process {
                root,
                follow_children,
            } => {
                let mut pids = vec![*root];
                if *follow_children {
                    pids.extend(descendants(*root));
                }
                pids
            }
            Scope::Cgroup(cgroup) => cgroup.processes(),
        }
    }
}

/// A process leaktracer attached to.
struct Tracked {
    info: ProcessInfo,
    plan: AttachPlan,
    /// Device and inode of every object probed for it.
    objects: BTreeSet<(u64, u64)>,
    /// Its executable, to notice an exec.
    exe: Option<PathBuf>,
}

/// Runs `leaktracer trace`.
pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    probes::check_privileges()?;
    probes::check_kernel_support()?;
    if let Some(pid) = args.pid
        && !is_alive(pid)
    {
        return Err(TraceError::NoSuchProcess(pid).into());
    }

    // Launch before any thread exists: the child runs nothing between fork and exec but raise().
    let mut child = if args.command.is_empty() {
        None
    } else {
        Some(LaunchedChild::spawn_stopped(&args.command)?)
    };
    let result = trace(&args, child.as_mut());
    if let Some(child) = child.as_mut()
        && child.try_reap().is_none()
    {
        // Setup failed, or the trace ended while it still runs: stop it like timeout(1) would.
        stop_child(child);
    }
    result
}

fn trace(args: &TraceArgs, mut child: Option<&mut LaunchedChild>) -> anyhow::Result<()> {
    let scope = match (&child, args.pid, &args.cgroup, &args.container) {
        (Some(child), ..) => Scope::Process {
            root: child.pid,
            follow_children: args.follow_children,
        },
        (None, Some(pid), ..) => Scope::Process {
            root: pid,
            follow_children: args.follow_children,
        },
        (None, None, Some(dir), _) => Scope::Cgroup(Cgroup::open(dir)?),
        (None, None, None, Some(id)) => Scope::Cgroup(Cgroup::open(&find_container(id)?)?),
        _ => unreachable!("clap requires a target"),
    };
    let mut probes = Probes::load(MapSizes {
        cgroup: match &scope {
            Scope::Cgroup(cgroup) => Some((cgroup.id, cgroup.level)),
            Scope::Process { .. } => None,
        },
        max_allocations: args.max_allocations,
        max_stacks: args.max_stacks,
        empty_programs: args.empty_programs,
        sample_bytes: args.sample_bytes.map_or(0, |n| n.max(1.0) as u64),
    })?;
    let collector = Collector::new(&mut probes)?;
    // Held for the whole trace: the kernel measures programs only while it is open.
    let run_time_stats = if args.program_stats {
        Some(enable_stats(Stats::RunTime).map_err(|e| {
            anyhow::anyhow!("cannot turn on the kernel's BPF run-time statistics: {e}")
        })?)
    } else {
        None
    };
    let server = match args.serve {
        Some(addr) => {
            let server = Server::start(addr)?;
            eprintln!(
                "leaktracer: serving http://{} (/metrics, /api/snapshot, /api/history, /api/leaks, /api/process, /flamegraph.svg)",
                server.addr
            );
            Some(server)
        }
        None => None,
    };
    let mut session = Session {
        args,
        scope,
        probes,
        collector,
        spaces: AddressSpaces::default(),
        recorder: Recorder::start(),
        symbolizer: Symbolizer::new(),
        limit: None,
        status: StatusLine::new(args.quiet),
        server,
        tracked: BTreeMap::new(),
        failed: BTreeSet::new(),
        attempts: BTreeMap::new(),
    };

    // The launched command: attached before exec, to the objects its loader will map.
    if let Some(child) = child.as_deref_mut() {
        let objects = predict_loaded_objects(&child.program).with_context(|| {
            format!(
                "cannot tell which libraries {} loads",
                child.program.display()
            )
        })?;
        let mut plan = allocator::plan(
            child.pid,
            &allocator::candidates_from_paths(&objects),
            args.allocator.as_ref(),
        )?;
        if args.probes_at_symbol_entry {
            plan.place_at_symbol_entries();
        }
        session.attach_plan(child.pid, &plan)?;
        child.resume(&args.command)?;
        session.track(child.pid, plan);
    }
    // Everything else in scope now; a --pid that cannot be traced is an error, not a warning.
    if let Some(pid) = args.pid {
        let plan = plan_for_pid(pid, args)?;
        session.attach_plan(pid, &plan)?;
        session.track(pid, plan);
    }
    session.discover();
    if session.tracked.is_empty() && matches!(session.scope, Scope::Cgroup(_)) {
        eprintln!("leaktracer: the cgroup has no process yet; waiting for one to start");
    }
    session.recorder = Recorder::start();
    eprintln!(
        "leaktracer: tracing {}: {} probes attached; {}",
        session.describe_targets(),
        session.probes.attached.len(),
        match args.duration {
            Some(d) => format!("stopping after {:.0?} or on Ctrl-C", d),
            None => "Ctrl-C to stop".to_string(),
        }
    );

    let end_reason = session.wait_for_end(&mut child)?;
    if run_time_stats.is_some() {
        for stats in session.probes.program_stats() {
            eprintln!(
                "leaktracer: program {}: {} runs, {:.0} ns per run, {} instructions verified",
                stats.name, stats.runs, stats.ns_per_run, stats.verified_instructions
            );
        }
    }
    // Freeze the picture: the programs return at once from here on. (Detaching all probes
    // takes the kernel about 0.1 s per probe; that happens last, when `session` is dropped.)
    session.probes.stop_recording()?;
    let elapsed = session.recorder.elapsed_secs();
    session.refresh_spaces();
    session.settle_unmaps()?;
    let snapshot = session
        .collector
        .snapshot(session.probes.maps(), args.min_age)?;
    let rss = session.total_rss();
    session.recorder.sample_at(elapsed, &snapshot, rss);
    session.status.finish();
    if args.verbose || snapshot.stacks.len() > 100 {
        eprintln!("leaktracer: symbolizing {} stacks", snapshot.stacks.len());
    }
    session.refresh_limit();
    let report = session.build_report(&snapshot, elapsed, Some(end_reason));
    session.publish(&report);
    report.write_files(&args.output.outputs(args.json.clone()))?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(report::text::render(&report, args.output.top).as_bytes());
    let _ = stdout.flush();
    drop(session); // detaches every probe
    Ok(())
}

/// A trace in progress: the probes, the processes, what has been sampled, how to name stacks.
struct Session<'a> {
    args: &'a TraceArgs,
    scope: Scope,
    probes: Probes,
    collector: Collector,
    spaces: AddressSpaces,
    recorder: Recorder,
    symbolizer: Symbolizer,
    /// The memory limit of the (first) target, last read while it was alive.
    limit: Option<MemoryLimit>,
    status: StatusLine,
    /// `--serve`: the HTTP server the current report is published to every interval.
    server: Option<Server>,
    tracked: BTreeMap<u32, Tracked>,
    /// Processes that could not be traced (warned about once).
    failed: BTreeSet<u32>,
    /// Failed attach attempts of processes not given up on yet.
    attempts: BTreeMap<u32, u32>,
}

impl Session<'_> {
    /// Attaches `plan` for `pid`: its allocations count from now on.
    fn attach_plan(&mut self, pid: u32, plan: &AttachPlan) -> Result<(), TraceError> {
        self.probes.attach(plan, pid)?;
        if self.args.verbose {
            for probe in self.probes.attached.iter().filter(|p| p.pid == pid) {
                let placement = if probe.skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", after `{}` (the kernel would single-step it)",
                        probe.skipped.join("; ")
                    )
                };
                eprintln!(
                    "leaktracer: pid {pid}: {} {} at {}+{:#x} ({}){placement}",
                    if probe.is_return {
                        "uretprobe"
                    } else {
                        "uprobe   "
                    },
                    probe.symbols.join("/"),
                    probe.object,
                    probe.offset,
                    probe.program
                );
            }
        }
        Ok(())
    }

    /// Remembers an attached process.
    fn track(&mut self, pid: u32, plan: AttachPlan) {
        let info = ProcessInfo::read(pid).unwrap_or(ProcessInfo {
            pid,
            nspid: vec![pid],
            ..Default::default()
        });
        let objects = plan.objects.iter().map(|o| (o.dev, o.inode)).collect();
        self.spaces.refresh(pid);
        if self.limit.is_none() {
            self.limit = memory_limit(pid);
        }
        self.tracked.insert(
            pid,
            Tracked {
                info,
                plan,
                objects,
                exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
            },
        );
    }

    /// Attaches to processes that entered the scope, and to objects a traced process mapped by
    /// exec'ing another program.
    fn discover(&mut self) {
        for pid in self.scope.members() {
            if self.failed.contains(&pid) || pid == std::process::id() {
                continue;
            }
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if self.tracked.get(&pid).is_some_and(|t| t.exe == exe) {
                continue;
            }
            match self.attach_process(pid, exe) {
                Ok(()) => {
                    self.attempts.remove(&pid);
                }
                Err(err) => {
                    // A process caught mid-exec has no allocator mapped yet, or loses the
                    // mapping being attached to: try again on the next polls, then give up.
                    let attempts = self.attempts.entry(pid).or_insert(0);
                    *attempts += 1;
                    if *attempts >= ATTACH_ATTEMPTS {
                        self.failed.insert(pid);
                        if is_alive(pid) {
                            let comm = ProcessInfo::read(pid).map(|i| i.comm).unwrap_or_default();
                            eprintln!(
                                "leaktracer: warning: not tracing pid {pid} ({comm}): {err:#}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Attaches to a new process, or to what an exec'd process maps that it did not before.
    fn attach_process(&mut self, pid: u32, exe: Option<PathBuf>) -> anyhow::Result<()> {
        let mut plan = plan_for_pid(pid, self.args)?;
        let known = self
            .tracked
            .get(&pid)
            .map(|t| t.objects.clone())
            .unwrap_or_default();
        let mut new_part = plan.clone();
        new_part
            .objects
            .retain(|o| !known.contains(&(o.dev, o.inode)));
        self.attach_plan(pid, &new_part)?;
        if let Some(tracked) = self.tracked.get_mut(&pid) {
            // An exec: same pid, new program.
            tracked
                .objects
                .extend(plan.objects.iter().map(|o| (o.dev, o.inode)));
            tracked.exe = exe;
            tracked.info = ProcessInfo::read(pid).unwrap_or_else(|| tracked.info.clone());
            std::mem::swap(&mut tracked.plan, &mut plan);
            self.spaces.refresh(pid);
        } else {
            eprintln!(
                "leaktracer: attached to pid {pid} ({}), allocator {}",
                ProcessInfo::read(pid).map(|i| i.comm).unwrap_or_default(),
                plan.allocator
            );
            self.track(pid, plan);
        }
        Ok(())
    }

    /// Hands the current report to the HTTP server, when there is one.
    fn publish(&self, report: &Report) {
        let Some(server) = &self.server else {
            return;
        };
        let processes: Vec<LiveProcess> = self
            .tracked
            .keys()
            .map(|pid| LiveProcess {
                pid: *pid,
                usage: ProcessUsage::read(*pid),
            })
            .collect();
        match Published::render(
            report,
            &processes,
            self.args.interval.as_secs_f64(),
            self.args.metrics_stacks,
        ) {
            Ok(bodies) => server.publish(bodies),
            Err(e) => eprintln!("leaktracer: warning: cannot render the served pages: {e:#}"),
        }
    }

    /// Settles pending munmap ranges and prints what the kernel side warned about.
    fn settle_unmaps(&mut self) -> anyhow::Result<()> {
        self.collector.drain_unmaps(self.probes.maps_mut())?;
        self.collector.print_warnings();
        Ok(())
    }

    fn refresh_spaces(&mut self) {
        for pid in self.tracked.keys() {
            self.spaces.refresh(*pid);
        }
    }

    fn refresh_limit(&mut self) {
        let alive = self.tracked.keys().copied().find(|pid| is_alive(*pid));
        if let Some(limit) = alive.and_then(memory_limit) {
            self.limit = Some(limit);
        }
    }

    /// Summed RSS of the traced processes still alive.
    fn total_rss(&self) -> Option<u64> {
        let values: Vec<u64> = self
            .tracked
            .keys()
            .filter_map(|pid| rss_bytes(*pid))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    fn describe_targets(&self) -> String {
        let mut parts: Vec<String> = self
            .tracked
            .iter()
            .take(5)
            .map(|(pid, t)| {
                format!(
                    "pid {pid} ({}), allocator {}",
                    t.info.comm, t.plan.allocator
                )
            })
            .collect();
        if self.tracked.len() > 5 {
            parts.push(format!("and {} more", self.tracked.len() - 5));
        }
        if let Scope::Cgroup(cgroup) = &self.scope {
            parts.insert(0, format!("cgroup {}", cgroup.dir.display()));
        }
        parts.join("; ")
    }

    /// True when nothing in scope runs any more.
    fn target_gone(&self, child: &mut Option<&mut LaunchedChild>) -> bool {
        match (&self.scope, child.as_deref_mut()) {
            (Scope::Cgroup(cgroup), _) => !cgroup.exists(),
            (
                Scope::Process {
                    follow_children, ..
                },
                Some(child),
            ) => {
                child.try_reap().is_some()
                    && (!follow_children || self.tracked.keys().all(|pid| !is_alive(*pid)))
            }
            (
                Scope::Process {
                    root,
                    follow_children,
                },
                None,
            ) => {
                !is_alive(*root)
                    && (!follow_children || self.tracked.keys().all(|pid| !is_alive(*pid)))
            }
        }
    }

    /// Waits for Ctrl-C/SIGTERM, the duration, or the end of the targets; samples every interval,
    /// attaches to new processes and keeps the view of memory maps fresh meanwhile.
    fn wait_for_end(
        &mut self,
        child: &mut Option<&mut LaunchedChild>,
    ) -> anyhow::Result<EndReason> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("cannot install the SIGTERM handler")?;
            let deadline = self.args.duration.map(|d| tokio::time::Instant::now() + d);
            let mut poll = tokio::time::interval(POLL);
            let mut sample = tokio::time::interval(self.args.interval);
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(EndReason::Interrupted),
                    _ = terminate.recv() => return Ok(EndReason::Interrupted),
                    _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                        return Ok(EndReason::Duration);
                    }
                    _ = poll.tick() => {
                        if self.target_gone(child) {
                            return Ok(EndReason::TargetExited);
                        }
                        self.discover();
                        self.refresh_spaces();
                        self.settle_unmaps()?;
                    }
                    _ = sample.tick() => self.sample()?,
                }
            }
        })
    }

    /// Takes one sample and shows it on the status line.
    fn sample(&mut self) -> anyhow::Result<()> {
        self.refresh_limit();
        let snapshot = self
            .collector
            .snapshot(self.probes.maps(), self.args.min_age)?;
        let rss = self.total_rss();
        self.recorder.sample(&snapshot, rss);
        if self.server.is_some() {
            let elapsed = self.recorder.elapsed_secs();
            let report = self.build_report(&snapshot, elapsed, None);
            self.publish(&report);
        }
        let collector = &self.collector;
        if self.status.quiet {
            return Ok(());
        }
        let grower = self.recorder.top_grower().map(|(key, rate)| {
            let ips = collector.stack(self.probes.maps(), key.stack_id);
            let frames = self
                .symbolizer
                .symbolize_stack(&self.spaces, key.tgid, &ips);
            let name = frames
                .first()
                .map_or("[unknown stack]".to_string(), |f| f.function.clone());
            format!("{name} {}", human_rate(rate))
        });
        let processes = if self.tracked.len() > 1 {
            format!(", {} processes", self.tracked.len())
        } else {
            String::new()
        };
        self.status.show(&format!(
            "[{:>5.0}s] outstanding {} ({}), rss {}{processes}, top grower: {}",
            self.recorder.elapsed_secs(),
            human_bytes(self.recorder.last_total()),
            human_rate(self.recorder.total_rate()),
            rss.map_or("-".to_string(), human_bytes),
            grower.unwrap_or_else(|| "none".to_string())
        ));
        Ok(())
    }

    fn build_report(
        &mut self,
        snapshot: &KernelSnapshot,
        elapsed: f64,
        end_reason: Option<EndReason>,
    ) -> Report {
        let thresholds = self.args.thresholds();
        let collector = &self.collector;
        let mut stacks: Vec<Stack> = snapshot
            .stacks
            .iter()
            .map(|(key, stats)| {
                let ips = collector.stack(self.probes.maps(), key.stack_id);
                let (timeline, growth) = self.recorder.stack_history(key, &thresholds);
                let frames = self
                    .symbolizer
                    .symbolize_stack(&self.spaces, key.tgid, &ips);
                Stack {
                    id: Stack::id_of(&frames),
                    outstanding_bytes: stats.outstanding_bytes,
                    outstanding_allocations: stats.outstanding_allocations,
                    total_allocations: stats.total_allocations,
                    total_bytes: stats.total_bytes,
                    pid: key.tgid,
                    comm: self
                        .tracked
                        .get(&key.tgid)
                        .map(|t| t.info.comm.clone())
                        .unwrap_or_default(),
                    frames,
                    growth,
                    timeline,
                }
            })
            .collect();
        stacks.sort_by(|a, b| {
            b.outstanding_bytes
                .cmp(&a.outstanding_bytes)
                .then(b.outstanding_allocations.cmp(&a.outstanding_allocations))
                .then(a.pid.cmp(&b.pid))
        });
        let counter = |c: Counter| snapshot.counters[c as usize];
        let of_kind = |kind: CounterKind| {
            Counter::ALL
                .iter()
                .filter(|c| c.kind() == kind)
                .map(|c| (c.name().to_string(), counter(*c)))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let dropped_by_cause = of_kind(CounterKind::Dropped);
        let totals = Totals {
            outstanding_bytes: stacks.iter().map(|s| s.outstanding_bytes).sum(),
            outstanding_allocations: stacks.iter().map(|s| s.outstanding_allocations).sum(),
            allocations: counter(Counter::Allocations),
            frees: counter(Counter::Frees),
            dropped: dropped_by_cause.values().sum(),
            dropped_by_cause,
            ignored: of_kind(CounterKind::Ignored),
        };
        let timeline = self.recorder.timeline();
        let verdict = verdict(&stacks, &timeline, self.limit.clone());
        let mut mappings = Vec::new();
        for pid in self.tracked.keys() {
            let addresses = stacks
                .iter()
                .filter(|s| s.pid == *pid)
                .flat_map(|s| s.frames.iter().map(|f| f.address));
            mappings.extend(self.spaces.module_mappings(*pid, addresses));
        }
        let launched = !self.args.command.is_empty();
        let root_command = self.tracked.values().next().map(|t| t.info.cmdline.clone());
        Report {
            target: Target {
                pids: self.tracked.keys().copied().collect(),
                command: if launched {
                    Some(self.args.command.clone())
                } else {
                    root_command.filter(|c| !c.is_empty())
                },
                comms: self.tracked.values().map(|t| t.info.comm.clone()).collect(),
                cgroup: match &self.scope {
                    Scope::Cgroup(cgroup) => Some(cgroup.dir.display().to_string()),
                    Scope::Process { .. } => None,
                },
            },
            duration_secs: elapsed,
            totals,
            stacks,
            allocators: self
                .tracked
                .iter()
                .map(|(pid, t)| AllocatorUsed {
                    pid: *pid,
                    object: t.plan.allocator.clone(),
                })
                .collect(),
            processes: self
                .tracked
                .iter()
                .map(|(pid, t)| ProcessEntry {
                    pid: *pid,
                    nspid: t.info.nspid.clone(),
                    comm: t.info.comm.clone(),
                    command: t.info.cmdline.clone(),
                    cgroup: t.info.cgroup.clone(),
                    allocator: t.plan.allocator.clone(),
                    allocator_dev: t.plan.allocator_file.0,
                    allocator_inode: t.plan.allocator_file.1,
                    probed_objects: t
                        .plan
                        .objects
                        .iter()
                        .map(|o| o.display_path.clone())
                        .collect(),
                })
                .collect(),
            end_reason: end_reason.map_or("running", EndReason::as_str).to_string(),
            timeline,
            verdict: Some(verdict),
            thresholds: Some(thresholds),
            min_age_secs: self.args.min_age.map(|d| d.as_secs_f64()),
            sample_bytes: self.args.sample_bytes.map(|n| n.max(1.0) as u64),
            mappings,
        }
    }
}

/// The live status line: rewritten in place on a terminal, one line per sample otherwise.
struct StatusLine {
    quiet: bool,
    terminal: bool,
    shown: bool,
}

impl StatusLine {
    fn new(quiet: bool) -> Self {
        Self {
            quiet,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "leaktracer: {line}");
        }
        let _ = err.flush();
        self.shown = true;
    }

    /// Ends an in-place line so what follows starts on its own.
    fn finish(&mut self) {
        if self.terminal && self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

/// Plan for a running process: the objects it maps, opened as it maps them.
fn plan_for_pid(pid: u32, args: &TraceArgs) -> Result<AttachPlan, TraceError> {
    let maps = read_maps(pid).map_err(|_| TraceError::NoSuchProcess(pid))?;
    let candidates = allocator::candidates_from_maps(pid, &maps);
    let mut plan = allocator::plan(pid, &candidates, args.allocator.as_ref())?;
    if args.probes_at_symbol_entry {
        plan.place_at_symbol_entries();
    }
    Ok(plan)
}

/// SIGTERM, a grace period, then SIGKILL; always reaps.
fn stop_child(child: &mut LaunchedChild) {
    child.signal(libc::SIGTERM);
    let deadline = Instant::now() + TERMINATE_GRACE;
    while Instant::now() < deadline {
        if child.try_reap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal(libc::SIGKILL);
    child.reap_blocking();
}
