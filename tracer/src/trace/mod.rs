//! One trace session: find the processes and their allocators, attach, sample until the end,
//! collect, symbolize, report.
//!
//! - [`config`]: what the trace is asked to do ([`TraceConfig`]), validated;
//! - [`scope`]: which processes it covers;
//! - [`processes`]: attaching to them as they come, and what the report says of them;
//! - [`event_loop`]: waiting for the end while polling and sampling;
//! - [`status`]: the live status line.

pub mod config;
mod event_loop;
mod processes;
mod reachability;
pub mod scope;
pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::{fd::AsFd, unix::fs::MetadataExt},
    time::Duration,
};

use anyhow::Context;
use aya::{
    maps::IterableMap,
    sys::{Stats, enable_stats},
};
use tracer_common::StackKey;

pub use config::{TargetSpec, TraceConfig, UnwindMode};
use event_loop::Signals;
use processes::{Tracked, plan_for_pid};
use scope::Scope;
use status::StatusLine;

use crate::{
    attach::{
        allocator,
        probes::{self, MapSizes, Probes},
    },
    collect::{Collector, KernelSnapshot},
    error::TraceError,
    history::SampleHistory,
    report::{self, ExecEvent, Report, TargetExit, build::TraceFacts},
    runtimes::Runtimes,
    serve::{LiveProcess, Published, Scans, Server},
    symbolize::{AddressSpaces, Symbolizer},
    target::{
        cgroup::{Cgroup, find_container},
        launch::{LaunchedChild, Orphans, adopt_orphans, predict_loaded_objects, signal_name},
        memory::{MemoryLimit, mem_total},
        process::{ProcessUsage, is_alive},
        resume_guard::ResumeGuard,
    },
    terminal::eprintln_escaped,
    units::human_bytes,
    unwind::KernelTables,
};

/// A launched command still running when the trace ends gets this long to exit after SIGTERM.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// How long a launched command may take from its exec to its entry point (the dynamic loader
/// mapping and relocating its libraries) before it is let go without waiting.
const LAUNCH_STOP_WAIT: Duration = Duration::from_secs(10);

/// Why the trace stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Duration,
    Interrupted,
    TargetExited,
}

impl EndReason {
    /// As the report's `end_reason` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duration => "duration",
            Self::Interrupted => "interrupted",
            Self::TargetExited => "target exited",
        }
    }
}

