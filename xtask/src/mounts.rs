//! Mounts under a directory, from `/proc/self/mountinfo`, and their removal: nothing a build or
//! a test mounts may outlive it (a mount left inside `target/` breaks the next `cargo clean`,
//! and a CI job that waits for its mounts to go).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// The mount points strictly below `dir` (not `dir` itself), deepest first.
pub fn mounts_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let table = fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    let mut under: Vec<PathBuf> = mount_points(&table)
        .into_iter()
        .filter(|point| point.starts_with(&dir) && *point != dir)
        .collect();
    under.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    under.dedup();
    Ok(under)
}

/// Lazily unmounts everything below `dir` (deepest first) and returns what was mounted there.
/// A `dir` that does not exist has nothing below it.
pub fn unmount_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(Vec::new());
    }
    let found = mounts_under(dir)?;
    for point in &found {
        // Lazy: a busy mount (a process still inside) is detached now and goes when it is free.
        let status = Command::new("umount")
            .arg("--lazy")
            .arg(point)
            .status()
            .context("cannot run umount")?;
        if !status.success() {
            bail!("umount --lazy {} failed ({status})", point.display());
        }
    }
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!("still mounted after unmounting: {}", list(&left));
    }
    Ok(found)
}

/// Mount points, comma-separated, for a message.
pub fn list(points: &[PathBuf]) -> String {
    points
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The mount points of a mountinfo table (its fifth field, octal escapes decoded).
fn mount_points(table: &str) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// The kernel writes space, tab, newline and backslash in a path as `\040`, `\011`, `\012`,
/// `\134`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_the_fifth_field_with_escapes_decoded() {
        let table = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 0:5 / /work/target/python-roots/sid.building/proc rw shared:50 - proc proc rw
99 22 0:6 / /work/my\\040dir/x\\134y rw - tmpfs nodev rw
";
        assert_eq!(
            mount_points(table),
            [
                PathBuf::from("/"),
                PathBuf::from("/work/target/python-roots/sid.building/proc"),
                PathBuf::from("/work/my dir/x\\y"),
            ]
        );
    }

    #[test]
    fn a_backslash_without_three_octal_digits_stays() {
        assert_eq!(unescape("a\\09b\\"), "a\\09b\\");
    }
}
