//! How much memory a process may use and how much it uses: its cgroup's limit (v2 `memory.max`
//! or v1 `memory.limit_in_bytes`, the tightest along the path to the root), else the machine's
//! MemTotal; its resident set size; and what is resident of given ranges of its memory.

use std::{fs, io, os::unix::fs::FileExt, path::PathBuf};

/// v1 reports "no limit" as a huge page-rounded number.
const V1_UNLIMITED: u64 = 1 << 62;

/// The memory limit that applies to a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub limit_bytes: u64,
    /// Current use under that limit: the cgroup's usage, or MemTotal - MemAvailable.
    pub usage_bytes: u64,
    /// Where the limit comes from, e.g. `cgroup v2 memory.max of /sys/fs/cgroup/app`.
    pub source: String,
    /// The limiting cgroup's file counting its OOM kills (v2 `memory.events`, v1
    /// `memory.oom_control`, each with an `oom_kill N` line); none for MemTotal.
    pub oom_events: Option<PathBuf>,
}

impl MemoryLimit {
    /// Bytes left before the limit.
    pub fn headroom(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.usage_bytes)
    }
}

/// The resident set size of `pid` (VmRSS), if it still runs.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

const PAGE_SIZE: u64 = 4096;

/// `/proc/PID/pagemap` entry bit: the page is in memory.
const PAGE_PRESENT: u64 = 1 << 63;

/// Pagemap entries read at a time (64 KiB).
const PAGEMAP_CHUNK: u64 = 8192;

/// The bytes of each of `ranges` (start, end) of `pid`'s memory that are resident, from its
/// `/proc/PID/pagemap` (the present bit of each page, which needs no privilege beyond reading
/// the process's maps). Only reads: the process is not disturbed. Fails once it has exited.
pub fn resident_bytes(pid: u32, ranges: &[(u64, u64)]) -> io::Result<Vec<u64>> {
    let pagemap = fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut buffer = vec![0u8; (PAGEMAP_CHUNK * 8) as usize];
    let mut resident = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges {
        let (mut page, last) = (start / PAGE_SIZE, end.div_ceil(PAGE_SIZE));
        let mut present = 0;
        while page < last {
            let pages = (last - page).min(PAGEMAP_CHUNK);
            let entries = &mut buffer[..(pages * 8) as usize];
            pagemap.read_exact_at(entries, page * 8)?;
            present += present_pages(entries);
            page += pages;
        }
        resident.push(present * PAGE_SIZE);
    }
    Ok(resident)
}

/// Pages marked present among pagemap `entries` (8 bytes each, native order).
fn present_pages(entries: &[u8]) -> u64 {
    entries
        .chunks_exact(8)
        .filter(|entry| {
            u64::from_ne_bytes((*entry).try_into().expect("8 bytes")) & PAGE_PRESENT != 0
        })
        .count() as u64
}

/// The limit for `pid`: the tightest cgroup limit on its path, else MemTotal.
pub fn memory_limit(pid: u32) -> Option<MemoryLimit> {
    cgroup_limit(pid).or_else(machine_limit)
}

/// The machine's memory (`MemTotal` of /proc/meminfo).
pub fn mem_total() -> Option<u64> {
    machine_limit().map(|limit| limit.limit_bytes)
}

fn machine_limit() -> Option<MemoryLimit> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let value = meminfo.lines().find_map(|l| l.strip_prefix(name))?;
        let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:").unwrap_or(total);
    Some(MemoryLimit {
        limit_bytes: total,
        usage_bytes: total.saturating_sub(available),
        source: "MemTotal (no cgroup memory limit)".to_string(),
        oom_events: None,
    })
}

/// Mount points of the cgroup2 hierarchy and of the v1 memory controller.
fn cgroup_mounts() -> (Option<PathBuf>, Option<PathBuf>) {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut v2 = None;
    let mut v1_memory = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fs_type, options, ..] = fields[..] else {
            continue;
        };
        if fs_type == "cgroup2" && v2.is_none() {
            v2 = Some(PathBuf::from(mount_point));
        } else if fs_type == "cgroup" && options.split(',').any(|o| o == "memory") {
            v1_memory = Some(PathBuf::from(mount_point));
        }
    }
    (v2, v1_memory)
}

