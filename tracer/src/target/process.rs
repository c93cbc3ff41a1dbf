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
        Some(Self {
            pid,
            comm: comm.trim_end().to_string(),
            cmdline,
        })
    }
}

/// True when a process with this pid exists (a zombie counts as gone).
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command in parentheses, which may itself contain ')'.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Path of a file as the process sees it, reachable from here even when the process lives in
/// another mount namespace (a container).
pub fn path_in_root(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}