/// Runs `leaktracer trace`.
pub fn run(config: TraceConfig) -> anyhow::Result<()> {
    // Before any work: a trace of ten minutes must not end in "cannot write".
    config.outputs.check(&[])?;
    probes::check_privileges()?;
    probes::check_kernel_support()?;
    check_map_memory(&config)?;
    if let Some(pid) = config.pid()
        && !is_alive(pid)
    {
        return Err(TraceError::NoSuchProcess(pid).into());
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Before the fork and before attaching: from here on Ctrl-C, SIGTERM and SIGHUP (a closed
    // terminal, a dropped ssh) end the trace with its report instead of killing leaktracer.
    let signals = {
        let _context = runtime.enter();
        Signals::install()?
    };
    // Launch before any thread exists: the child runs nothing between fork and exec but raise().
    // As the subreaper of what it launches, leaktracer adopts the processes the command leaves
    // behind (a daemon's double fork), which would otherwise be lost to init.
    let mut child = match config.command() {
        Some(command) => {
            adopt_orphans().context("cannot become the subreaper of the command's processes")?;
            Some(LaunchedChild::spawn_stopped(command)?)
        }
        None => None,
    };
    let result = trace(&config, child.as_mut(), &runtime, signals);
    if let Some(child) = child.as_mut()
        && child.try_reap().is_none()
    {
        // Setup failed, or the trace ended while it still runs.
        child.terminate(TERMINATE_GRACE);
    }
    result
}

fn trace(
    config: &TraceConfig,
    mut child: Option<&mut LaunchedChild>,
    runtime: &tokio::runtime::Runtime,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let scope = match (&child, &config.target) {
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
    };
    let mut probes = Probes::load(map_sizes(config, scope.kernel_filter()))?;
    // Before any target is attached (and so before any can be stopped): from here on a target
    // the probes stop is resumed even if leaktracer is killed. Dropped after the session.
    let _resume_guard = {
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
            KernelTables::new(probes.unwind_maps()?).context("cannot map the unwinder's tables")?,
        ),
        UnwindMode::FramePointers => None,
    };
    // Held for the whole trace: the kernel measures programs only while it is open.
    let run_time_stats = if config.program_stats {
        Some(enable_stats(Stats::RunTime).map_err(|e| {
            anyhow::anyhow!("cannot turn on the kernel's BPF run-time statistics: {e}")
        })?)
    } else {
        None
    };
    let server = match config.serve {
        Some(addr) => {
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
            Some(server)
        }
        None => None,
    };
    let mut session = Session {
        config,
        scope,
        probes,
        collector,
        tables,
        tables_checked: std::time::Instant::now(),
        exec_followed_ns: 0,
        spaces: AddressSpaces::default(),
        history: SampleHistory::start(),
        symbolizer: Symbolizer::new(),
        runtimes,
        limit: None,
        status: StatusLine::new(config.quiet),
        server,
        tracked: BTreeMap::new(),
        failed: BTreeSet::new(),
        attempts: BTreeMap::new(),
        announce_attaches: config.verbose,
        target_exit: None,
        execs: Vec::new(),
        reachability: None,
        orphans: Orphans::default(),
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
            config.allocator.as_ref(),
        )?;
        if config.probes_at_symbol_entry {
            plan.place_at_symbol_entries();
        }
        if config.reachability {
            allocator::add_exit_stop(&mut plan);
        }
        session.attach_plan(child.pid, &plan)?;
        // The command stops at its entry point, where its memory maps are read (a short-lived
        // program may be gone by the first poll, and its stacks would have no symbols) and,
        // with CFI unwinding, its unwind tables written, before its own code allocates
        // anything. Its later execs stop too (a wrapper such as rustup's proxy or `sh -c`
        // exec'ing the real program), for the same reasons: see `follow_launched_exec`.
        let stopped = session.launch_to_entry(child, &objects[0])?;
        // Probes in the program itself (a statically linked allocator) went on the file its
        // path named before the fork; a file renamed over it since is not probed.
        let program = objects[0].display().to_string();
        if let Some(planned) = plan.objects.iter().find(|o| o.display_path == program)
            && let Ok(running) = std::fs::metadata(format!("/proc/{}/exe", child.pid))
            && (running.dev(), running.ino()) != (planned.dev, planned.inode)
        {
            eprintln_escaped!(
                "leaktracer: warning: {program} was replaced on disk as it started: the probes in it are on the old file, so its own allocator's calls are not seen"
            );
        }
        // Stopped at its entry point (or already running, when it could not be stopped): its
        // libraries are mapped, its tables are written now. (Other processes get theirs before
        // their probes are attached.)
        session.update_tables(child.pid);
        session.track(child.pid, plan);
        if stopped {
            child.continue_stopped();
        }
    }
    // Everything else in scope now; a --pid that cannot be traced is an error, not a warning.
    if let Some(pid) = config.pid() {
        let plan = plan_for_pid(pid, config)?;
        // Tables first, so the first allocation recorded already gets its whole stack.
        session.update_tables(pid);
        session.attach_plan(pid, &plan)?;
        session.track(pid, plan);
    }
    session.discover();
    session.announce_attaches = true;
    if session.tracked.is_empty() && matches!(session.scope, Scope::Cgroup(_)) {
        eprintln_escaped!("leaktracer: the cgroup has no process yet; waiting for one to start");
    }
    session.history = SampleHistory::start();
    if config.verbose {
        let stats = session.probes.stats();
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
    }
    eprintln_escaped!(
        "leaktracer: tracing {}: {} probes attached; {}",
        session.describe_targets(),
        session.probes.attached.len(),
        match config.duration {
            Some(d) => format!("stopping after {:.0?} or on Ctrl-C", d),
            None => "Ctrl-C to stop".to_string(),
        }
    );

    let end_reason = session.wait_for_end(&mut child, runtime, &mut signals)?;
    if let Some(child) = child.as_deref()
        && end_reason == EndReason::TargetExited
        && !config.follow_children
    {
        session.note_left_behind(child.pid);
    }
    session.settle_exits();
    // The launched command's wait status is the authority on how it ended; the kernel's
    // ending adds the OOM killer, the limit and the time. A --pid target has only the latter.
    let waited = child.as_mut().and_then(|child| {
        child.try_reap()?;
        Some((child.pid, child.exit()?))
    });
    let root = child.as_ref().map(|c| c.pid).or(config.pid());
    session.target_exit = root.and_then(|pid| {
        let mut exit = session.tracked.get(&pid).and_then(|t| t.exit.clone());
        if let Some((pid, waited)) = waited {
            let exit = exit.get_or_insert_with(|| TargetExit {
                pid,
                ..TargetExit::default()
            });
            exit.code = waited.code;
            exit.signal = waited.signal.map(signal_name);
            exit.core_dumped = waited.core_dumped;
        }
        exit
    });
    if run_time_stats.is_some() {
        for stats in session.probes.program_stats() {
            eprintln_escaped!(
                "leaktracer: program {}: {} runs, {:.0} ns per run, {} instructions verified",
                stats.name,
                stats.runs,
                stats.ns_per_run,
                stats.verified_instructions
            );
        }
    }
    // Each live target stopped in turn while the probes still record, so the blocks read
    // during its stop are exactly those in its memory.
    if config.reachability {
        session.status.finish();
        eprintln_escaped!(
            "leaktracer: scanning for pointers to the outstanding blocks (--reachability)"
        );
        session.scan_reachability(reachability::Which::Remaining);
    }
    // Freeze the picture: the programs return at once from here on (at once, unlike the
    // detach below, for which the kernel waits a grace period per link).
    session.probes.stop_recording()?;
    let elapsed = session.history.elapsed_secs();
    session.settle_execs()?;
    session.settle_freezes();
    session.refresh_spaces();
    session.settle_unmaps()?;
    let snapshot = session
        .collector
        .snapshot(session.probes.maps(), config.min_age)?;
    let rss = session.total_rss();
    session.history.sample_at(elapsed, &snapshot, rss);
    session.status.finish();
    if config.verbose || snapshot.stacks.len() > 100 {
        eprintln_escaped!("leaktracer: symbolizing {} stacks", snapshot.stacks.len());
    }
    session.refresh_limit();
    // Detached before the report, which says how long that took: the picture is frozen
    // already, and the maps stay readable.
    session.probes.detach();
    if config.verbose {
        let stats = session.probes.stats();
        eprintln_escaped!(
            "leaktracer: detached {} links in {:.3} s",
            stats.links,
            stats.detach.unwrap_or_default().as_secs_f64()
        );
    }
    let report = session.build_report(&snapshot, elapsed, Some(end_reason));
    session.publish(&report);
    let delivered = report::deliver(&report, &config.outputs);
    // A CPython target the kernel stopped at Py_FinalizeEx between the last poll and the
    // end goes on (the report took long enough for any such stop to have happened).
    session.resume_frozen_interpreters();
    delivered
}

