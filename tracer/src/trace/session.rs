//! A trace in progress, as a coordinator: the kernel side (the probes and the collector that
//! reads their maps) and the parts that own the trace's state — the launcher, the processes,
//! their endings and freezes, the unwind tables, the scans, the history and the status line,
//! the reporter. What runs when is written here once: [`Session::start`], [`Session::poll`]
//! and [`Session::finish`]; the rest of this file passes each part what it needs from the
//! others.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::{
    maps::IterableMap,
    sys::{Stats, enable_stats},
};
use tracer_common::StackKey;

use super::{
    EndReason, TargetSpec, TraceConfig, UnwindMode,
    endings::Endings,
    freezes::{EXIT_STOP_WAIT, Freezes, continue_process, wait_group_stopped},
    launcher::Launcher,
    processes::{AttachSettings, Processes},
    reachability::{self, Scanner, Which},
    redirects::Redirects,
    reporting::{ReportSettings, Reporter, fill_held},
    scope::Scope,
    status::StatusLine,
    unwind_tables::UnwindTables,
};
use crate::{
    attach::{allocator::AttachPlan, probes::Probes},
    collect::{Collector, MapsSnapshot, StackFigures},
    error::TraceError,
    history::SampleHistory,
    report::{self, Outputs, ProcessEntry, Report},
    runtimes::Runtimes,
    serve::{ScanRequest, Scans, Server},
    symbolize::{AddressSpaces, Symbolizer},
    target::{
        cgroup::{Cgroup, find_container},
        launch::LaunchedChild,
        process::is_alive,
        resume_guard::ResumeGuard,
    },
    terminal::eprintln_escaped,
    unwind::TablesInMaps,
};

/// A trace in progress: the kernel side and the parts, each owning its state.
pub(super) struct Session<'a> {
    pub(super) scope: Scope,
    pub(super) probes: Probes,
    pub(super) collector: Collector,
    /// The launched command, when the trace launched one.
    pub(super) launcher: Option<Launcher<'a>>,
    pub(super) processes: Processes,
    pub(super) endings: Endings,
    pub(super) freezes: Freezes,
    pub(super) tables: UnwindTables,
    pub(super) scanner: Scanner,
    pub(super) history: SampleHistory,
    pub(super) status: StatusLine,
    pub(super) reporter: Reporter,
    pub(super) spaces: AddressSpaces,
    pub(super) symbolizer: Symbolizer,
    /// The language runtimes (CPython) whose frames the kernel walks, and the processes each
    /// runs in.
    pub(super) runtimes: Runtimes,
    /// The runtime allocator tables redirected in the targets, undone at detach.
    pub(super) redirects: Redirects,
    /// Progress and where each probe went.
    pub(super) verbose: bool,
    /// `--program-stats`: held for the whole trace, the kernel measures programs only while
    /// it is open.
    run_time_stats: Option<OwnedFd>,
    /// When leaktracer started (`attach.load_secs` counts from it).
    started: Instant,
    /// Resumes the targets the probes stop if leaktracer dies: the last field, so dropped
    /// after everything else.
    _resume_guard: ResumeGuard,
}

