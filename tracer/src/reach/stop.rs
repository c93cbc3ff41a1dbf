//! Stopping every thread of a live process for a scan, and letting it go.
//!
//! `PTRACE_SEIZE` + `PTRACE_INTERRUPT` stops a thread without sending it a signal, and
//! without `PTRACE_O_EXITKILL` the kernel detaches and resumes the target if leaktracer dies
//! mid-scan. Threads can be created while others are being stopped, so the thread list is read
//! again until a pass finds none new. Every ptrace call of one freeze must come from the thread
//! that seized, so a freeze never crosses threads.

use std::{
    collections::BTreeSet,
    fs, io,
    time::{Duration, Instant},
};

use crate::arch;

/// Why a process could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// Another tracer (gdb, strace) holds it: the scan must do without stopping it.
    #[error("pid {pid} is already traced by pid {tracer} ({comm})")]
    AlreadyTraced { pid: u32, tracer: u32, comm: String },
    #[error("cannot stop thread {tid} of pid {pid} with ptrace: {source}")]
    Seize {
        pid: u32,
        tid: u32,
        source: io::Error,
    },
    #[error("threads of pid {pid} did not stop within {waited:?}")]
    Slow { pid: u32, waited: Duration },
    #[error("pid {0} exited")]
    Exited(u32),
    #[error("cannot list the threads of pid {pid}: {source}")]
    Threads { pid: u32, source: io::Error },
}

/// One stopped thread and its registers.
pub struct StoppedThread {
    pub tid: u32,
    /// Its stack pointer.
    pub sp: u64,
    /// Every general-purpose register, the thread pointer included (see [`arch::general`]).
    pub general: Vec<u64>,
    /// The 8-byte lanes of its vector registers that are not zero (see [`arch::vector_words`]):
    /// compilers keep pointers there too.
    pub vector: Vec<u64>,
    /// A signal that arrived while it was being stopped, delivered again at release.
    pending_signal: i32,
}

/// Every thread of a process stopped; they run again when this is dropped.
pub struct Frozen {
    pub pid: u32,
    pub threads: Vec<StoppedThread>,
}

/// How long a thread that missed the deadline gets to reach its stop so it can be released.
const STRAGGLER_GRACE: Duration = Duration::from_secs(2);

impl Frozen {
    /// Stops every thread of `pid`, giving up at `deadline`.
    pub fn stop(pid: u32, deadline: Instant) -> Result<Self, StopError> {
        if let Some((tracer, comm)) = tracer_of(pid) {
            return Err(StopError::AlreadyTraced { pid, tracer, comm });
        }
        let mut frozen = Frozen {
            pid,
            threads: Vec::new(),
        };
        let started = Instant::now();
        let mut seized: BTreeSet<u32> = BTreeSet::new();
        loop {
            let tids = threads_of(pid).map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => StopError::Exited(pid),
                _ => StopError::Threads { pid, source },
            })?;
            let fresh: Vec<u32> = tids
                .into_iter()
                .filter(|tid| !seized.contains(tid))
                .collect();
            if fresh.is_empty() {
                break;
            }
            let mut stopping = Vec::new();
            for tid in fresh {
                seized.insert(tid);
                // SAFETY: plain ptrace requests on a thread id; no memory is passed.
                let seize = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
                if seize != 0 {
                    let source = io::Error::last_os_error();
                    if source.raw_os_error() == Some(libc::ESRCH) {
                        continue; // exited since the listing
                    }
                    if let Some((tracer, comm)) = tracer_of(pid) {
                        return Err(StopError::AlreadyTraced { pid, tracer, comm });
                    }
                    return Err(StopError::Seize { pid, tid, source });
                }
                // SAFETY: as above; the thread is ours to interrupt now.
                unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
                stopping.push(tid);
            }
            for (index, tid) in stopping.iter().enumerate() {
                match wait_stopped(*tid, deadline) {
                    Waited::Stopped(pending_signal) => {
                        let thread = read_registers(*tid, pending_signal);
                        frozen.threads.push(thread);
                    }
                    Waited::Gone => {}
                    Waited::Late => {
                        // The threads already stopped go first: the cap is over for them.
                        for thread in frozen.threads.drain(..) {
                            release(thread.tid, thread.pending_signal);
                        }
                        // The rest of this batch is seized but maybe not stopped yet, and a
                        // running tracee cannot be detached: give each a last grace to reach
                        // its stop, then release it.
                        let grace = Instant::now() + STRAGGLER_GRACE;
                        for tid in &stopping[index..] {
                            if let Waited::Stopped(signal) = wait_stopped(*tid, grace) {
                                release(*tid, signal);
                            }
                        }
                        return Err(StopError::Slow {
                            pid,
                            waited: started.elapsed(),
                        });
                    }
                }
            }
        }
        if frozen.threads.is_empty() {
            return Err(StopError::Exited(pid));
        }
        Ok(frozen)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for thread in &self.threads {
            release(thread.tid, thread.pending_signal);
        }
    }
}

