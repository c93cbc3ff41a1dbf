//! Mounts under a directory, from `/proc/self/mountinfo`, and their removal: nothing a build or
//! a test mounts may outlive it (a mount left inside `target/` breaks the next `cargo clean`,
//! and a CI job that waits for its mounts to go).

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
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
        unmount_lazily(point);
    }
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!("still mounted after unmounting: {}", list(&left));
    }
    Ok(found)
}

/// Detaches the mount at `point` now (a busy one goes when it is free); one no longer mounted is
/// left alone.
pub fn unmount_lazily(point: &Path) {
    let Ok(path) = CString::new(point.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: umount2 with a NUL-terminated path and MNT_DETACH; it fails harmlessly if nothing
    // is mounted there any more.
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
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
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
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
        assert_eq!(unescape(r"/end\04"), r"/end\04");
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
    }
}
