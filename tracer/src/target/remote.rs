//! Reading another process's memory (through `/proc/PID/mem`, so a container's process reads
//! the same as any other): what the code objects of a Python target say.

use std::{fs::File, io, os::unix::fs::FileExt};

/// An open view of one process's memory.
pub struct RemoteMemory {
    file: File,
}

impl RemoteMemory {
    /// Opens the memory of `pid` (needs ptrace-read rights: root, or the same user).
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(Self {
            file: File::open(format!("/proc/{pid}/mem"))?,
        })
    }

    /// Fills `buf` from `address`; fails when any of it is unmapped.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, address)
    }

    /// `len` bytes from `address`.
    pub fn read_vec(&self, address: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read(address, &mut buf)?;
        Ok(buf)
    }

    pub fn read_u64(&self, address: u64) -> io::Result<u64> {
        let mut buf = [0; 8];
        self.read(address, &mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    pub fn read_u32(&self, address: u64) -> io::Result<u32> {
        let mut buf = [0; 4];
        self.read(address, &mut buf)?;
        Ok(u32::from_le_bytes(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let value: u64 = 0x1234_5678_9abc_def0;
        let memory = RemoteMemory::open(std::process::id()).unwrap();
        assert_eq!(memory.read_u64(&raw const value as u64).unwrap(), value);
        assert!(memory.read_u64(8).is_err());
    }
}
