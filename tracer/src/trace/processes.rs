//! The processes a trace is attached to: planning and attaching each as it enters the scope
//! (with retries for processes caught mid-exec), the execs they make, and what the report and
//! the messages say of them.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    attach::{
        allocator::{self, AllocatorOverride, AttachPlan},
        probes::Probes,
    },
    error::TraceError,
    report::{ExecEvent, ProcessEntry},
    target::{
        launch::is_dynamically_linked,
        maps::read_maps,
        memory::rss_bytes,
        process::{ProcessInfo, is_alive},
    },
    terminal::eprintln_escaped,
};

/// Polls in a row a new process may fail to attach (mid-exec, libraries not mapped yet) before
/// it is given up with a warning: a second.
const ATTACH_ATTEMPTS: u32 = 10;

/// How often traced processes are checked for having exited.
const EXITS_CHECK: Duration = Duration::from_secs(1);

/// How processes are attached, from the command line.
#[derive(Clone, Debug, Default)]
pub struct AttachSettings {
    /// `--allocator`: the object that serves malloc, when not found by itself.
    pub allocator: Option<AllocatorOverride>,
    /// Benchmarks: probe each function at its symbol's entry.
    pub probes_at_symbol_entry: bool,
    /// `--reachability`: the C library's `exit` stops the process too.
    pub stop_at_exit: bool,
    /// The launched command, if the trace launches one.
    pub command: Option<Vec<String>>,
    /// Say where each probe was placed.
    pub verbose: bool,
}

/// The processes attached, and those given up on.
pub struct Processes {
    settings: AttachSettings,
    tracked: BTreeMap<u32, Tracked>,
    /// Processes that could not be traced (warned about once).
    failed: BTreeSet<u32>,
    /// Failed attach attempts of processes not given up on yet.
    attempts: BTreeMap<u32, u32>,
    /// Each process attached is said on its own line: once the trace runs (those at the start
    /// are in its first line), or always with --verbose.
    announce: bool,
    /// Execs of traced processes, and what was retired with their old images.
    execs: Vec<ExecEvent>,
    /// When the processes were last checked for having exited.
    exits_checked: Instant,
}

/// A process leaktracer attached to.
pub struct Tracked {
    pub info: ProcessInfo,
    pub plan: AttachPlan,
    /// Device and inode of every object probed for it.
    objects: BTreeSet<(u64, u64)>,
    /// Its executable, to notice an exec.
    exe: Option<PathBuf>,
    /// The last exec of it already settled (CLOCK_MONOTONIC ns): execs up to here are known.
    exec_settled_ns: u64,
    /// The launched command: its first exec is the launch itself, not news.
    launched: bool,
}

/// The image a process left by an exec: what to say of it.
#[derive(Debug, PartialEq, Eq)]
pub struct OldImage {
    /// The launched command's own first exec (the launch, not news).
    pub first_of_launch: bool,
    /// Its executable.
    pub from: String,
}

