//! How the traced processes end: each one's memory limit (re-read while it runs, and when it
//! moves to another cgroup), its cgroup's OOM kills, its exit status and the OOM killer's mark
//! from the kernel (`ENDINGS`); and how the launched command or the `--pid` target ended.

use std::{collections::BTreeMap, path::PathBuf};

use tracer_common::ending::{ProcessEnding, WaitStatus};

use crate::{
    report::TargetExit,
    target::{
        launch::{ChildExit, signal_name},
        memory::{MemoryLimit, memory_limit, oom_kills},
        process::is_alive,
    },
};

/// The ends of the traced processes, watched from when each was attached.
#[derive(Default)]
pub struct Endings {
    watched: BTreeMap<u32, Watch>,
    /// The memory limit of the (first) target, last read while it was alive.
    limit: Option<MemoryLimit>,
    /// How the launched command or the --pid target ended, once it has.
    target_exit: Option<TargetExit>,
}

/// One traced process, watched for its end.
struct Watch {
    /// When it was attached (CLOCK_MONOTONIC ns): kernel endings from before are another
    /// process's under the same pid.
    since_ns: u64,
    /// Its memory limit, last read while it ran.
    limit: Option<MemoryLimit>,
    /// Its `/proc/PID/cgroup` when the limit was read: a move to another cgroup re-reads it.
    membership: Option<String>,
    /// Its limiting cgroup's OOM-kill counter file, and the count when it was attached (or
    /// when it moved into that cgroup).
    oom_baseline: Option<(PathBuf, u64)>,
    /// How it ended, once it has.
    exit: Option<TargetExit>,
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

impl Endings {
    /// Watches `pid`, attached now: its limit and its cgroup's OOM kills from here on.
    pub fn watch(&mut self, pid: u32) {
        // Membership before the limit: a process that moves between the two reads (a launched
        // `sh -c` joining a cgroup) then reads as moved at the next poll, which re-reads the
        // limit. The other order kept the old limit for good.
        let membership = membership(pid);
        let limit = memory_limit(pid);
        if self.limit.is_none() {
            self.limit = limit.clone();
        }
        let oom_baseline = limit.as_ref().and_then(oom_baseline);
        self.watched.insert(
            pid,
            Watch {
                since_ns: crate::collect::monotonic_ns(),
                limit,
                membership,
                oom_baseline,
                exit: None,
            },
        );
    }

    /// Re-reads the memory limit of every watched process still alive (so each one's last
    /// value is the limit in force when it ended); the report's is the first alive one's.
    /// `ending_of` reads a process's record in the kernel's `ENDINGS`.
    pub fn refresh_limits(&mut self, ending_of: impl Fn(u32) -> Option<ProcessEnding>) {
        let mut first = None;
        for (pid, watch) in self.watched.iter_mut() {
            if watch.exit.is_some() || !is_alive(*pid) {
                continue;
            }
            let Some(limit) = memory_limit(*pid) else {
                continue;
            };
            // A process on its way out has left its cgroups (the kernel's cgroup_exit, after
            // the OOM mark and the exit the ending probes record, before it turns zombie):
            // read now, it is under no limit, and the one that killed it would be lost.
            let since_watched = |ns: u64| ns != 0 && ns >= watch.since_ns;
            if ending_of(*pid).is_some_and(|e| since_watched(e.exit_ns) || since_watched(e.oom_ns))
                || !is_alive(*pid)
            {
                continue;
            }
            first.get_or_insert_with(|| limit.clone());
            // It moved under another limit (a launched `sh -c` joining a cgroup): that
            // cgroup's OOM kills count from now.
            if watch.oom_baseline.as_ref().map(|b| &b.0) != limit.oom_events.as_ref() {
                watch.oom_baseline = oom_baseline(&limit);
            }
            watch.limit = Some(limit);
        }
        if let Some(limit) = first {
            self.limit = Some(limit);
        }
    }

