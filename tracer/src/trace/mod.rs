//! One trace session: find the processes and their allocators, attach, sample until the end,
//! collect, symbolize, report.
//!
//! - [`config`]: what the trace is asked to do ([`TraceConfig`]), validated;
//! - [`scope`]: which processes it covers;
//! - `session`: the trace in progress, a coordinator of the parts below, and the order they
//!   run in (start, each poll, the end);
//! - `event_loop`: waiting for the end while polling and sampling;
//! - `launcher`: the launched command, from its exec to its entry point and through its execs;
//! - `processes`: attaching to the processes as they come, their execs, what the report says
//!   of them;
//! - `endings`: how each process ended (exit status, OOM kills, memory limits);
//! - `freezes`: where a process's picture froze (`Py_FinalizeEx`, `exit()`);
//! - `unwind_tables`: the processes' unwind tables in the kernel;
//! - `reachability`: `--reachability` scans;
//! - `interpreters`: the language runtimes' frames (CPython's), through the registry;
//! - `reporting`: the report's settings and the `--serve` server;
//! - [`status`]: the live status line.

pub mod config;
mod endings;
mod event_loop;
mod freezes;
mod interpreters;
mod launcher;
mod processes;
mod reachability;
mod redirects;
mod reporting;
pub mod scope;
mod session;
pub mod status;
mod unwind_tables;

use std::time::Duration;

use anyhow::Context;

pub use config::{TargetSpec, TraceConfig, UnwindMode};
use event_loop::Signals;
use session::Session;

use crate::{
    attach::probes::{self, MapSizes},
    error::TraceError,
    target::{
        launch::{LaunchedChild, adopt_orphans},
        memory::mem_total,
        process::is_alive,
    },
    terminal::eprintln_escaped,
    units::human_bytes,
};

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
    let started = std::time::Instant::now();
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
    let result = trace(&config, child.as_mut(), &runtime, signals, started);
    if let Some(child) = child.as_mut()
        && child.try_reap().is_none()
    {
        // Setup failed, or the trace ended while it still runs.
        child.terminate(TERMINATE_GRACE);
    }
    result
}

/// The trace itself, once the command (if any) is launched: open the session, attach, wait
/// for the end, report.
fn trace(
    config: &TraceConfig,
    child: Option<&mut LaunchedChild>,
    runtime: &tokio::runtime::Runtime,
    mut signals: Signals,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let mut session = Session::open(config, child, started)?;
    session.start(config.pid(), config.duration)?;
    let end_reason =
        session.wait_for_end(runtime, &mut signals, config.duration, config.interval)?;
    session.finish(end_reason, &config.outputs)
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