/// The executable of `pid`, to tell an exec from the process we attached to.
pub fn executable(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

impl Processes {
    pub fn new(settings: AttachSettings) -> Self {
        Self {
            announce: settings.verbose,
            settings,
            tracked: BTreeMap::new(),
            failed: BTreeSet::new(),
            attempts: BTreeMap::new(),
            execs: Vec::new(),
            exits_checked: Instant::now(),
        }
    }

    /// From now on each process attached is said on its own line.
    pub fn announce_from_now(&mut self) {
        self.announce = true;
    }

    /// The plan for `pid` with the command line's settings: the objects in `candidates`.
    fn finish_plan(
        &self,
        pid: u32,
        candidates: &[allocator::Candidate],
    ) -> Result<AttachPlan, TraceError> {
        let mut plan = allocator::plan(pid, candidates, self.settings.allocator.as_ref())?;
        if self.settings.probes_at_symbol_entry {
            plan.place_at_symbol_entries();
        }
        if self.settings.stop_at_exit {
            allocator::add_exit_stop(&mut plan);
        }
        Ok(plan)
    }

    /// Plan for the launched command, not exec'd yet: the objects its loader will map.
    pub fn plan_launched(&self, pid: u32, objects: &[PathBuf]) -> Result<AttachPlan, TraceError> {
        self.finish_plan(pid, &allocator::candidates_from_paths(objects))
    }

    /// Plan for a running process: the objects it maps, opened as it maps them.
    pub fn plan_for_pid(&self, pid: u32) -> Result<AttachPlan, TraceError> {
        let maps = read_maps(pid).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => TraceError::ProcessNotReadable {
                pid,
                why: crate::attach::probes::access_refusal(),
            },
            _ => TraceError::NoSuchProcess(pid),
        })?;
        self.finish_plan(pid, &allocator::candidates_from_maps(pid, &maps))
    }

    /// Plan for a process found in the scope. Caught between its exec and its loader mapping
    /// the libraries, a dynamically linked program maps no malloc yet: tried again on the next
    /// polls (it is not a program without an allocator, whose libc would then never be
    /// probed), and only the last attempt takes it as one.
    pub fn plan_found(&self, pid: u32) -> anyhow::Result<AttachPlan> {
        let plan = self.plan_for_pid(pid)?;
        let last_attempt = self.attempts.get(&pid).copied().unwrap_or(0) + 1 >= ATTACH_ATTEMPTS;
        if plan.allocator == allocator::NO_ALLOCATOR
            && !last_attempt
            && is_dynamically_linked(&PathBuf::from(format!("/proc/{pid}/exe")))
        {
            anyhow::bail!("its dynamic loader has not mapped its libraries yet");
        }
        Ok(plan)
    }

    /// Of `plan`, the objects not probed for `pid` yet (all of them for a new process).
    pub fn unprobed(&self, pid: u32, plan: &AttachPlan) -> AttachPlan {
        let mut new_part = plan.clone();
        if let Some(tracked) = self.tracked.get(&pid) {
            new_part
                .objects
                .retain(|o| !tracked.objects.contains(&(o.dev, o.inode)));
        }
        new_part
    }

    /// Attaches `plan` for `pid`: its allocations count from now on.
    pub fn attach(
        &self,
        probes: &mut Probes,
        pid: u32,
        plan: &AttachPlan,
    ) -> Result<(), TraceError> {
        let known = probes.attached.len();
        probes.attach(plan, pid)?;
        if self.settings.verbose {
            print_placements(probes, pid, known);
        }
        Ok(())
    }

    /// Remembers `pid`, attached with `plan`. The first process of a launched command is the
    /// command itself.
    pub fn insert(&mut self, pid: u32, plan: AttachPlan) {
        let launched = self.settings.command.is_some() && self.tracked.is_empty();
        let mut info = ProcessInfo::read(pid).unwrap_or(ProcessInfo {
            pid,
            nspid: vec![pid],
            ..Default::default()
        });
        if launched && info.cmdline.is_empty() {
            // Read too late (it exited at once): its command line is the one we launched.
            info.cmdline = self.settings.command.clone().unwrap_or_default();
        }
        let objects = plan.objects.iter().map(|o| (o.dev, o.inode)).collect();
        self.tracked.insert(
            pid,
            Tracked {
                info,
                plan,
                objects,
                exe: executable(pid),
                exec_settled_ns: crate::collect::monotonic_ns(),
                launched,
            },
        );
    }

    /// `pid` exec'd another program, whose new objects are attached: same pid, new program.
    pub fn replace_image(&mut self, pid: u32, mut plan: AttachPlan, exe: Option<PathBuf>) {
        let Some(tracked) = self.tracked.get_mut(&pid) else {
            return;
        };
        tracked
            .objects
            .extend(plan.objects.iter().map(|o| (o.dev, o.inode)));
        tracked.exe = exe;
        tracked.info = ProcessInfo::read(pid).unwrap_or_else(|| tracked.info.clone());
        std::mem::swap(&mut tracked.plan, &mut plan);
    }

    /// Says that `pid` was attached with `plan`, once the trace runs.
    pub fn announce(&self, pid: u32, plan: &AttachPlan) {
        if self.announce {
            eprintln_escaped!(
                "leaktracer: attached to pid {pid} ({}), allocator {}",
                ProcessInfo::read(pid).map(|i| i.comm).unwrap_or_default(),
                plan.allocator
            );
        }
    }

    /// Whether `pid`, in the scope, is left as it is: given up on, leaktracer itself, or
    /// traced already with the executable `exe` it had (or with an exec not settled yet,
    /// `exec_ns` saying when the kernel saw its last: its old image's records are retired
    /// under the old executable's name first, on the next poll).
    pub fn is_settled(
        &self,
        pid: u32,
        exe: &Option<PathBuf>,
        exec_ns: impl FnOnce() -> Option<u64>,
    ) -> bool {
        match self.tracked.get(&pid) {
            Some(tracked) => {
                tracked.exe == *exe || exec_ns().is_some_and(|ns| ns > tracked.exec_settled_ns)
            }
            None => false,
        }
    }

    /// Whether `pid` is never attached: given up on, or leaktracer itself.
    pub fn is_excluded(&self, pid: u32) -> bool {
        self.failed.contains(&pid) || pid == std::process::id()
    }

    /// `pid` was attached: its failed attempts are forgotten.
    pub fn attached(&mut self, pid: u32) {
        self.attempts.remove(&pid);
    }

    /// `pid` failed to attach with `err`. A process caught mid-exec has no allocator mapped
    /// yet, or loses the mapping being attached to: tried again on the next polls, then given
    /// up with a warning (true).
    pub fn attach_failed(&mut self, pid: u32, err: &anyhow::Error) -> bool {
        let attempts = self.attempts.entry(pid).or_insert(0);
        *attempts += 1;
        if *attempts < ATTACH_ATTEMPTS {
            return false;
        }
        self.failed.insert(pid);
        if is_alive(pid) {
            let comm = ProcessInfo::read(pid).map(|i| i.comm).unwrap_or_default();
            eprintln_escaped!("leaktracer: warning: not tracing pid {pid} ({comm}): {err:#}");
        }
        true
    }

    /// `pid` exec'd at `exec_ns` (CLOCK_MONOTONIC): its old image, when that exec is news.
    pub fn settle_exec(&mut self, pid: u32, exec_ns: u64) -> Option<OldImage> {
        let tracked = self.tracked.get_mut(&pid)?;
        if exec_ns <= tracked.exec_settled_ns {
            return None;
        }
        tracked.exec_settled_ns = exec_ns;
        Some(OldImage {
            first_of_launch: std::mem::take(&mut tracked.launched),
            from: tracked
                .exe
                .as_ref()
                .map(|exe| exe.display().to_string())
                .unwrap_or_default(),
        })
    }

    /// Says and keeps an exec of `pid`, `at_secs` into the trace, that retired the
    /// `allocations` (`bytes`) of its `old` image.
    pub fn record_exec(
        &mut self,
        pid: u32,
        old: OldImage,
        at_secs: f64,
        allocations: u64,
        bytes: u64,
    ) {
        let to = executable(pid)
            .map(|exe| exe.display().to_string())
            .unwrap_or_default();
        eprintln_escaped!(
            "leaktracer: pid {pid} exec'd {to}: retired the {allocations} outstanding allocations ({}) of its old image",
            crate::units::human_bytes(bytes)
        );
        self.execs.push(ExecEvent {
            pid,
            t_secs: at_secs,
            from: old.from,
            to,
            retired_allocations: allocations,
            retired_bytes: bytes,
        });
    }

    /// The execs seen, for the report.
    pub fn execs(&self) -> &[ExecEvent] {
        &self.execs
    }

    /// True once a second (at `now`): time to check which processes exited.
    pub fn exits_check_due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.exits_checked) < EXITS_CHECK {
            return false;
        }
        self.exits_checked = now;
        true
    }

    /// The processes attached, by pid.
    pub fn pids(&self) -> Vec<u32> {
        self.tracked.keys().copied().collect()
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.tracked.contains_key(&pid)
    }

    pub fn len(&self) -> usize {
        self.tracked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&Tracked> {
        self.tracked.get(&pid)
    }

    /// The processes as the report lists them (how each ended and froze is the other parts').
    pub fn entries(&self) -> Vec<ProcessEntry> {
        self.tracked.iter().map(|(pid, t)| t.entry(*pid)).collect()
    }

    /// Summed RSS of the processes still alive.
    pub fn total_rss(&self) -> Option<u64> {
        let values: Vec<u64> = self
            .tracked
            .keys()
            .filter_map(|pid| rss_bytes(*pid))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The processes in one line, for the "tracing ..." message; `cgroup` the directory
    /// traced, if any.
    pub fn describe(&self, cgroup: Option<String>) -> String {
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
        if let Some(dir) = cgroup {
            parts.insert(0, format!("cgroup {dir}"));
        }
        parts.join("; ")
    }
}

impl Tracked {
    /// The process as the report lists it.
    fn entry(&self, pid: u32) -> ProcessEntry {
        ProcessEntry {
            pid,
            nspid: self.info.nspid.clone(),
            comm: self.info.comm.clone(),
            command: self.info.cmdline.clone(),
            cgroup: self.info.cgroup.clone(),
            allocator: self.plan.allocator.clone(),
            allocator_dev: self.plan.allocator_file.0,
            allocator_inode: self.plan.allocator_file.1,
            probed_objects: self
                .plan
                .objects
                .iter()
                .map(|o| o.display_path.clone())
                .collect(),
            frozen_at_secs: None,
            frozen_at: None,
            exit: None,
        }
    }
}

/// `--verbose`: where each probe of `pid` attached from the `first` on was placed (those
/// attached before were said then).
fn print_placements(probes: &Probes, pid: u32, first: usize) {
    let new = probes.attached.get(first..).unwrap_or_default();
    for probe in new.iter().filter(|p| p.pid == pid) {
        let placement = if probe.skipped.is_empty() {
            String::new()
        } else {
            format!(
                ", after `{}` (the kernel would single-step it)",
                probe.skipped.join("; ")
            )
        };
        eprintln_escaped!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(allocator: &str) -> AttachPlan {
        AttachPlan {
            objects: Vec::new(),
            allocator: allocator.to_string(),
            allocator_file: (0, 0),
            redirects: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn launching() -> Processes {
        Processes::new(AttachSettings {
            command: Some(vec!["./server".to_string(), "--port".to_string()]),
            ..AttachSettings::default()
        })
    }

    #[test]
    fn a_process_failing_to_attach_is_given_up_on_its_tenth_poll() {
        let mut processes = Processes::new(AttachSettings::default());
        let pid = u32::MAX - 1; // no such process: given up without a warning
        let err = anyhow::anyhow!("its dynamic loader has not mapped its libraries yet");
        for _ in 1..ATTACH_ATTEMPTS {
            assert!(!processes.attach_failed(pid, &err));
            assert!(!processes.is_excluded(pid));
        }
        assert!(processes.attach_failed(pid, &err));
        assert!(processes.is_excluded(pid));
        assert!(processes.is_excluded(std::process::id()));
        // Attached in between: its count starts again.
        processes.attach_failed(7, &err);
        processes.attached(7);
        assert_eq!(processes.attempts.get(&7), None);
    }

    #[test]
    fn the_launched_command_s_first_exec_is_the_launch_and_later_ones_are_news() {
        let mut processes = launching();
        let me = std::process::id();
        processes.insert(me, plan("libc.so.6"));
        let settled = processes.get(me).unwrap().exec_settled_ns;
        assert_eq!(processes.get(me).unwrap().exe, executable(me));
        // An exec from before it was attached is known.
        assert_eq!(processes.settle_exec(me, settled), None);
        let first = processes.settle_exec(me, settled + 1).unwrap();
        assert!(first.first_of_launch);
        assert_eq!(
            Some(first.from.as_str()),
            executable(me).as_deref().and_then(|p| p.to_str())
        );
        assert_eq!(processes.settle_exec(me, settled + 1), None);
        assert!(
            !processes
                .settle_exec(me, settled + 2)
                .unwrap()
                .first_of_launch
        );
        // Only the command is launched: a second process is not.
        processes.insert(1, plan("libc.so.6"));
        assert!(!processes.settle_exec(1, u64::MAX).unwrap().first_of_launch);
    }

    #[test]
    fn a_traced_process_is_attached_again_only_after_a_settled_exec() {
        let mut processes = Processes::new(AttachSettings::default());
        let me = std::process::id();
        assert!(!processes.is_settled(me, &executable(me), || None));
        processes.insert(me, plan("libc.so.6"));
        let settled = processes.get(me).unwrap().exec_settled_ns;
        assert!(processes.is_settled(me, &executable(me), || None));
        let other = Some(PathBuf::from("/usr/bin/other"));
        assert!(!processes.is_settled(me, &other, || None));
        assert!(!processes.is_settled(me, &other, || Some(settled)));
        // Its exec is not settled yet: its old image is retired first.
        assert!(processes.is_settled(me, &other, || Some(settled + 1)));
        processes.replace_image(me, plan("libjemalloc.so.2"), other.clone());
        assert!(processes.is_settled(me, &other, || None));
        assert_eq!(
            processes.get(me).unwrap().plan.allocator,
            "libjemalloc.so.2"
        );
    }

    #[test]
    fn targets_are_described_five_at_most_after_their_cgroup() {
        let mut processes = Processes::new(AttachSettings::default());
        let me = std::process::id();
        processes.insert(me, plan("libc.so.6"));
        let comm = processes.get(me).unwrap().info.comm.clone();
        assert_eq!(
            processes.describe(None),
            format!("pid {me} ({comm}), allocator libc.so.6")
        );
        for pid in 1..=5 {
            processes.tracked.insert(
                pid,
                Tracked {
                    info: ProcessInfo {
                        comm: "worker".into(),
                        ..Default::default()
                    },
                    plan: plan("libc.so.6"),
                    objects: BTreeSet::new(),
                    exe: None,
                    exec_settled_ns: 0,
                    launched: false,
                },
            );
        }
        let described = processes.describe(Some("/sys/fs/cgroup/app".into()));
        assert!(
            described.starts_with(
                "cgroup /sys/fs/cgroup/app; pid 1 (worker), allocator libc.so.6; pid 2 (worker)"
            ),
            "{described}"
        );
        assert!(described.ends_with("; and 1 more"), "{described}");
        assert_eq!(processes.entries().len(), 6);
    }

    #[test]
    fn the_launched_command_keeps_the_command_line_it_was_launched_with() {
        let mut processes = launching();
        processes.insert(u32::MAX - 1, plan("libc.so.6")); // gone before it was read
        let entry = &processes.entries()[0];
        assert_eq!(entry.command, vec!["./server", "--port"]);
        assert_eq!(entry.nspid, vec![u32::MAX - 1]);
    }

    #[test]
    fn exits_are_checked_once_a_second() {
        let mut processes = Processes::new(AttachSettings::default());
        let start = processes.exits_checked;
        assert!(!processes.exits_check_due(start + Duration::from_millis(500)));
        assert!(processes.exits_check_due(start + Duration::from_millis(1000)));
        assert!(!processes.exits_check_due(start + Duration::from_millis(1500)));
        assert!(processes.exits_check_due(start + Duration::from_millis(2000)));
    }
}