    /// Re-reads the limit of every watched process that moved to another cgroup since the
    /// last look (a launched `sh -c` joining one before it execs the program), so a process
    /// killed soon after is reported under the limit that killed it.
    pub fn notice_cgroup_moves(&mut self, ending_of: impl Fn(u32) -> Option<ProcessEnding>) {
        let mut moved = false;
        for (pid, watch) in self.watched.iter_mut() {
            if watch.exit.is_some() {
                continue;
            }
            let now = membership(*pid);
            if now.is_none() || now == watch.membership {
                continue;
            }
            watch.membership = now;
            moved = true;
        }
        if moved {
            self.refresh_limits(ending_of);
        }
    }

    /// Notes how each watched process that ended since the last look ended. `elapsed_secs`
    /// is the trace's time now; `marks_victims` says the kernel marks the OOM killer's victims
    /// (it has the BTF for it).
    pub fn settle(
        &mut self,
        elapsed_secs: f64,
        marks_victims: bool,
        ending_of: impl Fn(u32) -> Option<ProcessEnding>,
    ) {
        let now_ns = crate::collect::monotonic_ns();
        let at_secs = |ns: u64| elapsed_secs - now_ns.saturating_sub(ns) as f64 / 1e9;
        for (pid, watch) in self.watched.iter_mut() {
            if watch.exit.is_some() || is_alive(*pid) {
                continue;
            }
            let cgroup_oom_kills = watch
                .oom_baseline
                .as_ref()
                .and_then(|(events, start)| Some(oom_kills(events)?.saturating_sub(*start)));
            let exit = exit_of(
                *pid,
                watch,
                ending_of(*pid),
                cgroup_oom_kills,
                marks_victims,
                &at_secs,
            );
            watch.exit = Some(exit);
        }
    }