fn cgroup_limit(pid: u32) -> Option<MemoryLimit> {
    let membership = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (v2_mount, v1_mount) = cgroup_mounts();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (mount, limit_file, usage_file, events_file, kind) = if controllers.is_empty() {
            (
                v2_mount.clone(),
                "memory.max",
                "memory.current",
                "memory.events",
                "v2",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                v1_mount.clone(),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "memory.oom_control",
                "v1",
            )
        } else {
            continue;
        };
        let Some(mount) = mount else { continue };
        // The tightest limit from the process's cgroup up to the root.
        let mut dir = mount.join(path.trim_start_matches('/'));
        let mut best: Option<MemoryLimit> = None;
        loop {
            if let Some(limit) = read_limit(&dir.join(limit_file))
                && best.as_ref().is_none_or(|b| limit < b.limit_bytes)
            {
                best = Some(MemoryLimit {
                    limit_bytes: limit,
                    usage_bytes: read_number(&dir.join(usage_file)).unwrap_or(0),
                    source: format!("cgroup {kind} {limit_file} of {}", dir.display()),
                    oom_events: Some(dir.join(events_file)),
                });
            }
            if dir == mount || !dir.pop() {
                break;
            }
        }
        if best.is_some() {
            return best;
        }
    }
    None
}

/// The OOM kills a cgroup counted: the `oom_kill N` line of its `memory.events` (v2) or
/// `memory.oom_control` (v1).
pub fn oom_kills(events: &std::path::Path) -> Option<u64> {
    fs::read_to_string(events)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))?
        .trim()
        .parse()
        .ok()
}

/// A limit file's value; `None` for "max" (v2) or the v1 "unlimited" value.
fn read_limit(path: &std::path::Path) -> Option<u64> {
    let value = read_number(path)?;
    (value < V1_UNLIMITED).then_some(value)
}

fn read_number(path: &std::path::Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_limit_and_rss() {
        let pid = std::process::id();
        let limit = memory_limit(pid).expect("some limit applies");
        assert!(limit.limit_bytes > 0 && limit.usage_bytes <= limit.limit_bytes * 2);
        assert!(rss_bytes(pid).unwrap() > 0);
        assert_eq!(rss_bytes(u32::MAX), None);
    }

    #[test]
    fn present_pages_are_the_entries_with_the_present_bit() {
        let entries: Vec<u8> = [PAGE_PRESENT | 42, 0, 1 << 62, PAGE_PRESENT]
            .iter()
            .flat_map(|e| e.to_ne_bytes())
            .collect();
        // Swapped out (bit 62) is not resident.
        assert_eq!(present_pages(&entries), 2);
    }

    /// A mapping of this process, three of its eight pages touched: exactly three resident
    /// (the rest were never touched, so no page exists for them).
    #[test]
    fn resident_bytes_of_a_mapping_count_its_touched_pages() {
        let size = 8 * PAGE_SIZE as usize;
        // SAFETY: a fresh private anonymous mapping, unmapped below; nothing else uses it.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(start, libc::MAP_FAILED);
        for page in [0, 3, 7] {
            // SAFETY: inside the mapping just made.
            unsafe { std::ptr::write_volatile(start.cast::<u8>().add(page * 4096), 1) };
        }
        let start = start as u64;
        let resident = resident_bytes(
            std::process::id(),
            &[(start, start + size as u64), (start, start + PAGE_SIZE)],
        );
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(start as *mut libc::c_void, size) };
        assert_eq!(resident.unwrap(), [3 * PAGE_SIZE, PAGE_SIZE]);
        assert!(resident_bytes(u32::MAX, &[(0, PAGE_SIZE)]).is_err());
    }
}
