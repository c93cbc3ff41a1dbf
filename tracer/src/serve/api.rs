//! Bodies of the JSON endpoints other than `/api/snapshot` (which is the `--json` report).

use serde::Serialize;

use super::LiveProcess;
use crate::{
    growth::{Class, Severity},
    report::{Frame, Report, Stack, TimelinePoint},
};

/// Stacks whose own timelines `/api/history` carries: the largest by outstanding bytes.
const HISTORY_STACKS: usize = 10;

/// `/api/history`: the whole-process timeline, and the timelines of the largest stacks.
#[derive(Serialize)]
pub struct History<'a> {
    pub interval_secs: f64,
    pub timeline: &'a [TimelinePoint],
    pub stacks: Vec<StackHistory<'a>>,
}

#[derive(Serialize)]
pub struct StackHistory<'a> {
    pub id: &'a str,
    pub pid: u32,
    pub function: &'a str,
    /// (seconds since the trace started, outstanding bytes)
    pub points: Vec<(f64, u64)>,
}

pub fn history(report: &Report, interval_secs: f64) -> History<'_> {
    History {
        interval_secs,
        timeline: &report.timeline,
        stacks: report
            .stacks
            .iter()
            .take(HISTORY_STACKS)
            .map(|stack| StackHistory {
                id: &stack.id,
                pid: stack.pid,
                function: top_function(stack),
                points: stack
                    .timeline
                    .iter()
                    .map(|p| (p.t_secs, p.outstanding_bytes))
                    .collect(),
            })
            .collect(),
    }
}

/// One entry of `/api/leaks`.
#[derive(Serialize)]
pub struct Leak<'a> {
    pub id: &'a str,
    pub pid: u32,
    pub comm: &'a str,
    /// The stack's first own frame: the allocator's caller, past any allocator plumbing.
    pub function: &'a str,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub bytes_per_sec: f64,
    pub recent_bytes_per_sec: f64,
    pub severity: Severity,
    /// Every frame, allocator plumbing included (marked).
    pub frames: &'a [Frame],
}

/// `/api/leaks`: the stacks classed `leak`, fastest first.
pub fn leaks(report: &Report) -> Vec<Leak<'_>> {
    let mut leaks: Vec<Leak> = report
        .stacks
        .iter()
        .filter_map(|stack| {
            let growth = stack.growth.as_ref()?;
            (growth.class == Class::Leak).then(|| Leak {
                id: &stack.id,
                pid: stack.pid,
                comm: &stack.comm,
                function: top_function(stack),
                outstanding_bytes: stack.outstanding_bytes,
                outstanding_allocations: stack.outstanding_allocations,
                bytes_per_sec: growth.bytes_per_sec,
                recent_bytes_per_sec: growth.recent_bytes_per_sec,
                severity: growth.severity,
                frames: &stack.frames,
            })
        })
        .collect();
    leaks.sort_by(|a, b| b.bytes_per_sec.total_cmp(&a.bytes_per_sec));
    leaks
}

/// One entry of `/api/process`.
#[derive(Serialize)]
pub struct Process<'a> {
    pub pid: u32,
    /// Its pid in each pid namespace, the host's first.
    pub nspid: &'a [u32],
    pub comm: &'a str,
    pub command: &'a [String],
    pub cgroup: Option<&'a str>,
    pub allocator: &'a str,
    pub alive: bool,
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub threads: Option<u64>,
}

/// `/api/process`: every traced process, with what it uses now.
pub fn processes<'a>(report: &'a Report, live: &[LiveProcess]) -> Vec<Process<'a>> {
    report
        .processes
        .iter()
        .map(|entry| {
            let usage = live
                .iter()
                .find(|p| p.pid == entry.pid)
                .and_then(|p| p.usage.as_ref());
            Process {
                pid: entry.pid,
                nspid: &entry.nspid,
                comm: &entry.comm,
                command: &entry.command,
                cgroup: entry.cgroup.as_deref(),
                allocator: &entry.allocator,
                alive: usage.is_some(),
                rss_bytes: usage.map(|u| u.rss_bytes),
                open_fds: usage.map(|u| u.open_fds),
                threads: usage.map(|u| u.threads),
            }
        })
        .collect()
}

/// The function a stack is named by: its first own frame (the allocator's caller, past any
/// allocator plumbing), or a placeholder for a stack without frames.
pub fn top_function(stack: &Stack) -> &str {
    stack
        .first_own_frame()
        .map_or("[unknown stack]", |f| f.function.as_str())
}
