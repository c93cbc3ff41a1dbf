//! The processes a trace is attached to: attaching new ones as they enter the scope (with
//! retries for processes caught mid-exec), noticing an exec, and what the report says of them.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::{Session, TraceConfig};
use crate::{
    attach::allocator::{self, AttachPlan},
    error::TraceError,
    report::{ExecEvent, ProcessEntry, TargetExit},
    target::{
        launch::{LaunchedChild, adopted, is_dynamically_linked, signal_name},
        maps::read_maps,
        memory::{MemoryLimit, memory_limit, oom_kills, rss_bytes},
        process::{ProcessInfo, is_alive, state_of},
    },
    terminal::eprintln_escaped,
};

/// Polls in a row a new process may fail to attach (mid-exec, libraries not mapped yet) before
/// it is given up with a warning: a second.
const ATTACH_ATTEMPTS: u32 = 10;

/// How often traced processes are checked for having exited.
const TABLES_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends SIGCONT to `pid`.
fn continue_process(pid: u32) {
    // SAFETY: kill(2) with a plain pid and signal number.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
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
    /// When its interpreter began tearing down, seconds into the trace (its picture froze).
    frozen_at_secs: Option<f64>,
    /// Where: `Py_FinalizeEx` or `exit`.
    frozen_at: Option<&'static str>,
    /// When it was attached (CLOCK_MONOTONIC ns): kernel endings from before are another
    /// process's under the same pid.
    tracked_ns: u64,
    /// Its memory limit, last read while it ran.
    limit: Option<MemoryLimit>,
    /// Its `/proc/PID/cgroup` when the limit was read: a move to another cgroup re-reads it.
    membership: Option<String>,
    /// Its limiting cgroup's OOM-kill counter file, and the count when it was attached (or
    /// when it moved into that cgroup).
    oom_baseline: Option<(PathBuf, u64)>,
    /// How it ended, once it has.
    pub exit: Option<TargetExit>,
}

impl Tracked {
    /// The process as the report lists it.
    pub fn entry(&self, pid: u32) -> ProcessEntry {
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
            frozen_at_secs: self.frozen_at_secs,
            frozen_at: self.frozen_at.map(str::to_string),
            exit: self.exit.clone(),
        }
    }
}

/// The OOM-kill counter of the cgroup whose limit `limit` is, and its count now.
fn oom_baseline(limit: &MemoryLimit) -> Option<(PathBuf, u64)> {
    let events = limit.oom_events.as_ref()?;
    Some((events.clone(), oom_kills(events)?))
}

/// The cgroups `pid` is in (`/proc/PID/cgroup`).
fn membership(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// The executable of `pid`, to tell an exec from the process we attached to.
fn executable(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// Plan for a running process: the objects it maps, opened as it maps them.
pub fn plan_for_pid(pid: u32, config: &TraceConfig) -> Result<AttachPlan, TraceError> {
    let maps = read_maps(pid).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => TraceError::ProcessNotReadable {
            pid,
            why: crate::attach::probes::access_refusal(),
        },
        _ => TraceError::NoSuchProcess(pid),
    })?;
    let candidates = allocator::candidates_from_maps(pid, &maps);
    let mut plan = allocator::plan(pid, &candidates, config.allocator.as_ref())?;
    if config.probes_at_symbol_entry {
        plan.place_at_symbol_entries();
    }
    if config.reachability {
        allocator::add_exit_stop(&mut plan);
    }
    Ok(plan)
}

