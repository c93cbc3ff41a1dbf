//! Cgroups made for one test and removed after it.

use std::{fs, path::PathBuf, process::Command, time::Duration};

/// A memory cgroup with a limit, for tests of the time-to-limit arithmetic: cgroup v2 when its
/// memory controller is available, else the v1 memory controller (hybrid hosts).
pub struct MemoryCgroup {
    pub dir: PathBuf,
    /// The limit as the kernel stored it (rounded to pages).
    pub limit_bytes: u64,
    /// The file counting the cgroup's OOM kills: v2 `memory.events`, v1 `memory.oom_control`.
    pub oom_events: PathBuf,
}

impl MemoryCgroup {
    pub fn create(name: &str, limit_bytes: u64) -> Self {
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        let mut v2 = None;
        let mut v1 = None;
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            if f[2] == "cgroup2" {
                v2 = Some(PathBuf::from(f[1]));
            } else if f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory") {
                v1 = Some(PathBuf::from(f[1]));
            }
        }
        let v2_memory = v2.filter(|m| {
            fs::read_to_string(m.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        let (root, limit_file, swap_file, events_file) = match (v2_memory, v1) {
            (Some(root), _) => {
                let _ = fs::write(root.join("cgroup.subtree_control"), "+memory");
                (root, "memory.max", "memory.swap.max", "memory.events")
            }
            (None, Some(root)) => (
                root,
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "memory.oom_control",
            ),
            (None, None) => panic!("no cgroup memory controller on this machine"),
        };
        let dir = root.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(limit_file), limit_bytes.to_string()).unwrap();
        // No swap beyond the limit (v2: none at all; v1: memory and swap together at the
        // limit), so a process over it is OOM-killed rather than swapped out. Absent without
        // swap accounting, and then nothing swaps past the limit anyway.
        let swap = if swap_file == "memory.swap.max" {
            0
        } else {
            limit_bytes
        };
        let _ = fs::write(dir.join(swap_file), swap.to_string());
        let limit_bytes = fs::read_to_string(dir.join(limit_file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let oom_events = dir.join(events_file);
        Self {
            dir,
            limit_bytes,
            oom_events,
        }
    }

    pub fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// The OOM kills the cgroup counted (its `oom_kill N` line).
    pub fn oom_kills(&self) -> u64 {
        fs::read_to_string(&self.oom_events)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no oom_kill line in {}", self.oom_events.display()))
    }

    /// A shell command line that moves itself into this cgroup, then execs `command`.
    pub fn enter_and_exec(&self, command: &str) -> String {
        format!(
            "echo $$ > {}/cgroup.procs && exec {command}",
            self.dir.display()
        )
    }
}

impl Drop for MemoryCgroup {
    /// Removes the cgroup, pass or fail: whatever still runs in it is killed first.
    fn drop(&mut self) {
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) with a plain pid and signal number.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A cgroup v2 directory for a test, removed at the end (after its processes are gone).
pub struct Cgroup2Dir(pub PathBuf);

impl Cgroup2Dir {
    pub fn create(name: &str) -> Self {
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        let mount = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount");
        let dir = mount.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap();
        Self(dir)
    }

    /// A shell command line that moves itself into this cgroup, then execs `command`.
    pub fn enter_and_exec(&self, command: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && exec {command}",
            self.0.display()
        ));
        cmd
    }
}

impl Drop for Cgroup2Dir {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
