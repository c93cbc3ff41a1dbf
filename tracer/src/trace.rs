//! One trace session: find the allocator, attach, wait for the end, collect, symbolize, report.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::Context;
use tracer_common::{COUNTER_NAMES, Counter};

use crate::{
    attach::{
        allocator::{self, AttachPlan, Candidate},
        probes::{self, MapSizes, Probes},
    },
    cli::TraceArgs,
    collect::{Collector, KernelSnapshot},
    error::TraceError,
    recording::{Recorder, verdict},
    report::{self, AllocatorUsed, Report, Stack, Target, Totals, human_bytes, human_rate},
    symbolize::{AddressSpaces, Symbolizer},
    target::{
        launch::{LaunchedChild, predict_loaded_objects},
        maps::read_maps,
        memory::{MemoryLimit, memory_limit, rss_bytes},
        process::{ProcessInfo, is_alive},
    },
};

/// How often the target's liveness and memory map are checked.
const POLL: Duration = Duration::from_millis(100);
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

/// Runs `leaktracer trace`.
pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    probes::check_privileges()?;
    probes::check_kernel_support()?;

    // Launch before any thread exists: the child runs nothing between fork and exec but raise().
    let mut child = if args.command.is_empty() {
        None
    } else {
        Some(LaunchedChild::spawn_stopped(&args.command)?)
    };
    let result = trace_target(&args, child.as_mut());
    if let Some(child) = child.as_mut()
        && child.try_reap().is_none()
    {
        // Setup failed, or the trace ended while it still runs: stop it like timeout(1) would.
        stop_child(child);
    }
    result
}

