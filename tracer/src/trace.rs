//! One trace session: find the allocator, attach, wait for the end, collect, symbolize, report.

use std::{
    io::Write,
    path::Path,
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
    report::{self, AllocatorUsed, Report, Stack, Target, Totals, output::write_atomic},
    symbolize::{AddressSpaces, Symbolizer},
    target::{
        launch::{LaunchedChild, predict_loaded_objects},
        maps::read_maps,
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
    let mut collector = Collector::new(probes.ebpf_mut())?;
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

    let started = Instant::now();
    let end_reason = wait_for_end(
        args.duration,
        pid,
        &mut child,
        &mut spaces,
        &mut collector,
        &mut probes,
    )?;
    let elapsed = started.elapsed();

    // Freeze the picture: no probe fires past this point.
    probes.detach();
    spaces.refresh(pid);
    collector.drain_unmaps(probes.ebpf_mut())?;
    collector.print_warnings();
    let snapshot = collector.snapshot(probes.ebpf())?;
    if args.verbose || snapshot.stacks.len() > 100 {
        eprintln!("leaktracer: symbolizing {} stacks", snapshot.stacks.len());
    }
    let command = if args.command.is_empty() {
        Some(info.cmdline.clone()).filter(|c| !c.is_empty())
    } else {
        Some(args.command.clone())
    };
    let report = build_report(
        &snapshot,
        &collector,
        &probes,
        &spaces,
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
    drop(probes);

    write_outputs(args, &report, &info)?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(report::text::render(&report, args.top).as_bytes());
    let _ = stdout.flush();
    Ok(())
}

/// Waits for Ctrl-C/SIGTERM, the duration, or the target's exit, keeping the view of the
/// target's memory map fresh meanwhile.
fn wait_for_end(
    duration: Option<Duration>,
    pid: u32,
    child: &mut Option<&mut LaunchedChild>,
    spaces: &mut AddressSpaces,
    collector: &mut Collector,
    probes: &mut Probes,
) -> anyhow::Result<EndReason> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let mut poll = tokio::time::interval(POLL);
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
                        None => !is_alive(pid),
                    };
                    if exited {
                        return Ok(EndReason::TargetExited);
                    }
                    spaces.refresh(pid);
                    collector.drain_unmaps(probes.ebpf_mut())?;
                    collector.print_warnings();
                }
            }
        }
    })
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

#[allow(clippy::too_many_arguments)]
fn build_report(
    snapshot: &KernelSnapshot,
    collector: &Collector,
    probes: &Probes,
    spaces: &AddressSpaces,
    target: Target,
    allocators: Vec<AllocatorUsed>,
    elapsed: Duration,
    end_reason: EndReason,
) -> Report {
    let mut symbolizer = Symbolizer::new();
    let mut stacks: Vec<Stack> = snapshot
        .stacks
        .iter()
        .map(|(key, stats)| {
            let ips = collector.stack(probes.ebpf(), key.stack_id);
            Stack {
                outstanding_bytes: stats.outstanding_bytes,
                outstanding_allocations: stats.outstanding_allocations,
                total_allocations: stats.total_allocations,
                total_bytes: stats.total_bytes,
                pid: key.tgid,
                frames: symbolizer.symbolize_stack(spaces, key.tgid, &ips),
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
    Report {
        target,
        duration_secs: elapsed.as_secs_f64(),
        totals,
        stacks,
        allocators,
        end_reason: end_reason.as_str().to_string(),
    }
}

fn write_outputs(args: &TraceArgs, report: &Report, info: &ProcessInfo) -> anyhow::Result<()> {
    let written = |path: &Path| eprintln!("leaktracer: wrote {}", path.display());
    if let Some(path) = &args.json {
        write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, report)?;
            w.write_all(b"\n")
        })?;
        written(path);
    }
    if let Some(path) = &args.folded {
        write_atomic(path, |w| {
            for line in report.folded_lines() {
                writeln!(w, "{line}")?;
            }
            Ok(())
        })?;
        written(path);
    }
    if let Some(path) = &args.flamegraph {
        let title = format!(
            "leaktracer: {} (pid {}), outstanding bytes after {:.1} s",
            if info.comm.is_empty() {
                "target"
            } else {
                &info.comm
            },
            report.target.pids.first().copied().unwrap_or_default(),
            report.duration_secs
        );
        write_atomic(path, |w| report::flamegraph::write_svg(report, &title, w))?;
        written(path);
    }
    Ok(())
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
