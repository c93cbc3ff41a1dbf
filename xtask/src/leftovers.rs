//! What a test run must not leave behind: processes started from the workspace and mounts under
//! it. Tests clean up after themselves; this is the net under them, run after every
//! `cargo xtask test`, because a process still holding the run's output open or a mount inside
//! the clone outlives the run and breaks whatever comes after it (CI's cleanup of the clone).

use std::fs;
use std::path::{Path, PathBuf};

/// Kills every process left running from `workspace` (its program under `workspace`, or its
/// root inside it, as a chroot'd interpreter's), then unmounts whatever is mounted under it.
/// Says what it found; finding nothing is the normal case and prints nothing.
pub fn sweep(workspace: &Path) {
    for (pid, what) in processes_from(workspace) {
        eprintln!("xtask: a test left process {pid} ({what}) running: killed");
        // SAFETY: kill(2) with a pid read from /proc and a valid signal; a process that exited
        // meanwhile makes it fail harmlessly (a reused pid within this instant is not ours to
        // worry about: the pid was read a moment ago and still names a process from the
        // workspace).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // Innermost first, so a mount inside another is gone before its parent.
    for mount in crate::mounts::mounts_under(workspace).unwrap_or_default() {
        eprintln!("xtask: {} was left mounted: unmounted", mount.display());
        crate::mounts::unmount_lazily(&mount);
    }
}

/// Processes (pid, what they run) whose executable or root lies under `workspace`, this one
/// and its ancestors excepted.
fn processes_from(workspace: &Path) -> Vec<(i32, String)> {
    let own = ancestors();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !own.contains(pid))
        .filter_map(|pid| {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let exe = fs::read_link(proc.join("exe")).ok();
            let root = fs::read_link(proc.join("root")).ok();
            let inside = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| p.starts_with(workspace));
            (inside(&exe) || inside(&root)).then(|| {
                let shown = exe.unwrap_or_default().display().to_string();
                (pid, shown)
            })
        })
        .collect()
}

/// This process and its ancestors (cargo, the shell that ran it).
fn ancestors() -> Vec<i32> {
    let mut pids = vec![std::process::id() as i32];
    while let Some(parent) = parent_of(*pids.last().unwrap()).filter(|&p| p > 1) {
        pids.push(parent);
    }
    pids
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses (which may hold spaces): state, then the parent.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_never_taken_for_a_leftover() {
        let own = ancestors();
        assert_eq!(own[0], std::process::id() as i32);
        // The test binary runs from the workspace's target/: it is its own ancestor, not a
        // leftover.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert!(
            processes_from(workspace)
                .iter()
                .all(|(pid, _)| !own.contains(pid))
        );
    }
}
