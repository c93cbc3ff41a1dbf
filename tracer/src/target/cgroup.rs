//! cgroup v2: where the hierarchy is mounted, a directory's id and level (what the kernel-side
//! filter compares), the processes under it, and finding a container's cgroup by its id.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// `statfs` magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Why a cgroup or container could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "{0} is not a cgroup v2 directory (on a hybrid host use the cgroup2 mount, e.g. /sys/fs/cgroup/unified/...)"
    )]
    NotCgroup2(PathBuf),
    #[error("{0} is a file inside a cgroup, not a cgroup: give its directory ({1})")]
    FileInCgroup(PathBuf, PathBuf),
    #[error("no cgroup2 hierarchy is mounted (see /proc/mounts)")]
    NoCgroup2Mount,
    #[error("no running container matches id `{0}` (looked in /proc/*/cgroup)")]
    NoContainer(String),
    #[error("container id `{prefix}` is ambiguous: it matches {matches}; give more characters")]
    AmbiguousContainer { prefix: String, matches: String },
}

/// The cgroup2 mount point (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a
/// hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
    })
}

/// A cgroup v2 directory as the kernel-side filter sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub dir: PathBuf,
    /// `bpf_get_current_cgroup_id()` of processes directly in it: the directory's inode.
    pub id: u64,
    /// Depth below the root of the hierarchy (the root is 0).
    pub level: u32,
}

impl Cgroup {
    /// Checks that `dir` is a cgroup v2 directory and reads its id and level.
    pub fn open(dir: &Path) -> Result<Self, CgroupError> {
        let dir = fs::canonicalize(dir).map_err(|_| CgroupError::NotCgroup2(dir.to_path_buf()))?;
        let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| CgroupError::NotCgroup2(dir.clone()))?;
        // SAFETY: statfs is plain integers, for which all zeroes is a valid value.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a statfs for the kernel to fill.
        if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0
            || stat.f_type as i64 != CGROUP2_SUPER_MAGIC
        {
            return Err(CgroupError::NotCgroup2(dir));
        }
        if !dir.is_dir() {
            let parent = dir.parent().unwrap_or(&dir).to_path_buf();
            return Err(CgroupError::FileInCgroup(dir, parent));
        }
        let mount = cgroup2_mount().ok_or(CgroupError::NoCgroup2Mount)?;
        let relative = dir
            .strip_prefix(&mount)
            .map_err(|_| CgroupError::NotCgroup2(dir.clone()))?;
        let id = fs::metadata(&dir)
            .map_err(|_| CgroupError::NotCgroup2(dir.clone()))?
            .ino();
        Ok(Self {
            level: relative.components().count() as u32,
            dir,
            id,
        })
    }

    /// Every process in this cgroup and its descendants (the root cgroup lists kernel threads
    /// too).
    pub fn processes(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(dir) = dirs.pop() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                dirs.extend(
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }
}

/// The cgroup v2 path of a process (`0::/system.slice/x.scope`), relative to the mount.
pub fn process_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The hex container id in one cgroup path component, as runtimes name them:
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `libpod-<id>.scope`, `crio-<id>.scope`,
/// or a bare `<id>` (cgroupfs driver).
fn container_id(component: &str) -> Option<&str> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = name.rsplit('-').next().unwrap_or(name);
    (id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Finds the cgroup v2 directory of the container whose id starts with `prefix`, by scanning the
/// cgroups of running processes.
pub fn find_container(prefix: &str) -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount().ok_or(CgroupError::NoCgroup2Mount)?;
    let prefix_lower = prefix.to_ascii_lowercase();
    let mut found: Vec<(String, String)> = Vec::new(); // (id, cgroup path)
    let entries = fs::read_dir("/proc").map_err(|_| CgroupError::NoContainer(prefix.into()))?;
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(path) = process_cgroup(pid) else {
            continue;
        };
        let mut so_far = String::new();
        for component in path.split('/').filter(|c| !c.is_empty()) {
            so_far.push('/');
            so_far.push_str(component);
            if let Some(id) = container_id(component)
                && !prefix_lower.is_empty()
                && id.to_ascii_lowercase().starts_with(&prefix_lower)
                && !found.iter().any(|(_, p)| *p == so_far)
            {
                found.push((id.to_string(), so_far.clone()));
                break;
            }
        }
    }
    let mut ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.len() {
        0 => Err(CgroupError::NoContainer(prefix.to_string())),
        1 => {
            // The shortest path holding that id: the container's own cgroup.
            let (_, path) = found
                .iter()
                .min_by_key(|(_, p)| p.len())
                .expect("one match");
            Ok(mount.join(path.trim_start_matches('/')))
        }
        _ => Err(CgroupError::AmbiguousContainer {
            prefix: prefix.to_string(),
            matches: ids
                .iter()
                .map(|id| &id[..12.min(id.len())])
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_in_runtime_names() {
        let id = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b";
        assert_eq!(container_id(&format!("docker-{id}.scope")), Some(id));
        assert_eq!(
            container_id(&format!("cri-containerd-{id}.scope")),
            Some(id)
        );
        assert_eq!(container_id(&format!("libpod-{id}.scope")), Some(id));
        assert_eq!(container_id(id), Some(id));
        assert_eq!(container_id("system.slice"), None);
        assert_eq!(container_id("user-1000.slice"), None);
    }

    #[test]
    fn the_root_of_the_hierarchy_is_level_0() {
        if let Some(mount) = cgroup2_mount() {
            let root = Cgroup::open(&mount).unwrap();
            assert_eq!(root.level, 0);
            assert!(!root.processes().is_empty());
        }
        assert!(matches!(
            Cgroup::open(Path::new("/tmp")),
            Err(CgroupError::NotCgroup2(_))
        ));
    }
}
