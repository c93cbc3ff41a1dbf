//! Facts about a live process read from `/proc/PID`.

use std::{fs, path::PathBuf};

/// What a report says about a traced process.
#[derive(Clone, Debug, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Short command name (`/proc/PID/comm`).
    pub comm: String,
    /// Full command line, when readable.
    pub cmdline: Vec<String>,
    /// Its pid in each pid namespace, outermost (the host's) first (`NSpid`).
    pub nspid: Vec<u32>,
    /// Its cgroup v2 path.
    pub cgroup: Option<String>,
}

impl ProcessInfo {
    /// Reads what `/proc` has for `pid`; `None` when the process does not exist.
    pub fn read(pid: u32) -> Option<Self> {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|arg| !arg.is_empty())
                    .map(|arg| String::from_utf8_lossy(arg).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let nspid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
                Some(
                    line.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect(),
                )
            })
            .unwrap_or_else(|| vec![pid]);
        Some(Self {
            pid,
            comm: comm.trim_end().to_string(),
            cmdline,
            nspid,
            cgroup: crate::target::cgroup::process_cgroup(pid),
        })
    }
}

/// What a process uses right now, as `/proc/PID` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// Resident set size.
    pub rss_bytes: u64,
    /// Entries of `/proc/PID/fd`.
    pub open_fds: u64,
    /// `Threads:` of `/proc/PID/status`.
    pub threads: u64,
}

impl ProcessUsage {
    /// `None` once the process is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some(Self {
            rss_bytes: field("VmRSS:").unwrap_or(0) * 1024,
            open_fds: fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
            threads: field("Threads:").unwrap_or(0),
        })
    }
}

/// Field `index` of `/proc/PID/stat` counted from the state (0), after the command in
/// parentheses, which may itself contain ')': state, ppid, pgrp, session, tty_nr, tpgid,
/// flags...
fn stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(index).map(str::to_string)
}

/// The parent of a process, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    stat_field(pid, 1)?.parse().ok()
}

/// The children of `parent` (zombies included): each of its threads' `children` file, which
/// lists only the children that thread forked or adopted.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(threads) = fs::read_dir(format!("/proc/{parent}/task")) else {
        return Vec::new();
    };
    threads
        .filter_map(Result::ok)
        .filter_map(|thread| fs::read_to_string(thread.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Every live descendant of `root` (children, their children, ...).
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        index += 1;
    }
    found.remove(0);
    found
}

/// `PF_KTHREAD` in the flags of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// True for a kernel thread: it has no user memory, no allocator, nothing to trace.
pub fn is_kernel_thread(pid: u32) -> bool {
    stat_field(pid, 6)
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// True when a process with this pid exists (a zombie counts as gone).
pub fn is_alive(pid: u32) -> bool {
    state_of(pid).is_some_and(|state| state != 'Z' && state != 'X')
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T` stopped, `t` traced, `Z`...); `None`
/// once the process is gone.
pub fn state_of(pid: u32) -> Option<char> {
    stat_field(pid, 0)?.chars().next()
}

/// Path of a file as the process sees it, reachable from here even when the process lives in
/// another mount namespace (a container).
pub fn path_in_root(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_descendants() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(std::process::id());
        let direct = children(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()));
        assert!(direct.contains(&child.id()), "{direct:?}");
        let me = ProcessInfo::read(std::process::id()).unwrap();
        assert_eq!(me.nspid.first(), Some(&std::process::id()));
    }

    #[test]
    fn kernel_threads_are_told_from_processes() {
        assert_eq!(
            fs::read_to_string("/proc/2/comm").unwrap().trim(),
            "kthreadd",
            "pid 2 is the kernel's thread creator (on a host, not in a pid namespace)"
        );
        assert!(is_kernel_thread(2));
        assert!(!is_kernel_thread(std::process::id()));
        assert!(!is_kernel_thread(u32::MAX), "no such pid");
    }
}