impl<'a> Session<'a> {
    /// Loads the probes and sets the parts up for `config`; `child` is the command launched,
    /// stopped before its exec.
    pub fn open(
        config: &TraceConfig,
        child: Option<&'a mut LaunchedChild>,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let scope = scope_of(config, child.as_deref())?;
        let mut probes = Probes::load(super::map_sizes(config, scope.kernel_filter()))?;
        // Before any target is attached (and so before any can be stopped): from here on a
        // target the probes stop is resumed even if leaktracer is killed.
        let resume_guard = {
            let maps = probes.maps();
            ResumeGuard::spawn(
                maps.stopped.map().fd().as_fd(),
                maps.frozen.map().fd().as_fd(),
            )
            .context("cannot start the guard that resumes stopped targets if leaktracer dies")?
        };
        let collector = probes.collector()?;
        let runtimes = Runtimes::load(&mut |name| probes.take_map(name))
            .map_err(|e| TraceError::Load(e.to_string()))?;
        let tables = match config.unwind {
            UnwindMode::Cfi => Some(
                TablesInMaps::new(probes.unwind_maps()?)
                    .context("cannot map the unwinder's tables")?,
            ),
            UnwindMode::FramePointers => None,
        };
        let run_time_stats = if config.program_stats {
            Some(enable_stats(Stats::RunTime).map_err(|e| {
                anyhow::anyhow!("cannot turn on the kernel's BPF run-time statistics: {e}")
            })?)
        } else {
            None
        };
        let server = start_server(config)?;
        let launcher = child.map(|child| {
            let command = config.command().unwrap_or_default();
            Launcher::new(
                child,
                command,
                config.empty_programs,
                config.follow_children,
            )
        });
        Ok(Self {
            scope,
            probes,
            collector,
            launcher,
            processes: Processes::new(attach_settings(config)),
            endings: Endings::default(),
            freezes: Freezes::default(),
            tables: UnwindTables::new(tables, config.verbose),
            scanner: Scanner::new(
                config.reachability,
                config.max_pause,
                config.reachability_heuristics.0.clone(),
                config.verbose,
            ),
            history: SampleHistory::start(),
            status: StatusLine::new(config.quiet),
            reporter: Reporter::new(report_settings(config), server),
            spaces: AddressSpaces::default(),
            symbolizer: Symbolizer::new(),
            runtimes,
            redirects: Redirects::new(config.verbose),
            verbose: config.verbose,
            run_time_stats,
            started,
            _resume_guard: resume_guard,
        })
    }

    /// Attaches to the targets: the launched command (run to its entry point), the --pid
    /// target (an error when it cannot be traced), and everything else in scope; then says
    /// so, with `duration` the trace's length.
    pub fn start(&mut self, pid: Option<u32>, duration: Option<Duration>) -> anyhow::Result<()> {
        if self.launcher.is_some() {
            self.start_launched()?;
        }
        if let Some(pid) = pid {
            let plan = self.processes.plan_for_pid(pid)?;
            // Programs only this target needs load meanwhile.
            self.probes.prepare(&plan);
            // Tables first, so the first allocation recorded already gets its whole stack.
            self.update_tables(pid);
            self.processes.attach(&mut self.probes, pid, &plan)?;
            self.track(pid, plan);
        }
        self.discover();
        self.processes.announce_from_now();
        if self.processes.is_empty() && matches!(self.scope, Scope::Cgroup(_)) {
            eprintln_escaped!(
                "leaktracer: the cgroup has no process yet; waiting for one to start"
            );
        }
        self.history = SampleHistory::start();
        self.say_started(duration);
        Ok(())
    }

    /// One poll of the event loop, in order: what the launched command left behind, the end
    /// of the targets (`TargetExited`), an exec the launched command stopped at, execs,
    /// cgroup moves and exits, runtime (Python) stacks, freezes, new processes, new code, processes
    /// gone, unmaps.
    pub fn poll(&mut self) -> anyhow::Result<Option<EndReason>> {
        if let Some(launcher) = self.launcher.as_mut() {
            launcher.reap_orphans();
        }
        if self.target_gone() {
            return Ok(Some(EndReason::TargetExited));
        }
        self.follow_launched_exec()?;
        self.settle_execs()?;
        self.notice_cgroup_moves();
        self.settle_exits();
        self.read_runtime_stacks();
        self.settle_freezes();
        self.discover();
        self.refresh_mapped_code();
        self.forget_exited();
        self.settle_unmaps()?;
        Ok(None)
    }

    /// Ends the trace for `end_reason`, in order: how the targets ended, the last scan, the
    /// picture frozen and read, the probes detached, the report built and delivered to
    /// `outputs`, and the targets stopped where their picture froze let go.
    pub fn finish(&mut self, end_reason: EndReason, outputs: &Outputs) -> anyhow::Result<()> {
        self.settle_end(end_reason);
        self.say_program_stats();
        // Each live target stopped in turn while the probes still record, so the blocks read
        // during its stop are exactly those in its memory.
        if self.scanner.is_on() {
            self.status.finish();
            eprintln_escaped!(
                "leaktracer: scanning for pointers to the outstanding blocks (--reachability)"
            );
            self.scan_reachability(Which::Remaining);
        }
        let (snapshot, elapsed) = self.freeze_picture()?;
        self.detach();
        let report = self.build_report(&snapshot, elapsed, Some(end_reason));
        self.publish(&report);
        let delivered = report::deliver(&report, outputs);
        // A CPython target the kernel stopped at Py_FinalizeEx between the last poll and the
        // end goes on (the report took long enough for any such stop to have happened).
        self.resume_frozen_interpreters();
        delivered
    }