/// The maps' sizes and load-time settings for `config`, with the kernel-side `cgroup` filter.
fn map_sizes(config: &TraceConfig, cgroup: Option<(u64, u32)>) -> MapSizes {
    MapSizes {
        cgroup,
        max_allocations: config.max_allocations,
        max_stacks: config.max_stacks,
        empty_programs: config.empty_programs,
        sample_bytes: config.sample_bytes.unwrap_or(0),
        max_depth: config.max_depth,
        unwind_rows: config.max_unwind_rows,
        stop_at_exit: config.reachability,
    }
}

/// Of the machine's memory, the most the kernel maps may take once full without
/// `--allow-large-maps`.
const MAPS_SHARE_OF_MEMORY: u64 = 4;

/// Says what the kernel maps will take (with --verbose), and refuses sizes whose maps, full,
/// would take more than a quarter of the machine's memory, unless --allow-large-maps: kernel
/// memory is not swapped, and the OOM killer cannot take it back from leaktracer's targets.
fn check_map_memory(config: &TraceConfig) -> Result<(), TraceError> {
    let sizes = map_sizes(config, None);
    let memory = probes::map_memory(&sizes)?;
    let sized = probes::sized_maps(&sizes);
    let sized_by = |name: &str| sized.iter().find(|s| s.map == name);
    let largest: Vec<String> = memory
        .maps
        .iter()
        .take(3)
        .map(|map| {
            let flag = sized_by(&map.name)
                .map(|s| format!(" ({} {})", s.flag, s.value))
                .unwrap_or_default();
            format!("{} {}{flag}", map.name, human_bytes(map.at_most))
        })
        .collect();
    if config.verbose {
        eprintln_escaped!(
            "leaktracer: kernel maps: {} as soon as they are created, up to {} once full (largest: {})",
            human_bytes(memory.at_load),
            human_bytes(memory.at_most),
            largest.join(", ")
        );
    }
    let Some(mem_total) = mem_total() else {
        return Ok(());
    };
    if memory.at_most <= mem_total / MAPS_SHARE_OF_MEMORY || config.allow_large_maps {
        return Ok(());
    }
    // The flags whose maps take a quarter of it or more, the heaviest first.
    let mut by_flag: Vec<(&str, u64)> = Vec::new();
    for map in &memory.maps {
        let Some(sized) = sized_by(&map.name) else {
            continue;
        };
        match by_flag.iter_mut().find(|(flag, _)| *flag == sized.flag) {
            Some((_, bytes)) => *bytes += map.at_most,
            None => by_flag.push((sized.flag, map.at_most)),
        }
    }
    by_flag.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let flags: Vec<&str> = by_flag
        .iter()
        .filter(|(_, bytes)| *bytes >= memory.at_most / 4)
        .map(|(flag, _)| *flag)
        .collect();
    Err(TraceError::MapsBeyondMemory {
        at_most: human_bytes(memory.at_most),
        at_load: human_bytes(memory.at_load),
        mem_total: human_bytes(mem_total),
        largest: largest.join(", "),
        flags: flags.join(" or "),
    })
}