fn release(tid: u32, signal: i32) {
    // SAFETY: PTRACE_DETACH of a thread we seized, re-delivering the signal it stopped with.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, signal as libc::c_long) };
}

enum Waited {
    /// Stopped, with the signal it was about to take (0 for the interrupt's own stop).
    Stopped(i32),
    Gone,
    Late,
}

fn wait_stopped(tid: u32, deadline: Instant) -> Waited {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a tracee, writing only `status`.
        let got = unsafe { libc::waitpid(tid as i32, &mut status, libc::__WALL | libc::WNOHANG) };
        if got == tid as i32 {
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return Waited::Gone;
            }
            if libc::WIFSTOPPED(status) {
                let event = status >> 16;
                let signal = libc::WSTOPSIG(status);
                // PTRACE_EVENT_STOP: the interrupt (or a group stop); anything else is a
                // signal about to be delivered, which it gets back at release.
                let pending = if event == libc::PTRACE_EVENT_STOP || signal == libc::SIGTRAP {
                    0
                } else {
                    signal
                };
                return Waited::Stopped(pending);
            }
        } else if got < 0 {
            return Waited::Gone;
        }
        if Instant::now() >= deadline {
            return Waited::Late;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn read_registers(tid: u32, pending_signal: i32) -> StoppedThread {
    let mut general = vec![0u64; arch::general::COUNT];
    let got = regset(tid, arch::GENERAL_REGSET, bytemuck_u64(&mut general));
    general.truncate(got / 8);
    let sp = general.get(arch::general::SP).copied().unwrap_or(0);
    let mut vector = vec![0u64; arch::VECTOR_REGSET_BYTES / 8];
    let got = regset(tid, arch::VECTOR_REGSET, bytemuck_u64(&mut vector));
    vector.truncate(got / 8);
    StoppedThread {
        tid,
        sp,
        general,
        vector: arch::vector_words(&vector),
        pending_signal,
    }
}

fn bytemuck_u64(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no invalid bit patterns and a stricter alignment than u8.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
}

/// PTRACE_GETREGSET into `buf`: the bytes the kernel filled (0 on failure).
fn regset(tid: u32, kind: usize, buf: &mut [u8]) -> usize {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the kernel writes at most iov_len bytes into buf and updates iov_len.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, kind, &mut iov) };
    if rc == 0 {
        iov.iov_len.min(buf.len())
    } else {
        0
    }
}

/// The process's threads, from `/proc/PID/task`.
fn threads_of(pid: u32) -> io::Result<Vec<u32>> {
    let mut tids = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// The pid and command name of whoever ptraces `pid`, when anyone does.
pub fn tracer_of(pid: u32) -> Option<(u32, String)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tracer: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    (tracer != 0 && tracer != std::process::id()).then(|| {
        let comm = fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
        (tracer, comm.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    fn state_of(pid: u32) -> String {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn stops_reads_registers_and_releases_a_child() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(50));
        {
            let frozen = Frozen::stop(pid, Instant::now() + Duration::from_secs(2)).unwrap();
            assert_eq!(frozen.threads.len(), 1);
            assert!(frozen.threads[0].sp != 0);
            assert_eq!(frozen.threads[0].general.len(), arch::general::COUNT);
            assert!(state_of(pid).starts_with('t'), "{}", state_of(pid));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(state_of(pid).starts_with('S'), "{}", state_of(pid));
        assert_eq!(tracer_of(pid), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