    /// The launched command: attached before exec, to the objects its loader will map.
    fn start_launched(&mut self) -> anyhow::Result<()> {
        let launcher = self.launcher.as_mut().expect("called with a launcher");
        let pid = launcher.pid();
        let objects = launcher.loaded_objects()?;
        let plan = self.processes.plan_launched(pid, &objects)?;
        self.processes.attach(&mut self.probes, pid, &plan)?;
        // The command stops at its entry point, where its memory maps are read (a short-lived
        // program may be gone by the first poll, and its stacks would have no symbols) and,
        // with CFI unwinding, its unwind tables written, before its own code allocates
        // anything. Its later execs stop too (a wrapper such as rustup's proxy or `sh -c`
        // exec'ing the real program), for the same reasons: see `follow_launched_exec`.
        let launcher = self.launcher.as_mut().expect("called with a launcher");
        let stopped = launcher.launch_to_entry(&mut self.probes, &self.collector, &objects[0])?;
        launcher.warn_if_replaced(&plan, &objects[0]);
        // Stopped at its entry point (or already running, when it could not be stopped): its
        // libraries are mapped, its tables are written now. (Other processes get theirs
        // before their probes are attached.)
        self.update_tables(pid);
        self.track(pid, plan);
        if stopped && let Some(launcher) = self.launcher.as_ref() {
            launcher.continue_stopped();
        }
        Ok(())
    }

    /// The first line of the trace (and, with --verbose, how the probes were attached).
    fn say_started(&mut self, duration: Option<Duration>) {
        self.probes.set_load_time(self.started.elapsed());
        if self.verbose {
            self.say_load_times();
            let stats = self.probes.stats();
            eprintln_escaped!(
                "leaktracer: attached {} probes in {} links ({}) in {:.3} s",
                stats.probes,
                stats.links,
                if stats.multi {
                    "uprobe_multi"
                } else {
                    "one perf event each"
                },
                stats.attach.as_secs_f64()
            );
            match self.probes.mapping_fallback() {
                None => eprintln_escaped!(
                    "leaktracer: mapping calls traced at their own tracepoints (syscalls/sys_exit_mmap, ...): other system calls cost nothing"
                ),
                Some(reason) => eprintln_escaped!(
                    "leaktracer: mapping calls traced at the raw sys_enter/sys_exit tracepoints (every system call on the machine runs a program): {reason}"
                ),
            }
        }
        eprintln_escaped!(
            "leaktracer: tracing {}: {} probes attached; {}",
            self.processes.describe(self.scope.cgroup_dir()),
            self.probes.attached.len(),
            match duration {
                Some(d) => format!("stopping after {:.0?} or on Ctrl-C", d),
                None => "Ctrl-C to stop".to_string(),
            }
        );
    }

    /// With --verbose: how long the start took, and its parts (the verifier, mostly).
    fn say_load_times(&self) {
        let load = self.probes.stats().load.unwrap_or_default();
        let programs: Vec<String> = self
            .probes
            .load_times()
            .iter()
            .map(|(name, took)| format!("{name} {:.3} s", took.as_secs_f64()))
            .collect();
        eprintln_escaped!(
            "leaktracer: probes in {:.3} s after start (attach.load_secs); maps created in {:.3} s; programs loaded (verified): {}",
            load.as_secs_f64(),
            self.probes.maps_time.as_secs_f64(),
            programs.join(", ")
        );
    }

    /// True when nothing in scope runs any more.
    fn target_gone(&mut self) -> bool {
        let tracked = self.processes.pids();
        let launcher = &mut self.launcher;
        // A launched child is gone once reaped (a zombie is still "alive" in /proc).
        self.scope.is_gone(
            |root| match launcher.as_mut() {
                Some(launcher) => launcher.has_exited(),
                None => !is_alive(root),
            },
            &tracked,
        )
    }