    /// Settles how the trace's own target ended (`root`: the launched command or the --pid
    /// target): the launched command's wait status (`waited`) is the authority, the kernel's
    /// ending adds the OOM killer, the limit and the time. A --pid target has only the latter.
    pub fn settle_target(&mut self, root: Option<u32>, waited: Option<(u32, ChildExit)>) {
        self.target_exit = root.and_then(|pid| {
            let mut exit = self.exit(pid).cloned();
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
    }

    /// How `pid` ended, once it has.
    pub fn exit(&self, pid: u32) -> Option<&TargetExit> {
        self.watched.get(&pid)?.exit.as_ref()
    }

    /// How the trace's own target ended ([`Endings::settle_target`]).
    pub fn target_exit(&self) -> Option<&TargetExit> {
        self.target_exit.as_ref()
    }

    /// The (first) target's memory limit, last read while it was alive.
    pub fn limit(&self) -> Option<&MemoryLimit> {
        self.limit.as_ref()
    }
}

/// How `pid`, watched as `watch`, ended: from its kernel `ending` (when it is from after the
/// watch began) and its cgroup's OOM kills since; `at_secs` turns a kernel time into seconds
/// into the trace.
fn exit_of(
    pid: u32,
    watch: &Watch,
    ending: Option<ProcessEnding>,
    cgroup_oom_kills: Option<u64>,
    marks_victims: bool,
    at_secs: &dyn Fn(u64) -> f64,
) -> TargetExit {
    let exited = ending.filter(|e| e.exit_ns >= watch.since_ns && e.exit_ns != 0);
    let marked = ending.filter(|e| e.oom_ns >= watch.since_ns && e.oom_ns != 0);
    let status = exited.map(|e| WaitStatus::decode(e.exit_code));
    let limit = watch.limit.as_ref();
    let signal = status.and_then(|s| s.signal);
    // Without the kernel's mark (no BTF), a SIGKILL while its cgroup counted an OOM kill is
    // the OOM killer's.
    let oom_killed = marked.is_some()
        || (!marks_victims
            && signal == Some(libc::SIGKILL)
            && cgroup_oom_kills.is_some_and(|n| n > 0));
    TargetExit {
        pid,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(since_ns: u64) -> Watch {
        Watch {
            since_ns,
            limit: Some(MemoryLimit {
                limit_bytes: 64 << 20,
                usage_bytes: 0,
                source: "cgroup v1 memory.limit_in_bytes of /sys/fs/cgroup/memory/app".into(),
                oom_events: None,
            }),
            membership: None,
            oom_baseline: None,
            exit: None,
        }
    }

    /// Seconds into the trace of a kernel time: the trace began at 1000 ns here.
    fn at_secs(ns: u64) -> f64 {
        (ns - 1000) as f64 / 1e9
    }

    #[test]
    fn an_oom_kill_marked_by_the_kernel_is_reported_with_its_limit_and_time() {
        let ending = ProcessEnding {
            oom_ns: 2_000_001_000,
            exit_ns: 2_500_001_000,
            exit_code: libc::SIGKILL as u32,
            _pad: 0,
        };
        let exit = exit_of(42, &watch(1000), Some(ending), Some(1), true, &at_secs);
        assert_eq!(exit.pid, 42);
        assert!(exit.oom_killed);
        assert_eq!(exit.signal.as_deref(), Some("SIGKILL"));
        assert_eq!(exit.code, None);
        assert_eq!(exit.oom_at_secs, Some(2.0));
        assert_eq!(exit.exited_at_secs, Some(2.5));
        assert_eq!(exit.limit_bytes, Some(64 << 20));
        assert_eq!(
            exit.limit_source.as_deref(),
            Some("cgroup v1 memory.limit_in_bytes of /sys/fs/cgroup/memory/app")
        );
        assert_eq!(exit.cgroup_oom_kills, Some(1));
    }

    #[test]
    fn without_the_kernel_s_mark_a_sigkill_is_the_oom_killer_s_only_if_its_cgroup_counted_one() {
        let killed = ProcessEnding {
            oom_ns: 0,
            exit_ns: 5000,
            exit_code: libc::SIGKILL as u32,
            _pad: 0,
        };
        let guessed = |kills, marks| exit_of(1, &watch(1000), Some(killed), kills, marks, &at_secs);
        assert!(guessed(Some(1), false).oom_killed);
        assert!(!guessed(Some(0), false).oom_killed);
        assert!(!guessed(None, false).oom_killed);
        // The kernel marks victims and did not mark this one.
        assert!(!guessed(Some(1), true).oom_killed);
    }

    #[test]
    fn an_ending_from_before_the_watch_is_another_process_s() {
        let old = ProcessEnding {
            oom_ns: 500,
            exit_ns: 600,
            exit_code: 3 << 8,
            _pad: 0,
        };
        let exit = exit_of(7, &watch(1000), Some(old), None, true, &at_secs);
        assert_eq!((exit.code, exit.signal), (None, None));
        assert!(!exit.oom_killed);
        assert_eq!((exit.oom_at_secs, exit.exited_at_secs), (None, None));
        let fresh = ProcessEnding {
            exit_ns: 2000,
            ..old
        };
        assert_eq!(
            exit_of(7, &watch(1000), Some(fresh), None, true, &at_secs).code,
            Some(3)
        );
    }

    #[test]
    fn the_launched_command_s_wait_status_is_the_authority_on_its_end() {
        let mut endings = Endings::default();
        let mut seen = watch(1000);
        seen.exit = Some(TargetExit {
            pid: 9,
            code: Some(1),
            oom_killed: true,
            limit_bytes: Some(64 << 20),
            ..TargetExit::default()
        });
        endings.watched.insert(9, seen);
        let waited = ChildExit {
            code: None,
            signal: Some(libc::SIGKILL),
            core_dumped: false,
        };
        endings.settle_target(Some(9), Some((9, waited)));
        let exit = endings.target_exit().unwrap();
        assert_eq!((exit.code, exit.signal.as_deref()), (None, Some("SIGKILL")));
        // What only the kernel knows stays.
        assert!(exit.oom_killed);
        assert_eq!(exit.limit_bytes, Some(64 << 20));

        // Ended before the kernel saw it: the wait status alone.
        let mut endings = Endings::default();
        endings.settle_target(Some(11), Some((11, ChildExit::from_wait_status(2 << 8))));
        let exit = endings.target_exit().unwrap();
        assert_eq!((exit.pid, exit.code), (11, Some(2)));
        assert!(!exit.oom_killed);

        // A cgroup has no target of its own.
        endings.settle_target(None, None);
        assert!(endings.target_exit().is_none());
    }
}
