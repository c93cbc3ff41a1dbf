//! Where each traced process's picture froze: the kernel stops recording a process, and stops
//! it, at CPython's `Py_FinalizeEx` (before the teardown frees everything) or, with
//! `--reachability`, at `exit()` (so it is scanned before its teardown). This keeps when and
//! where, for the report, and lets such a process go on.

use std::{collections::BTreeMap, time::Duration};

use crate::target::process::state_of;

/// How long a process the kernel stopped at exit() may take to reach that stop.
pub const EXIT_STOP_WAIT: Duration = Duration::from_secs(1);

/// The traced processes whose picture froze.
#[derive(Default)]
pub struct Freezes {
    frozen: BTreeMap<u32, Freeze>,
}

/// When and where one process's picture froze.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Freeze {
    /// Seconds into the trace.
    pub at_secs: f64,
    /// `Py_FinalizeEx` or `exit`; none when the kernel froze it for neither reason here.
    pub at: Option<&'static str>,
}

impl Freezes {
    /// Of `pids`, those the kernel froze (`is_frozen`) that were not noted yet.
    pub fn new_ones(
        &self,
        pids: impl IntoIterator<Item = u32>,
        is_frozen: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        pids.into_iter()
            .filter(|pid| !self.frozen.contains_key(pid) && is_frozen(*pid))
            .collect()
    }

    /// Notes that `pid`'s picture froze `at_secs` into the trace, `at` where.
    pub fn note(&mut self, pid: u32, at_secs: f64, at: Option<&'static str>) {
        self.frozen.insert(pid, Freeze { at_secs, at });
    }

    /// When and where `pid`'s picture froze, if it did.
    pub fn of(&self, pid: u32) -> Option<Freeze> {
        self.frozen.get(&pid).copied()
    }
}

/// Sends SIGCONT to `pid`.
pub fn continue_process(pid: u32) {
    // SAFETY: kill(2) with a plain pid and signal number.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// Waits (at most `wait`) until `pid` is in a group stop (`T` in /proc/PID/stat), or gone.
pub fn wait_group_stopped(pid: u32, wait: Duration) {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if matches!(state_of(pid), Some('T') | None) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn a_freeze_is_noted_once_with_when_and_where() {
        let mut freezes = Freezes::default();
        let frozen_by_the_kernel = |pid: u32| pid == 2 || pid == 3;
        assert_eq!(
            freezes.new_ones([1, 2, 3], frozen_by_the_kernel),
            vec![2, 3]
        );
        freezes.note(2, 1.5, Some("Py_FinalizeEx"));
        freezes.note(3, 2.0, None);
        assert_eq!(
            freezes.new_ones([1, 2, 3], frozen_by_the_kernel),
            Vec::<u32>::new()
        );
        assert_eq!(
            freezes.of(2),
            Some(Freeze {
                at_secs: 1.5,
                at: Some("Py_FinalizeEx")
            })
        );
        assert_eq!(freezes.of(3).map(|f| f.at), Some(None));
        assert_eq!(freezes.of(1), None);
    }

    /// A process stopped as the kernel stops it at exit() is waited for, then goes on.
    #[test]
    fn a_stopped_process_is_waited_for_and_continued() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        wait_group_stopped(pid, Duration::from_secs(10));
        assert_eq!(state_of(pid), Some('T'));
        continue_process(pid);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while state_of(pid) == Some('T') && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            matches!(state_of(pid), Some('S' | 'R')),
            "{:?}",
            state_of(pid)
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // Gone: nothing to wait for.
        wait_group_stopped(pid, Duration::from_secs(10));
        assert_eq!(state_of(pid), None);
    }
}