/// How long a process the kernel stopped at exit() may take to reach that stop.
const EXIT_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits (at most `wait`) until `pid` is in a group stop (`T` in /proc/PID/stat).
fn wait_group_stopped(pid: u32, wait: std::time::Duration) {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if matches!(state_of(pid), Some('T') | None) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

impl Session<'_> {
    /// Attaches `plan` for `pid`: its allocations count from now on.
    pub(super) fn attach_plan(&mut self, pid: u32, plan: &AttachPlan) -> Result<(), TraceError> {
        let known = self.probes.attached.len();
        self.probes.attach(plan, pid)?;
        if self.config.verbose {
            self.print_placements(pid, known);
        }
        Ok(())
    }

    /// `--verbose`: where each probe of `pid` attached from the `first` on was placed (those
    /// attached before were said then).
    fn print_placements(&self, pid: u32, first: usize) {
        let new = self.probes.attached.get(first..).unwrap_or_default();
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

    /// Remembers an attached process, and counts its mapping system calls from now on (a
    /// launched command's from its entry point: what its loader mapped before is the
    /// loader's).
    pub(super) fn track(&mut self, pid: u32, plan: AttachPlan) {
        if let Err(e) = self.probes.trace_process(pid) {
            eprintln_escaped!("leaktracer: warning: {e}; its direct mappings are not counted");
        }
        let launched = self.config.command().is_some() && self.tracked.is_empty();
        let mut info = ProcessInfo::read(pid).unwrap_or(ProcessInfo {
            pid,
            nspid: vec![pid],
            ..Default::default()
        });
        if launched && info.cmdline.is_empty() {
            // Read too late (it exited at once): its command line is the one we launched.
            info.cmdline = self.config.command().unwrap_or_default().to_vec();
        }
        let objects = plan.objects.iter().map(|o| (o.dev, o.inode)).collect();
        self.spaces.refresh(pid);
        // Membership before the limit: a process that moves between the two reads (a launched
        // `sh -c` joining a cgroup) then reads as moved at the next poll, which re-reads the
        // limit. The other order kept the old limit for good.
        let membership = membership(pid);
        let limit = memory_limit(pid);
        if self.limit.is_none() {
            self.limit = limit.clone();
        }
        let oom_baseline = limit.as_ref().and_then(oom_baseline);
        self.tracked.insert(
            pid,
            Tracked {
                info,
                plan,
                objects,
                exe: executable(pid),
                exec_settled_ns: crate::collect::monotonic_ns(),
                launched,
                frozen_at_secs: None,
                frozen_at: None,
                tracked_ns: crate::collect::monotonic_ns(),
                limit,
                membership,
                oom_baseline,
                exit: None,
            },
        );
    }

    /// Writes `pid`'s unwind tables for its current mappings (with `--unwind cfi`). A process
    /// that exited meanwhile has none.
    pub(super) fn update_tables(&mut self, pid: u32) {
        // The interpreter too, before any probe: the first allocation already gets its
        // Python frames.
        self.runtimes.attach(pid, self.config.verbose);
        self.update_unwind_tables(pid);
    }

    /// Writes `pid`'s unwind tables for what it maps now, when they changed.
    fn update_unwind_tables(&mut self, pid: u32) {
        let Some(tables) = self.tables.as_mut() else {
            return;
        };
        let started = std::time::Instant::now();
        match tables.update(pid) {
            Ok(true) if self.config.verbose || started.elapsed().as_secs_f64() > 1.0 => {
                eprintln_escaped!(
                    "leaktracer: pid {pid}: unwind tables written in {:.2} s",
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => tables.remove(pid),
            Err(e) => eprintln_escaped!(
                "leaktracer: warning: pid {pid}: {e}; its stacks are walked by frame pointers"
            ),
        }
    }

    /// Names the runtime frames (Python's) of the stacks the kernel kept since the last poll,
    /// while what names them (code objects) exists.
    pub(super) fn read_runtime_stacks(&mut self) {
        let (collector, maps) = (&self.collector, self.probes.maps());
        self.runtimes
            .read_new_stacks(&mut |stack_id| collector.stack(maps, stack_id));
    }

    /// Notes the traced processes whose interpreter began tearing down since the last poll
    /// (the kernel froze their picture at `Py_FinalizeEx`). One whose Python frames are walked
    /// was stopped there by the kernel: its stacks' code objects are read before the teardown
    /// frees them, then it goes on.
    pub(super) fn settle_freezes(&mut self) {
        let elapsed = self.history.elapsed_secs();
        let mut resume = Vec::new();
        let mut exited = Vec::new();
        for (pid, tracked) in self.tracked.iter_mut() {
            if tracked.frozen_at_secs.is_some() || self.probes.maps().frozen.get(pid, 0).is_err() {
                continue;
            }
            tracked.frozen_at_secs = Some(elapsed);
            if let Some(teardown) = self.runtimes.teardown_of(*pid) {
                tracked.frozen_at = Some(teardown);
                eprintln_escaped!(
                    "leaktracer: pid {pid} began its interpreter's teardown ({teardown}): its figures are kept from just before"
                );
                resume.push(*pid);
            } else if self.config.reachability {
                tracked.frozen_at = Some("exit");
                eprintln_escaped!(
                    "leaktracer: pid {pid} called exit(): its figures are kept from just before, and it is scanned before its teardown"
                );
                exited.push(*pid);
            }
        }
        if !resume.is_empty() {
            self.read_runtime_stacks();
        }
        for pid in exited {
            // The kernel sent it SIGSTOP at exit(): scanned once that stop holds.
            wait_group_stopped(pid, EXIT_STOP_WAIT);
            self.scan_reachability(super::reachability::Which::AtExit(pid));
            resume.push(pid);
        }
        for pid in resume {
            continue_process(pid);
        }
    }

    /// Continues every target the kernel stopped where its picture froze: CPython's teardown,
    /// or exit() with --reachability.
    pub(super) fn resume_frozen_interpreters(&self) {
        for pid in self.tracked.keys() {
            if (self.runtimes.teardown_of(*pid).is_some() || self.config.reachability)
                && self.probes.maps().frozen.get(pid, 0).is_ok()
            {
                continue_process(*pid);
            }
        }
    }

    /// Lets the launched command exec, and runs it to its new image's entry point, where it
    /// stops (true) with its libraries mapped and none of its own code run. The kernel stops
    /// it at the exec itself first, so the entry probe goes on the file the kernel runs: the
    /// path resolved before the fork may name another file by now (a deploy or a rebuild
    /// renamed over it), whose probe would never fire. Without that stop (`--empty-programs`
    /// returns before it) the probe goes on `program` before the exec.
    pub(super) fn launch_to_entry(
        &mut self,
        child: &mut LaunchedChild,
        program: &Path,
    ) -> anyhow::Result<bool> {
        let pid = child.pid;
        // The configuration outlives the session: its command is not borrowed from `self`.
        let config = self.config;
        let command = config.command().unwrap_or_default();
        if config.empty_programs || !self.probes.stop_at_exec(pid) {
            return Ok(self.run_to_entry(child, program, |child| child.resume(command))?);
        }
        child.resume(command)?;
        if !child.wait_stopped(super::LAUNCH_STOP_WAIT) {
            eprintln_escaped!(
                "leaktracer: warning: {} did not stop at its exec; a program that exits at once may have no symbols",
                program.display()
            );
            return Ok(false);
        }
        // This exec is the launch, not news for `follow_launched_exec`.
        self.exec_followed_ns = self
            .collector
            .exec_time(self.probes.maps(), pid)
            .unwrap_or_default();
        Ok(self.run_from_exec_to_entry(child))
    }

    /// The launched command, stopped at an exec: let go to the new image's entry point (the
    /// file the kernel runs) and stopped there again (true), or let go without a stop when its
    /// probe cannot go in.
    fn run_from_exec_to_entry(&mut self, child: &mut LaunchedChild) -> bool {
        let executable = PathBuf::from(format!("/proc/{}/exe", child.pid));
        let continued = self.run_to_entry(child, &executable, |child| {
            child.continue_stopped();
            Ok(())
        });
        continued.unwrap_or(false)
    }

    /// Puts the stop at `executable`'s entry point, lets the launched command go (`let_go`),
    /// waits for that stop (true), and takes the probe out again.
    fn run_to_entry(
        &mut self,
        child: &mut LaunchedChild,
        executable: &Path,
        let_go: impl FnOnce(&mut LaunchedChild) -> Result<(), TraceError>,
    ) -> Result<bool, TraceError> {
        let stops = self.attach_entry_stop(executable, child.pid);
        let gone = let_go(child);
        let stopped = gone.is_ok() && stops && child.wait_stopped(super::LAUNCH_STOP_WAIT);
        self.probes.detach_launch_stop();
        gone.map(|()| stopped)
    }

    /// Puts the stop at `executable`'s entry point for `pid`; warns when it cannot.
    fn attach_entry_stop(&mut self, executable: &Path, pid: u32) -> bool {
        match self.probes.attach_launch_stop(executable, pid) {
            Ok(()) => true,
            Err(e) => {
                eprintln_escaped!(
                    "leaktracer: warning: {e}; a program that exits at once may have no symbols, and with CFI unwinding its first allocations are walked by frame pointers"
                );
                false
            }
        }
    }

    /// The launched command stopped: at an exec (the kernel stops it there, see
    /// `Probes::stop_at_exec`), before the new image ran. It is let go to the new image's entry
    /// point, where its libraries are mapped, and stopped there again while the new image is
    /// attached and its unwind tables are written. A stop that follows no exec (someone else's
    /// SIGSTOP) is left alone.
    pub(super) fn follow_launched_exec(&mut self, child: &mut LaunchedChild) -> anyhow::Result<()> {
        let pid = child.pid;
        // Compared with the last exec followed, not the last settled: a poll may have settled
        // this exec (and failed to attach the half-loaded image) before seeing the stop.
        let Some(exec_ns) = self.collector.exec_time(self.probes.maps(), pid) else {
            return Ok(());
        };
        if exec_ns <= self.exec_followed_ns {
            return Ok(());
        }
        self.exec_followed_ns = exec_ns;
        // A wrapper that joined a cgroup before exec'ing (`sh -c 'echo $$ > cgroup.procs;
        // exec prog'`) is read under its new limit now, while it is stopped, before the
        // program runs: the wait for its entry point below may outlast a quick OOM kill.
        self.notice_cgroup_moves();
        // The loader runs first, and its mmaps and brks are counted: the tables of what is
        // mapped already (the program and its loader) go in before it does. (Not its Python:
        // libpython is not mapped yet.)
        self.update_unwind_tables(pid);
        if self.run_from_exec_to_entry(child) {
            self.settle_execs()?;
            self.discover();
            self.update_tables(pid);
            child.continue_stopped();
        }
        Ok(())
    }

    /// Brings the memory maps and unwind tables of the processes that mapped new code since
    /// the last poll (dlopen, a JIT: the mmap and mprotect tracepoints announce it) up to date;
    /// nothing is re-read for the others.
    pub(super) fn refresh_mapped_code(&mut self) {
        for pid in self.collector.new_code(self.probes.maps_mut()) {
            if self.tracked.contains_key(&pid) {
                self.update_tables(pid);
                self.spaces.refresh(pid);
            }
        }
    }

    /// Once a second: forgets the tables of processes that are gone, and stops counting their
    /// system calls (a new process may get the pid).
    pub(super) fn forget_exited(&mut self) {
        if self.tables_checked.elapsed() < TABLES_CHECK {
            return;
        }
        self.tables_checked = std::time::Instant::now();
        let pids: Vec<u32> = self.tracked.keys().copied().collect();
        for pid in pids {
            if is_alive(pid) {
                continue;
            }
            // Once: its threads leave the kernel's map with it.
            let first_time = self.probes.maps().traced.get(&pid, 0).is_ok();
            self.probes.untrace_process(pid);
            if let Some(tables) = self.tables.as_mut() {
                tables.remove(pid);
            }
            if first_time && let Err(e) = self.collector.forget_threads(self.probes.maps_mut(), pid)
            {
                eprintln!("leaktracer: warning: pid {pid}: cannot read its threads: {e:#}");
            }
        }
    }

    /// Retires what each traced process held before an exec it made since the last poll: the
    /// exec freed its whole old image, with no call to free that the probes could see.
    pub(super) fn settle_execs(&mut self) -> anyhow::Result<()> {
        let pids: Vec<u32> = self.tracked.keys().copied().collect();
        for pid in pids {
            let Some(exec_ns) = self.collector.exec_time(self.probes.maps(), pid) else {
                continue;
            };
            let tracked = self.tracked.get_mut(&pid).expect("listed above");
            if exec_ns <= tracked.exec_settled_ns {
                continue;
            }
            tracked.exec_settled_ns = exec_ns;
            let first_of_launch = std::mem::take(&mut tracked.launched);
            let from = tracked
                .exe
                .as_ref()
                .map(|exe| exe.display().to_string())
                .unwrap_or_default();
            let (allocations, bytes) =
                self.collector
                    .retire(self.probes.maps_mut(), pid, exec_ns)?;
            // The kernel dropped the old image's tables (and interpreter) at the exec.
            if let Some(tables) = self.tables.as_mut() {
                tables.remove(pid);
            }
            self.runtimes.forget(pid);
            self.update_tables(pid);
            if first_of_launch && allocations == 0 {
                continue; // the launched command's own exec
            }
            let to = executable(pid)
                .map(|exe| exe.display().to_string())
                .unwrap_or_default();
            eprintln_escaped!(
                "leaktracer: pid {pid} exec'd {to}: retired the {allocations} outstanding allocations ({}) of its old image",
                crate::units::human_bytes(bytes)
            );
            self.execs.push(ExecEvent {
                pid,
                t_secs: self.history.elapsed_secs(),
                from,
                to,
                retired_allocations: allocations,
                retired_bytes: bytes,
            });
        }
        Ok(())
    }

    /// Attaches to processes that entered the scope, and to objects a traced process mapped by
    /// exec'ing another program.
    pub(super) fn discover(&mut self) {
        for pid in self.scope.members() {
            if self.failed.contains(&pid) || pid == std::process::id() {
                continue;
            }
            // No executable: gone, a zombie, on its way out (its memory already released), or
            // a kernel thread. There is nothing to attach to, and a traced process made no
            // exec: it keeps the command, comm and allocator it had.
            let exe = match std::fs::read_link(format!("/proc/{pid}/exe")) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                exe => exe.ok(),
            };
            if let Some(tracked) = self.tracked.get(&pid) {
                // An exec not settled yet (it happened since this poll's `settle_execs`) is
                // settled first, on the next poll: its old image's records are retired under
                // the old executable's name.
                if tracked.exe == exe
                    || self
                        .collector
                        .exec_time(self.probes.maps(), pid)
                        .is_some_and(|ns| ns > tracked.exec_settled_ns)
                {
                    continue;
                }
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
                            eprintln_escaped!(
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
        let mut plan = plan_for_pid(pid, self.config)?;
        // Caught between its exec and its loader mapping the libraries, a dynamically linked
        // program maps no malloc yet: tried again on the next polls (it is not a program
        // without an allocator, whose libc would then never be probed), and only the last
        // attempt takes it as one.
        let last_attempt = self.attempts.get(&pid).copied().unwrap_or(0) + 1 >= ATTACH_ATTEMPTS;
        if plan.allocator == allocator::NO_ALLOCATOR
            && !last_attempt
            && is_dynamically_linked(&PathBuf::from(format!("/proc/{pid}/exe")))
        {
            anyhow::bail!("its dynamic loader has not mapped its libraries yet");
        }
        let known = self
            .tracked
            .get(&pid)
            .map(|t| t.objects.clone())
            .unwrap_or_default();
        let mut new_part = plan.clone();
        new_part
            .objects
            .retain(|o| !known.contains(&(o.dev, o.inode)));
        // Tables first, so the first allocation recorded already gets its whole stack.
        self.update_tables(pid);
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
            if self.announce_attaches {
                eprintln_escaped!(
                    "leaktracer: attached to pid {pid} ({}), allocator {}",
                    ProcessInfo::read(pid).map(|i| i.comm).unwrap_or_default(),
                    plan.allocator
                );
            }
            self.track(pid, plan);
        }
        Ok(())
    }

    /// Re-reads the memory maps of every traced process (for symbolizing).
    pub(super) fn refresh_spaces(&mut self) {
        for pid in self.tracked.keys() {
            self.spaces.refresh(*pid);
        }
    }

    /// Re-reads the memory limit of every traced process still alive (so each one's last
    /// value is the limit in force when it ended); the report's is the first alive one's.
    pub(super) fn refresh_limit(&mut self) {
        let mut first = None;
        for (pid, tracked) in self.tracked.iter_mut() {
            if tracked.exit.is_some() || !is_alive(*pid) {
                continue;
            }
            let Some(limit) = memory_limit(*pid) else {
                continue;
            };
            // A process on its way out has left its cgroups (the kernel's cgroup_exit, after
            // the OOM mark and the exit the ending probes record, before it turns zombie):
            // read now, it is under no limit, and the one that killed it would be lost.
            let ending = self.probes.maps().endings.get(pid, 0).ok();
            let since_tracked = |ns: u64| ns != 0 && ns >= tracked.tracked_ns;
            if ending.is_some_and(|e| since_tracked(e.exit_ns) || since_tracked(e.oom_ns))
                || !is_alive(*pid)
            {
                continue;
            }
            first.get_or_insert_with(|| limit.clone());
            // It moved under another limit (a launched `sh -c` joining a cgroup): that
            // cgroup's OOM kills count from now.
            if tracked.oom_baseline.as_ref().map(|b| &b.0) != limit.oom_events.as_ref() {
                tracked.oom_baseline = oom_baseline(&limit);
            }
            tracked.limit = Some(limit);
        }
        if let Some(limit) = first {
            self.limit = Some(limit);
        }
    }

    /// Re-reads the limit of every traced process that moved to another cgroup since the last
    /// poll (a launched `sh -c` joining one before it execs the program), so a process killed
    /// soon after is reported under the limit that killed it.
    pub(super) fn notice_cgroup_moves(&mut self) {
        let mut moved = false;
        for (pid, tracked) in self.tracked.iter_mut() {
            if tracked.exit.is_some() {
                continue;
            }
            let now = membership(*pid);
            if now.is_none() || now == tracked.membership {
                continue;
            }
            tracked.membership = now;
            moved = true;
        }
        if moved {
            self.refresh_limit();
        }
    }

    /// Notes how each traced process that ended since the last poll ended: its exit status
    /// and OOM mark from the kernel (`ENDINGS`), its limit, and its cgroup's OOM kills.
    pub(super) fn settle_exits(&mut self) {
        let now_ns = crate::collect::monotonic_ns();
        let elapsed = self.history.elapsed_secs();
        let at_secs = |ns: u64| elapsed - now_ns.saturating_sub(ns) as f64 / 1e9;
        let marks_victims = self.probes.marks_oom_victims;
        for (pid, tracked) in self.tracked.iter_mut() {
            if tracked.exit.is_some() || is_alive(*pid) {
                continue;
            }
            let ending = self.probes.maps().endings.get(pid, 0).ok();
            let exited = ending.filter(|e| e.exit_ns >= tracked.tracked_ns && e.exit_ns != 0);
            let marked = ending.filter(|e| e.oom_ns >= tracked.tracked_ns && e.oom_ns != 0);
            let status = exited.map(|e| tracer_common::ending::WaitStatus::decode(e.exit_code));
            let limit = tracked.limit.as_ref();
            let cgroup_oom_kills = tracked
                .oom_baseline
                .as_ref()
                .and_then(|(events, start)| Some(oom_kills(events)?.saturating_sub(*start)));
            let signal = status.and_then(|s| s.signal);
            // Without the kernel's mark (no BTF), a SIGKILL while its cgroup counted an OOM
            // kill is the OOM killer's.
            let oom_killed = marked.is_some()
                || (!marks_victims
                    && signal == Some(libc::SIGKILL)
                    && cgroup_oom_kills.is_some_and(|n| n > 0));
            tracked.exit = Some(TargetExit {
                pid: *pid,
                code: status.and_then(|s| s.code),
                signal: signal.map(signal_name),
                core_dumped: status.is_some_and(|s| s.core_dumped),
                oom_killed,
                oom_at_secs: marked.map(|e| at_secs(e.oom_ns)),
                exited_at_secs: exited.map(|e| at_secs(e.exit_ns)),
                limit_bytes: limit.map(|l| l.limit_bytes),
                limit_source: limit.map(|l| l.source.clone()),
                cgroup_oom_kills,
                outstanding_bytes: None,
                outstanding_allocations: None,
            });
        }
    }

    /// Summed RSS of the traced processes still alive.
    pub(super) fn total_rss(&self) -> Option<u64> {
        let values: Vec<u64> = self
            .tracked
            .keys()
            .filter_map(|pid| rss_bytes(*pid))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Without --follow-children: names the processes the launched command left running when
    /// it exited (a daemon it forked; leaktracer adopted them), which were not traced.
    pub(super) fn note_left_behind(&self, launched: u32) {
        let left = adopted(launched);
        if left.is_empty() {
            return;
        }
        let mut named: Vec<String> = left
            .iter()
            .take(5)
            .map(|pid| {
                let comm = ProcessInfo::read(*pid).map(|i| i.comm).unwrap_or_default();
                format!("pid {pid} ({comm})")
            })
            .collect();
        if left.len() > 5 {
            named.push(format!("and {} more", left.len() - 5));
        }
        eprintln_escaped!(
            "leaktracer: note: the command exited and left {} process{} running, not traced: {}; with --follow-children the trace follows them (a daemon too) until they exit",
            left.len(),
            if left.len() == 1 { "" } else { "es" },
            named.join(", ")
        );
    }

    /// The traced processes in one line, for the "tracing ..." message.
    pub(super) fn describe_targets(&self) -> String {
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
        if let Some(dir) = self.scope.cgroup_dir() {
            parts.insert(0, format!("cgroup {dir}"));
        }
        parts.join("; ")
    }
}
