//! Another process as `/proc` shows it: its code bytes, its mappings, its children, whether it
//! still runs.

use std::{fs, os::unix::fs::FileExt};

/// One byte of another process's memory (to see a uprobe's int3, 0xCC, at a function entry).
pub fn byte_at(pid: u32, address: u64) -> u8 {
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut byte = [0u8];
    mem.read_exact_at(&mut byte, address).unwrap();
    byte[0]
}

/// The first 16 bytes of a function in another process: a uprobe's int3 (0xCC) shows there,
/// at the entry or a few instructions in (leaktracer may place an entry probe past an
/// instruction the kernel would have to single-step).
pub fn code_at(pid: u32, address: u64) -> [u8; 16] {
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut bytes = [0u8; 16];
    mem.read_exact_at(&mut bytes, address).unwrap();
    bytes
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

/// Device and inode of the executable mapping of a file whose path ends with `suffix`, as
/// `/proc/PID/maps` shows it.
pub fn mapped_file(pid: u32, suffix: &str) -> Option<(u64, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || !f[5].ends_with(suffix) {
            return None;
        }
        let (major, minor) = f[3].split_once(':')?;
        let dev = libc::makedev(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        );
        Some((dev, f[4].parse().ok()?))
    })
}

/// The children of a process.
pub fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