    /// Remembers an attached process in every part that follows it, and counts its mapping
    /// system calls from now on (a launched command's from its entry point: what its loader
    /// mapped before is the loader's).
    fn track(&mut self, pid: u32, plan: AttachPlan) {
        if let Err(e) = self.probes.trace_process(pid) {
            eprintln_escaped!("leaktracer: warning: {e}; its direct mappings are not counted");
        }
        // Its probes are in: calls through a redirected table are seen from the first.
        self.redirects.apply(pid, &plan);
        self.processes.insert(pid, plan);
        self.spaces.refresh(pid);
        self.endings.watch(pid);
    }

    /// Writes `pid`'s unwind tables for its current mappings (with `--unwind cfi`). A process
    /// that exited meanwhile has none.
    fn update_tables(&mut self, pid: u32) {
        // The interpreter too, before any probe: the first allocation already gets its
        // Python frames.
        self.runtimes.attach(pid, self.verbose);
        self.tables.update(pid);
    }

    /// Attaches to processes that entered the scope, and to objects a traced process mapped
    /// by exec'ing another program.
    fn discover(&mut self) {
        for pid in self.scope.members() {
            if self.processes.is_excluded(pid) {
                continue;
            }
            // No executable: gone, a zombie, on its way out (its memory already released), or
            // a kernel thread. There is nothing to attach to, and a traced process made no
            // exec: it keeps the command, comm and allocator it had.
            let exe = match std::fs::read_link(format!("/proc/{pid}/exe")) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                exe => exe.ok(),
            };
            let (collector, maps) = (&self.collector, self.probes.maps());
            if self
                .processes
                .is_settled(pid, &exe, || collector.exec_time(maps, pid))
            {
                continue;
            }
            match self.attach_process(pid, exe) {
                Ok(()) => self.processes.attached(pid),
                Err(err) => {
                    self.processes.attach_failed(pid, &err);
                }
            }
        }
    }

    /// Attaches to a new process, or to what an exec'd process maps that it did not before.
    fn attach_process(&mut self, pid: u32, exe: Option<PathBuf>) -> anyhow::Result<()> {
        let plan = self.processes.plan_found(pid)?;
        let new_part = self.processes.unprobed(pid, &plan);
        // Tables first, so the first allocation recorded already gets its whole stack.
        self.update_tables(pid);
        self.processes.attach(&mut self.probes, pid, &new_part)?;
        if self.processes.contains(pid) {
            // A new image, whose tables are new too (its objects may have been probed before).
            self.redirects.apply(pid, &plan);
            self.processes.replace_image(pid, plan, exe);
            self.spaces.refresh(pid);
        } else {
            self.processes.announce(pid, &plan);
            self.track(pid, plan);
        }
        Ok(())
    }

    /// The launched command stopped at an exec: let go to the new image's entry point, where
    /// its libraries are mapped, and stopped there again while the new image is attached and
    /// its unwind tables are written.
    fn follow_launched_exec(&mut self) -> anyhow::Result<()> {
        let Some(launcher) = self.launcher.as_mut() else {
            return Ok(());
        };
        if !launcher.stopped_at_new_exec(&self.probes, &self.collector) {
            return Ok(());
        }
        let pid = launcher.pid();
        // A wrapper that joined a cgroup before exec'ing (`sh -c 'echo $$ > cgroup.procs;
        // exec prog'`) is read under its new limit now, while it is stopped, before the
        // program runs: the wait for its entry point below may outlast a quick OOM kill.
        self.notice_cgroup_moves();
        // The loader runs first, and its mmaps and brks are counted: the tables of what is
        // mapped already (the program and its loader) go in before it does. (Not its Python:
        // libpython is not mapped yet.)
        self.tables.update(pid);
        let launcher = self.launcher.as_mut().expect("checked above");
        if launcher.run_from_exec_to_entry(&mut self.probes) {
            self.settle_execs()?;
            self.discover();
            self.update_tables(pid);
            if let Some(launcher) = self.launcher.as_ref() {
                launcher.continue_stopped();
            }
        }
        Ok(())
    }

    /// Retires what each traced process held before an exec it made since the last poll: the
    /// exec freed its whole old image, with no call to free that the probes could see.
    fn settle_execs(&mut self) -> anyhow::Result<()> {
        for pid in self.processes.pids() {
            let Some(exec_ns) = self.collector.exec_time(self.probes.maps(), pid) else {
                continue;
            };
            let Some(old) = self.processes.settle_exec(pid, exec_ns) else {
                continue;
            };
            let (allocations, bytes) =
                self.collector
                    .retire(self.probes.maps_mut(), pid, exec_ns)?;
            // The kernel dropped the old image's tables (and interpreter) at the exec.
            self.tables.remove(pid);
            self.runtimes.forget(pid);
            self.redirects.forget(pid);
            self.update_tables(pid);
            if old.first_of_launch && allocations == 0 {
                continue; // the launched command's own exec
            }
            let at_secs = self.history.elapsed_secs();
            self.processes
                .record_exec(pid, old, at_secs, allocations, bytes);
        }
        Ok(())
    }

    /// Brings the memory maps and unwind tables of the processes that mapped new code since
    /// the last poll (dlopen, a JIT: the mmap and mprotect tracepoints announce it) up to
    /// date; nothing is re-read for the others.
    fn refresh_mapped_code(&mut self) {
        for pid in self.collector.new_code(self.probes.maps_mut()) {
            if self.processes.contains(pid) {
                self.update_tables(pid);
                self.spaces.refresh(pid);
            }
        }
    }

    /// Once a second: forgets the tables of processes that are gone, and stops counting their
    /// system calls (a new process may get the pid).
    fn forget_exited(&mut self) {
        if !self.processes.exits_check_due(std::time::Instant::now()) {
            return;
        }
        for pid in self.processes.pids() {
            if is_alive(pid) {
                continue;
            }
            // Once: its threads leave the kernel's map with it.
            let first_time = self.probes.maps().traced.get(&pid, 0).is_ok();
            self.probes.untrace_process(pid);
            self.tables.remove(pid);
            self.redirects.forget(pid);
            if first_time && let Err(e) = self.collector.forget_threads(self.probes.maps_mut(), pid)
            {
                eprintln!("leaktracer: warning: pid {pid}: cannot read its threads: {e:#}");
            }
        }
    }

    /// Settles pending munmap ranges and prints what the kernel side warned about.
    pub(super) fn settle_unmaps(&mut self) -> anyhow::Result<()> {
        self.collector.drain_unmaps(self.probes.maps_mut())?;
        self.collector.print_warnings(self.probes.maps());
        Ok(())
    }

    /// Re-reads the memory maps of every traced process (for symbolizing).
    fn refresh_spaces(&mut self) {
        for pid in self.processes.pids() {
            self.spaces.refresh(pid);
        }
    }

    /// Re-reads the memory limit of every traced process still alive.
    pub(super) fn refresh_limits(&mut self) {
        let endings = &self.probes.maps().endings;
        self.endings.refresh_limits(|pid| endings.get(&pid, 0).ok());
    }

    /// Re-reads the limit of every traced process that moved to another cgroup.
    fn notice_cgroup_moves(&mut self) {
        let endings = &self.probes.maps().endings;
        self.endings
            .notice_cgroup_moves(|pid| endings.get(&pid, 0).ok());
    }

    /// Notes how each traced process that ended since the last poll ended.
    fn settle_exits(&mut self) {
        let endings = &self.probes.maps().endings;
        self.endings.settle(
            self.history.elapsed_secs(),
            self.probes.marks_oom_victims,
            |pid| endings.get(&pid, 0).ok(),
        );
    }

    /// Notes the traced processes whose picture froze since the last poll (the kernel froze
    /// it at `Py_FinalizeEx`, or at exit() with --reachability). One whose Python frames are
    /// walked was stopped there by the kernel: its stacks' code objects are read before the
    /// teardown frees them, then it goes on. One stopped at exit() is scanned, then goes on.
    fn settle_freezes(&mut self) {
        let elapsed = self.history.elapsed_secs();
        let mut resume = Vec::new();
        let mut exited = Vec::new();
        let frozen = &self.probes.maps().frozen;
        let newly_frozen = self
            .freezes
            .new_ones(self.processes.pids(), |pid| frozen.get(&pid, 0).is_ok());
        for pid in newly_frozen {
            if let Some(teardown) = self.runtimes.teardown_of(pid) {
                self.freezes.note(pid, elapsed, Some(teardown));
                eprintln_escaped!(
                    "leaktracer: pid {pid} began its interpreter's teardown ({teardown}): its figures are kept from just before"
                );
                resume.push(pid);
            } else if self.scanner.is_on() {
                self.freezes.note(pid, elapsed, Some("exit"));
                eprintln_escaped!(
                    "leaktracer: pid {pid} called exit(): its figures are kept from just before, and it is scanned before its teardown"
                );
                exited.push(pid);
            } else {
                self.freezes.note(pid, elapsed, None);
            }
        }
        if !resume.is_empty() {
            self.read_runtime_stacks();
        }
        for pid in exited {
            // The kernel sent it SIGSTOP at exit(): scanned once that stop holds.
            wait_group_stopped(pid, EXIT_STOP_WAIT);
            self.scan_reachability(Which::AtExit(pid));
            resume.push(pid);
        }
        for pid in resume {
            continue_process(pid);
        }
    }

    /// Continues every target the kernel stopped where its picture froze: CPython's teardown,
    /// or exit() with --reachability.
    fn resume_frozen_interpreters(&self) {
        for pid in self.processes.pids() {
            if (self.runtimes.teardown_of(pid).is_some() || self.scanner.is_on())
                && self.probes.maps().frozen.get(&pid, 0).is_ok()
            {
                continue_process(pid);
            }
        }
    }

    /// Scans the processes `which` names (pausing each at most `--max-pause`) and keeps the
    /// results, each process's latest.
    fn scan_reachability(&mut self, which: Which) {
        let at_secs = self.history.elapsed_secs();
        let mut scan = self.scanner.begin();
        let pids: Vec<u32> = match which {
            Which::AtExit(pid) => vec![pid],
            _ => self.processes.pids(),
        };
        for pid in pids {
            if which == Which::Remaining && scan.scanned_at_exit(pid) {
                continue;
            }
            if let Some(note) = self.runtimes.reachability_note(pid) {
                scan.insert(pid, reachability::skipped(pid, note));
                continue;
            }
            if !is_alive(pid) {
                scan.insert_first(pid, || reachability::skipped(pid, format!(
                    "pid {pid} exited before the scan (it ended with _exit or a signal, not exit(); attach with --pid, or end the trace with --duration or Ctrl-C while it runs)"
                )));
                continue;
            }
            let glibc = self
                .processes
                .get(pid)
                .is_some_and(|t| crate::reach::glibc::is_glibc_path(&t.plan.allocator));
            let (collector, maps) = (&self.collector, self.probes.maps());
            let result = self
                .scanner
                .scan_process(pid, glibc, which, at_secs, |deadline| {
                    reachability::outstanding_blocks(collector, maps, pid, deadline)
                });
            scan.insert(pid, result);
        }
        self.scanner.keep(scan, at_secs);
    }

    /// A scan asked for at `/api/reachability`: made now, published with the next report
    /// (which then carries each stack's classes), and answered with its summary and stacks.
    pub(super) fn answer_scan(&mut self, answer: ScanRequest) -> anyhow::Result<()> {
        self.status.finish();
        eprintln_escaped!(
            "leaktracer: scanning for pointers to the outstanding blocks (/api/reachability)"
        );
        self.scan_reachability(Which::All);
        let snapshot = self
            .collector
            .snapshot(self.probes.maps(), self.reporter.min_age())?;
        let elapsed = self.history.elapsed_secs();
        let report = self.build_report(&snapshot, elapsed, None);
        self.publish(&report);
        let _ = answer.send(reachability::scan_answer(&report)?.into());
        Ok(())
    }

    /// How the targets ended: what the launched command left running, each process's end,
    /// and the target's own (its wait status for a launched command).
    fn settle_end(&mut self, end_reason: EndReason) {
        if let Some(launcher) = self.launcher.as_ref()
            && end_reason == EndReason::TargetExited
        {
            launcher.note_left_behind();
        }
        self.settle_exits();
        let waited = self.launcher.as_mut().and_then(Launcher::waited);
        self.endings.settle_target(self.scope.root(), waited);
    }

    /// `--program-stats`: each program's cost per run.
    fn say_program_stats(&self) {
        if self.run_time_stats.is_none() {
            return;
        }
        for stats in self.probes.program_stats() {
            eprintln_escaped!(
                "leaktracer: program {}: {} runs, {:.0} ns per run, {} instructions verified",
                stats.name,
                stats.runs,
                stats.ns_per_run,
                stats.verified_instructions
            );
        }
    }

    /// Freezes the picture and reads it: the outstanding memory, and the trace's length.
    fn freeze_picture(&mut self) -> anyhow::Result<(MapsSnapshot, f64)> {
        // The programs return at once from here on (at once, unlike the detach, for which the
        // kernel waits a grace period per link).
        self.probes.stop_recording()?;
        let elapsed = self.history.elapsed_secs();
        self.settle_execs()?;
        self.settle_freezes();
        self.refresh_spaces();
        self.settle_unmaps()?;
        let snapshot = self
            .collector
            .snapshot(self.probes.maps(), self.reporter.min_age())?;
        let rss = self.processes.total_rss();
        self.history.sample_at(elapsed, &snapshot, rss);
        self.status.finish();
        if self.verbose || snapshot.stacks.len() > 100 {
            eprintln_escaped!("leaktracer: symbolizing {} stacks", snapshot.stacks.len());
        }
        self.refresh_limits();
        Ok((snapshot, elapsed))
    }

    /// Detaches every probe, before the report, which says how long that took: the picture is
    /// frozen already, and the maps stay readable.
    fn detach(&mut self) {
        // The tables first: once the probes are gone, the inlined calls are as good.
        self.redirects.restore_all();
        self.probes.detach();
        if self.verbose {
            let stats = self.probes.stats();
            eprintln_escaped!(
                "leaktracer: detached {} links in {:.3} s",
                stats.links,
                stats.detach.unwrap_or_default().as_secs_f64()
            );
        }
    }

    /// The report of what the kernel holds in `snapshot`: every stack symbolized, with its
    /// history; `end_reason` is `None` for a live report.
    pub(super) fn build_report(
        &mut self,
        snapshot: &MapsSnapshot,
        elapsed: f64,
        end_reason: Option<EndReason>,
    ) -> Report {
        let mut stacks = self.report_stacks(snapshot);
        report::build::sort_stacks(&mut stacks);
        let mut facts = self
            .reporter
            .facts(elapsed, end_reason, self.probes.stats());
        if let Some(attach) = facts.attach.as_mut() {
            attach.programs = self
                .probes
                .loaded_programs()
                .iter()
                .map(|p| p.to_string())
                .collect();
        }
        facts.mappings = self.mappings(&stacks);
        facts.processes = self.process_entries(snapshot);
        facts.target_exit = self.endings.target_exit().cloned().map(|mut exit| {
            fill_held(&mut exit, snapshot);
            exit
        });
        facts.cgroup = self.scope.cgroup_dir();
        facts.limit = self.endings.limit().cloned();
        facts.timeline = self.history.timeline();
        facts.execs = self.processes.execs().to_vec();
        facts.unwind = self.tables.stats();
        facts.reachability = self.scanner.summary();
        report::build::report(stacks, &snapshot.counters, facts)
    }

    /// Every stack of `snapshot`, named, with its history and its classes; kernel stacks the
    /// report shows alike (they differ only in what it does not show, such as a return
    /// address in the interpreter's eval loop) are one entry, their figures summed.
    fn report_stacks(&mut self, snapshot: &MapsSnapshot) -> Vec<report::Stack> {
        let named: Vec<(&StackKey, &StackFigures, Vec<report::Frame>)> = snapshot
            .stacks
            .iter()
            .map(|(key, figures)| (key, figures, self.stack_frames(key)))
            .collect();
        let shown: Vec<_> = named
            .iter()
            .map(|(key, figures, frames)| (key.tgid, figures.kind, frames.as_slice()))
            .collect();
        let groups = report::build::alike(&shown);
        let mut named: Vec<_> = named.into_iter().map(Some).collect();
        groups
            .into_iter()
            .map(|group| {
                let members: Vec<_> = group.iter().filter_map(|&i| named[i].take()).collect();
                self.report_stack(members)
            })
            .collect()
    }

    /// One entry of the report: kernel stacks shown alike (at least one), named by the one
    /// that holds most.
    fn report_stack(
        &self,
        mut members: Vec<(&StackKey, &StackFigures, Vec<report::Frame>)>,
    ) -> report::Stack {
        members.sort_by_key(|(_, figures, _)| std::cmp::Reverse(figures.outstanding_bytes));
        let keys: Vec<StackKey> = members.iter().map(|(key, _, _)| **key).collect();
        let mut figures = StackFigures::default();
        let mut classes: Option<report::StackReachability> = None;
        for (key, own, _) in &members {
            figures.add(own);
            if let Some(own) = self.scanner.of_stack(key) {
                classes.get_or_insert_default().add(&own);
            }
        }
        let pid = keys[0].tgid;
        let frames = members.swap_remove(0).2;
        let comm = self
            .processes
            .get(pid)
            .map(|t| t.info.comm.clone())
            .unwrap_or_default();
        let mut stack = self
            .reporter
            .stack(&keys, &figures, frames, comm, &self.history);
        stack.reachability = classes;
        stack
    }

    /// The modules the frames of `stacks` are in, each process's.
    fn mappings(&self, stacks: &[report::Stack]) -> Vec<report::ModuleMapping> {
        let mut mappings = Vec::new();
        for pid in self.processes.pids() {
            let addresses = stacks
                .iter()
                .filter(|s| s.pid == pid)
                .flat_map(|s| s.frames.iter().map(|f| f.address));
            mappings.extend(self.spaces.module_mappings(pid, addresses));
        }
        mappings
    }

    /// The processes as the report lists them: where each froze, how each that ended ended,
    /// and what it held then.
    fn process_entries(&self, snapshot: &MapsSnapshot) -> Vec<ProcessEntry> {
        let mut entries = self.processes.entries();
        for entry in &mut entries {
            if let Some(freeze) = self.freezes.of(entry.pid) {
                entry.frozen_at_secs = Some(freeze.at_secs);
                entry.frozen_at = freeze.at.map(str::to_string);
            }
            entry.exit = self.endings.exit(entry.pid).cloned();
            if let Some(exit) = entry.exit.as_mut() {
                fill_held(exit, snapshot);
            }
        }
        entries
    }

    /// Hands the current report to the HTTP server, when there is one.
    pub(super) fn publish(&self, report: &Report) {
        self.reporter.publish(report, &self.processes.pids());
    }
}

