//! Parsing `/proc/PID/maps`.

use std::{fs, io};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `r-xp` and so on.
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    /// Device as `major:minor` (hex), as printed by the kernel.
    pub dev: String,
    pub inode: u64,
    /// The path as the process sees it; `None` for anonymous memory. `[heap]`-style names are kept.
    pub path: Option<String>,
}

impl Mapping {
    /// True when the mapping is backed by a file (not anonymous, not `[heap]`/`[vdso]`...).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    pub fn is_executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }

    /// The device as a number comparable with `st_dev`.
    pub fn dev_number(&self) -> Option<u64> {
        let (major, minor) = self.dev.split_once(':')?;
        let major = u64::from_str_radix(major, 16).ok()?;
        let minor = u64::from_str_radix(minor, 16).ok()?;
        Some(libc::makedev(major as u32, minor as u32))
    }

    /// The path without the kernel's ` (deleted)` suffix.
    pub fn clean_path(&self) -> Option<&str> {
        self.path
            .as_deref()
            .map(|p| p.strip_suffix(" (deleted)").unwrap_or(p))
    }
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> io::Result<Vec<Mapping>> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_maps(&text))
}

/// Parses the text of a maps file; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.to_string();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let dev = fields.next()?.to_string();
    let inode = fields.next()?.parse().ok()?;
    let path = fields
        .next()
        .map(str::trim_start)
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_anonymous_and_special_lines() {
        let text = "\
55d4c8a00000-55d4c8a02000 r-xp 00001000 fe:01 1234   /usr/bin/my prog
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0 
7ffd4b5e0000-7ffd4b601000 rw-p 00000000 00:00 0                          [stack]
7f1c2b000000-7f1c2b100000 r-xp 00028000 08:02 99 /lib/libc.so.6 (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].start, 0x55d4c8a00000);
        assert_eq!(maps[0].offset, 0x1000);
        assert_eq!(maps[0].path.as_deref(), Some("/usr/bin/my prog"));
        assert!(maps[0].is_file() && maps[0].is_executable());
        assert_eq!(maps[1].path, None);
        assert!(!maps[1].is_file());
        assert!(!maps[2].is_file());
        assert_eq!(maps[3].clean_path(), Some("/lib/libc.so.6"));
        assert_eq!(maps[3].dev_number(), Some(libc::makedev(8, 2)));
    }
}