/// The report's `attach` section.
fn attach_summary(stats: probes::AttachStats) -> report::AttachSummary {
    report::AttachSummary {
        attach_secs: stats.attach.as_secs_f64(),
        detach_secs: stats.detach.map(|d| d.as_secs_f64()),
        links: stats.links as u64,
        probes: stats.probes as u64,
        multi: stats.multi,
    }
}

/// A trace in progress: the probes, the processes, what has been sampled, how to name stacks.
struct Session<'a> {
    config: &'a TraceConfig,
    scope: Scope,
    probes: Probes,
    collector: Collector,
    /// `--unwind cfi`: the processes' unwind tables in the kernel.
    tables: Option<KernelTables>,
    /// When every process's tables were last checked against its mappings.
    tables_checked: std::time::Instant,
    /// The launched command's last exec stop followed (CLOCK_MONOTONIC ns of the exec).
    exec_followed_ns: u64,
    spaces: AddressSpaces,
    history: SampleHistory,
    symbolizer: Symbolizer,
    /// The language runtimes (CPython) whose frames the kernel walks, and the processes each
    /// runs in.
    runtimes: Runtimes,
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
    /// Each process attached is said on its own line: once the trace runs (those at the start
    /// are in its first line), or always with --verbose.
    announce_attaches: bool,
    /// How the launched command or the --pid target ended, once it has.
    target_exit: Option<TargetExit>,
    /// Execs of traced processes, and what was retired with their old images.
    execs: Vec<ExecEvent>,
    /// `--reachability`: the last scan.
    reachability: Option<reachability::ReachabilityScan>,
    /// What the launched command left running, adopted by leaktracer, to reap.
    orphans: Orphans,
}