/// The processes `config` covers; `child` is the command launched.
fn scope_of(config: &TraceConfig, child: Option<&LaunchedChild>) -> anyhow::Result<Scope> {
    Ok(match (child, &config.target) {
        (Some(child), _) => Scope::Process {
            root: child.pid,
            follow_children: config.follow_children,
            adopts_orphans: true,
        },
        (None, TargetSpec::Launch(_)) => unreachable!("run() launches the command first"),
        (None, TargetSpec::Pid(pid)) => Scope::Process {
            root: *pid,
            follow_children: config.follow_children,
            adopts_orphans: false,
        },
        (None, TargetSpec::Cgroup(dir)) => Scope::Cgroup(Cgroup::open(dir)?),
        (None, TargetSpec::Container(id)) => Scope::Cgroup(Cgroup::open(&find_container(id)?)?),
    })
}

/// `--serve`: the server, started and said.
fn start_server(config: &TraceConfig) -> anyhow::Result<Option<Server>> {
    let Some(addr) = config.serve else {
        return Ok(None);
    };
    let scans = if config.reachability {
        Scans::On {
            max_pause: config.max_pause,
        }
    } else {
        Scans::Off
    };
    let server = Server::start(addr, scans)?;
    eprintln_escaped!(
        "leaktracer: serving http://{} (/metrics, /api/snapshot, /api/history, /api/leaks, /api/process, /flamegraph.svg{})",
        server.addr,
        if config.reachability {
            "; POST /api/reachability scans"
        } else {
            ""
        }
    );
    Ok(Some(server))
}

/// How processes are attached, from `config`.
fn attach_settings(config: &TraceConfig) -> AttachSettings {
    AttachSettings {
        allocator: config.allocator.clone(),
        probes_at_symbol_entry: config.probes_at_symbol_entry,
        stop_at_exit: config.reachability,
        command: config.command().map(<[String]>::to_vec),
        verbose: config.verbose,
    }
}

/// How the report is built, from `config`.
fn report_settings(config: &TraceConfig) -> ReportSettings {
    ReportSettings {
        thresholds: config.thresholds,
        plumbing: config.outputs.plumbing.clone(),
        launched_command: config.command().map(<[String]>::to_vec),
        min_age: config.min_age,
        sample_bytes: config.sample_bytes,
        interval: config.interval,
        metrics_stacks: config.metrics_stacks,
    }
}
