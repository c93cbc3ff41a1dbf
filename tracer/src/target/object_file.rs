//! The bytes of the object files a trace reads (executables, libraries), read once and shared:
//! attaching to a process reads the same library for its allocator plan, its probe placement,
//! its interpreter and its unwind tables (CPython's libpython is ~30 MB, read four times
//! before). A file is known by its device, inode, size and modification time, so a path under
//! `/proc/PID/map_files` or `/proc/PID/root` shares the bytes of the same file read by another
//! path, and a replaced file is read afresh. Entries stay a few seconds after their last use.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How long an entry stays after its last use: the parts of one attach run within it.
const KEEP: Duration = Duration::from_secs(5);

/// Bytes kept at most: beyond it the least recently used entries go first.
const KEEP_BYTES: usize = 256 << 20;

/// A file's identity.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    inode: u64,
    size: u64,
    mtime_ns: i128,
}

struct Entry {
    identity: Identity,
    data: Arc<[u8]>,
    used: Instant,
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The contents of the file at `path` (following symlinks), shared with every other reader
/// of the same file in the last few seconds.
pub fn read(path: &Path) -> io::Result<Arc<[u8]>> {
    let meta = fs::metadata(path)?;
    let identity = Identity {
        dev: meta.dev(),
        inode: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    };
    let now = Instant::now();
    {
        let mut cache = CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.retain(|entry| now.duration_since(entry.used) < KEEP);
        if let Some(entry) = cache.iter_mut().find(|entry| entry.identity == identity) {
            entry.used = now;
            return Ok(entry.data.clone());
        }
    }
    // Read outside the lock: other threads' reads of other files go on meanwhile.
    let data: Arc<[u8]> = fs::read(path)?.into();
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !cache.iter().any(|entry| entry.identity == identity) {
        cache.push(Entry {
            identity,
            data: data.clone(),
            used: now,
        });
        cache.sort_by_key(|entry| std::cmp::Reverse(entry.used));
        let mut total = 0;
        cache.retain(|entry| {
            total += entry.data.len();
            total <= KEEP_BYTES || Arc::ptr_eq(&entry.data, &data)
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_paths_to_one_file_share_its_bytes_and_a_changed_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("lt-object-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lib.so");
        let link = dir.join("link.so");
        fs::write(&path, b"first").unwrap();
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let a = read(&path).unwrap();
        let b = read(&link).unwrap();
        assert_eq!(&*a, b"first");
        assert!(Arc::ptr_eq(&a, &b), "one read for both paths");
        fs::write(&path, b"second, longer").unwrap();
        assert_eq!(&*read(&link).unwrap(), b"second, longer");
        fs::remove_dir_all(&dir).unwrap();
    }
}