fn trace_target(args: &TraceArgs, mut child: Option<&mut LaunchedChild>) -> anyhow::Result<()> {
    let (pid, plan) = match child.as_deref() {
        Some(child) => (child.pid, plan_for_launch(child)?),
        None => {
            let pid = args.pid.expect("clap requires --pid or a command");
            if !is_alive(pid) {
                return Err(TraceError::NoSuchProcess(pid).into());
            }
            (pid, plan_for_pid(pid)?)
        }
    };

    let mut probes = Probes::load(MapSizes {
        max_allocations: args.max_allocations,
        max_stacks: args.max_stacks,
    })?;
    probes.add_target(pid)?;
    probes.attach(&plan, pid)?;
    let collector = Collector::new(probes.ebpf_mut())?;
    if args.verbose {
        for probe in &probes.attached {
            eprintln!(
                "leaktracer: {} {} at {}+{:#x} ({})",
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

    let mut spaces = AddressSpaces::default();
    if let Some(child) = child.as_deref_mut() {
        child.resume(&args.command)?;
    } else {
        spaces.refresh(pid);
    }
    let info = ProcessInfo::read(pid).unwrap_or_default();
    eprintln!(
        "leaktracer: tracing pid {pid} ({}), allocator {}: {} probes attached; {}",
        if info.comm.is_empty() {
            "?"
        } else {
            &info.comm
        },
        plan.allocator,
        probes.attached.len(),
        match args.duration {
            Some(d) => format!("stopping after {:.0?} or on Ctrl-C", d),
            None => "Ctrl-C to stop".to_string(),
        }
    );

    let mut session = Session {
        pid,
        args,
        probes,
        collector,
        spaces,
        recorder: Recorder::start(),
        symbolizer: Symbolizer::new(),
        limit: memory_limit(pid),
        status: StatusLine::new(args.quiet),
    };
    let end_reason = session.wait_for_end(&mut child)?;
    // Freeze the picture: the programs ignore the target from here on. (Detaching all probes
    // takes the kernel about 0.1 s per probe; that happens last, when `session` is dropped.)
    session.probes.remove_target(pid)?;
    let elapsed = session.recorder.elapsed_secs();
    session.spaces.refresh(pid);
    session.collector.drain_unmaps(session.probes.ebpf_mut())?;
    session.collector.print_warnings();
    let snapshot = session
        .collector
        .snapshot(session.probes.ebpf(), args.min_age)?;
    session
        .recorder
        .sample_at(elapsed, &snapshot, rss_bytes(pid));
    session.status.finish();
    if args.verbose || snapshot.stacks.len() > 100 {
        eprintln!("leaktracer: symbolizing {} stacks", snapshot.stacks.len());
    }
    if let Some(limit) = memory_limit(pid) {
        session.limit = Some(limit);
    }
    let command = if args.command.is_empty() {
        Some(info.cmdline.clone()).filter(|c| !c.is_empty())
    } else {
        Some(args.command.clone())
    };
    let report = session.build_report(
        &snapshot,
        Target {
            pids: vec![pid],
            command,
            comms: vec![info.comm.clone()],
        },
        vec![AllocatorUsed {
            pid,
            object: plan.allocator.clone(),
        }],
        elapsed,
        end_reason,
    );
    report.write_files(&args.output.outputs(args.json.clone()))?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(report::text::render(&report, args.output.top).as_bytes());
    let _ = stdout.flush();
    drop(session); // detaches every probe
    Ok(())
}

/// A trace in progress: the probes, what has been sampled, and how to name stacks.
struct Session<'a> {
    pid: u32,
    args: &'a TraceArgs,
    probes: Probes,
    collector: Collector,
    spaces: AddressSpaces,
    recorder: Recorder,
    symbolizer: Symbolizer,
    /// The target's memory limit, last read while it was alive.
    limit: Option<MemoryLimit>,
    status: StatusLine,
}

impl Session<'_> {
    /// Waits for Ctrl-C/SIGTERM, the duration, or the target's exit; samples every interval and
    /// keeps the view of the target's memory map fresh meanwhile.
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
                        let exited = match child.as_deref_mut() {
                            Some(child) => child.try_reap().is_some(),
                            None => !is_alive(self.pid),
                        };
                        if exited {
                            return Ok(EndReason::TargetExited);
                        }
                        self.spaces.refresh(self.pid);
                        self.collector.drain_unmaps(self.probes.ebpf_mut())?;
                        self.collector.print_warnings();
                    }
                    _ = sample.tick() => self.sample()?,
                }
            }
        })
    }

    /// Takes one sample and shows it on the status line.
    fn sample(&mut self) -> anyhow::Result<()> {
        let snapshot = self
            .collector
            .snapshot(self.probes.ebpf(), self.args.min_age)?;
        let rss = rss_bytes(self.pid);
        self.recorder.sample(&snapshot, rss);
        if let Some(limit) = memory_limit(self.pid) {
            self.limit = Some(limit);
        }
        if self.status.quiet {
            return Ok(());
        }
        let grower = self.recorder.top_grower().map(|(key, rate)| {
            let ips = self.collector.stack(self.probes.ebpf(), key.stack_id);
            let frames = self
                .symbolizer
                .symbolize_stack(&self.spaces, key.tgid, &ips);
            let name = frames
                .first()
                .map_or("[unknown stack]".to_string(), |f| f.function.clone());
            format!("{name} {}", human_rate(rate))
        });
        self.status.show(&format!(
            "[{:>5.0}s] outstanding {} ({}), rss {}, top grower: {}",
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
        target: Target,
        allocators: Vec<AllocatorUsed>,
        elapsed: f64,
        end_reason: EndReason,
    ) -> Report {
        let thresholds = self.args.thresholds();
        let mut stacks: Vec<Stack> = snapshot
            .stacks
            .iter()
            .map(|(key, stats)| {
                let ips = self.collector.stack(self.probes.ebpf(), key.stack_id);
                let (timeline, growth) = self.recorder.stack_history(key, &thresholds);
                Stack {
                    outstanding_bytes: stats.outstanding_bytes,
                    outstanding_allocations: stats.outstanding_allocations,
                    total_allocations: stats.total_allocations,
                    total_bytes: stats.total_bytes,
                    pid: key.tgid,
                    frames: self
                        .symbolizer
                        .symbolize_stack(&self.spaces, key.tgid, &ips),
                    growth: Some(growth),
                    timeline,
                }
            })
            .collect();
        stacks.sort_by(|a, b| {
            b.outstanding_bytes
                .cmp(&a.outstanding_bytes)
                .then(b.outstanding_allocations.cmp(&a.outstanding_allocations))
        });
        let counter = |c: Counter| snapshot.counters[c as usize];
        let named = |list: &[Counter]| {
            list.iter()
                .map(|c| (COUNTER_NAMES[*c as usize].to_string(), counter(*c)))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let dropped_by_cause = named(&[
            Counter::AllocMapFull,
            Counter::StackFailed,
            Counter::PendingMapFull,
            Counter::StatsMapFull,
            Counter::UnmapEventsLost,
        ]);
        let totals = Totals {
            outstanding_bytes: stacks.iter().map(|s| s.outstanding_bytes).sum(),
            outstanding_allocations: stacks.iter().map(|s| s.outstanding_allocations).sum(),
            allocations: counter(Counter::Allocations),
            frees: counter(Counter::Frees),
            dropped: dropped_by_cause.values().sum(),
            dropped_by_cause,
            ignored: named(&[
                Counter::UnknownFrees,
                Counter::NestedCalls,
                Counter::AllocatorMmaps,
                Counter::StaleCalls,
            ]),
        };
        let timeline = self.recorder.timeline();
        let verdict = verdict(&stacks, &timeline, self.limit.clone());
        Report {
            target,
            duration_secs: elapsed,
            totals,
            stacks,
            allocators,
            end_reason: end_reason.as_str().to_string(),
            timeline,
            verdict: Some(verdict),
            thresholds: Some(thresholds),
            min_age_secs: self.args.min_age.map(|d| d.as_secs_f64()),
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

/// Plan for a running process: the objects it maps, opened through its root.
fn plan_for_pid(pid: u32) -> Result<AttachPlan, TraceError> {
    let maps = read_maps(pid).map_err(|_| TraceError::NoSuchProcess(pid))?;
    let candidates = allocator::candidates_from_maps(pid, &maps);
    allocator::plan(pid, &candidates)
}

/// Plan for a command not yet exec'd: the objects the dynamic linker will load for it.
fn plan_for_launch(child: &LaunchedChild) -> anyhow::Result<AttachPlan> {
    let objects = predict_loaded_objects(&child.program).with_context(|| {
        format!(
            "cannot tell which libraries {} loads",
            child.program.display()
        )
    })?;
    let candidates: Vec<Candidate> = objects
        .iter()
        .map(|path| Candidate {
            open_path: path.clone(),
            display_path: path.display().to_string(),
        })
        .collect();
    Ok(allocator::plan(child.pid, &candidates)?)
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
