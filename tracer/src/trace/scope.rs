//! Which processes a trace covers, now and as they come and go.

use crate::target::{
    cgroup::Cgroup,
    launch::adopted,
    process::{descendants, is_alive, is_kernel_thread},
};

/// Which processes a trace covers.
pub enum Scope {
    /// One process (a pid, or the launched command), with its descendants if followed.
    /// `adopts_orphans`: leaktracer launched the command and is the subreaper of its orphans
    /// (see `target::launch::adopt_orphans`): a daemon the command double-forked is
    /// leaktracer's child, not the command's descendant, and is followed all the same.
    Process {
        root: u32,
        follow_children: bool,
        adopts_orphans: bool,
    },
    /// Every process in a cgroup v2 directory and below.
    Cgroup(Cgroup),
}

impl Scope {
    /// The processes to trace now.
    pub fn members(&self) -> Vec<u32> {
        match self {
            Scope::Process {
                root,
                follow_children,
                adopts_orphans,
            } => {
                let mut pids = vec![*root];
                if *follow_children {
                    pids.extend(descendants(*root));
                    if *adopts_orphans {
                        for orphan in adopted(*root) {
                            pids.push(orphan);
                            pids.extend(descendants(orphan));
                        }
                    }
                }
                pids
            }
            // Kernel threads (a whole-host cgroup lists them) have no user memory to trace.
            Scope::Cgroup(cgroup) => cgroup
                .processes()
                .into_iter()
                .filter(|pid| !is_kernel_thread(*pid))
                .collect(),
        }
    }

    /// The cgroup filter for the kernel side: the cgroup's id and level.
    pub fn kernel_filter(&self) -> Option<(u64, u32)> {
        match self {
            Scope::Cgroup(cgroup) => Some((cgroup.id, cgroup.level)),
            Scope::Process { .. } => None,
        }
    }

    /// The process the trace is of (a pid, or the launched command); none for a cgroup.
    pub fn root(&self) -> Option<u32> {
        match self {
            Scope::Process { root, .. } => Some(*root),
            Scope::Cgroup(_) => None,
        }
    }

    /// The cgroup directory traced, for the report.
    pub fn cgroup_dir(&self) -> Option<String> {
        match self {
            Scope::Cgroup(cgroup) => Some(cgroup.dir.display().to_string()),
            Scope::Process { .. } => None,
        }
    }

    /// True when nothing in scope runs any more. `root_exited` says whether the root process
    /// has ended (a launched child must be reaped to tell); `tracked` are the processes attached.
    /// Followed, the descendants count until they end too, those not attached yet included (a
    /// daemon whose parents exited before the first look).
    pub fn is_gone(&self, root_exited: impl FnOnce(u32) -> bool, tracked: &[u32]) -> bool {
        match self {
            Scope::Cgroup(cgroup) => !cgroup.exists(),
            Scope::Process {
                root,
                follow_children,
                ..
            } => {
                root_exited(*root)
                    && (!follow_children
                        || (tracked.iter().all(|p| !is_alive(*p))
                            && self.members().iter().all(|p| !is_alive(*p))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A whole-host cgroup (the root) lists kernel threads among its processes: they are not
    /// processes to trace. (Read from a copy of such a list: tracing the host is no test.)
    #[test]
    fn kernel_threads_are_left_out_of_a_cgroup_s_members() {
        assert_eq!(
            fs::read_to_string("/proc/2/comm").unwrap().trim(),
            "kthreadd",
            "pid 2 is the kernel's thread creator (on a host, not in a pid namespace)"
        );
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        fs::write(dir.path().join("cgroup.procs"), format!("2\n{me}\n")).unwrap();
        let scope = Scope::Cgroup(Cgroup {
            dir: dir.path().to_path_buf(),
            id: 0,
            level: 0,
        });
        assert_eq!(scope.members(), vec![me]);
    }
}