impl Session<'_> {
    /// The frames of a stack, innermost first: native frames symbolized, and a runtime's
    /// frames (a CPython target's) in place of the native frames that ran them.
    fn stack_frames(&mut self, key: &StackKey) -> Vec<report::Frame> {
        let ips = self.collector.stack(self.probes.maps(), key.stack_id);
        self.symbolizer.symbolize_with_runtimes(
            &self.spaces,
            &mut self.runtimes,
            key.tgid,
            key.stack_id,
            &ips,
        )
    }

    /// The report of what the kernel holds in `snapshot`: every stack symbolized, with its
    /// history; `end_reason` is `None` for a live report.
    fn build_report(
        &mut self,
        snapshot: &KernelSnapshot,
        elapsed: f64,
        end_reason: Option<EndReason>,
    ) -> Report {
        let thresholds = self.config.thresholds;
        let mut stacks: Vec<report::Stack> = snapshot
            .stacks
            .iter()
            .map(|(key, figures)| {
                let (timeline, growth) = self.history.stack_history(key, &thresholds);
                let frames = self.stack_frames(key);
                let comm = self
                    .tracked
                    .get(&key.tgid)
                    .map(|t| t.info.comm.clone())
                    .unwrap_or_default();
                let mut stack = report::build::stack(
                    key.tgid,
                    comm,
                    figures,
                    frames,
                    &self.config.outputs.plumbing,
                    timeline,
                    growth,
                );
                stack.reachability = self.reachability.as_ref().and_then(|scan| {
                    scan.per_stack.get(key).copied().or_else(|| {
                        // Scanned, but no block of this stack was outstanding then.
                        scan.summary
                            .processes
                            .iter()
                            .any(|p| p.pid == key.tgid && p.complete)
                            .then(report::StackReachability::default)
                    })
                });
                stack
            })
            .collect();
        report::build::sort_stacks(&mut stacks);
        let mut mappings = Vec::new();
        for pid in self.tracked.keys() {
            let addresses = stacks
                .iter()
                .filter(|s| s.pid == *pid)
                .flat_map(|s| s.frames.iter().map(|f| f.address));
            mappings.extend(self.spaces.module_mappings(*pid, addresses));
        }
        // What each process that ended holds: a killed process frees nothing, so its records
        // are the picture at its death.
        let held = |exit: &mut TargetExit| {
            let (bytes, allocations) = snapshot
                .stacks
                .iter()
                .filter(|(key, _)| key.tgid == exit.pid)
                .fold((0, 0), |(b, a), (_, f)| {
                    (b + f.outstanding_bytes, a + f.outstanding_allocations)
                });
            exit.outstanding_bytes = Some(bytes);
            exit.outstanding_allocations = Some(allocations);
        };
        let mut processes: Vec<report::ProcessEntry> =
            self.tracked.iter().map(|(pid, t)| t.entry(*pid)).collect();
        processes
            .iter_mut()
            .filter_map(|p| p.exit.as_mut())
            .for_each(held);
        let mut target_exit = self.target_exit.clone();
        target_exit.iter_mut().for_each(held);
        let facts = TraceFacts {
            processes,
            launched_command: self.config.command().map(<[String]>::to_vec),
            cgroup: self.scope.cgroup_dir(),
            duration_secs: elapsed,
            end_reason: end_reason.map_or("running", EndReason::as_str).to_string(),
            thresholds,
            min_age_secs: self.config.min_age.map(|d| d.as_secs_f64()),
            sample_bytes: self.config.sample_bytes,
            limit: self.limit.clone(),
            timeline: self.history.timeline(),
            mappings,
            target_exit,
            execs: self.execs.clone(),
            unwind: self.tables.as_ref().map(KernelTables::stats),
            reachability: self.reachability.as_ref().map(|r| r.summary.clone()),
            attach: Some(attach_summary(self.probes.stats())),
        };
        report::build::report(stacks, &snapshot.counters, facts)
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
            self.config.interval.as_secs_f64(),
            self.config.metrics_stacks,
        ) {
            Ok(bodies) => server.publish(bodies),
            Err(e) => {
                eprintln_escaped!("leaktracer: warning: cannot render the served pages: {e:#}")
            }
        }
    }
}
