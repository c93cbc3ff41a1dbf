//! How a traced process ended, as the kernel saw it: chosen by the OOM killer (`mark_victim`)
//! and its exit status (`sched_process_exit`), kept per tgid for userspace to look up.

/// One process's ending, under its tgid in the `ENDINGS` map. A field is 0 until its event
/// happened.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessEnding {
    /// `bpf_ktime_get_ns()` when the OOM killer chose the process (`mark_victim`).
    pub oom_ns: u64,
    /// `bpf_ktime_get_ns()` when its last thread exited (`sched_process_exit`, group dead).
    pub exit_ns: u64,
    /// `task_struct.exit_code` then: the wait status (see [`WaitStatus::decode`]).
    pub exit_code: u32,
    pub _pad: u32,
}

/// A wait status, decoded as `WIFEXITED`/`WIFSIGNALED` would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStatus {
    /// The exit code, when the process exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    pub core_dumped: bool,
}

impl WaitStatus {
    pub const fn decode(status: u32) -> Self {
        let signal = status & 0x7f;
        if signal == 0 {
            Self {
                code: Some(((status >> 8) & 0xff) as i32),
                signal: None,
                core_dumped: false,
            }
        } else {
            Self {
                code: None,
                signal: Some(signal as i32),
                core_dumped: status & 0x80 != 0,
            }
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data with explicit padding.
unsafe impl aya::Pod for ProcessEnding {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(WaitStatus::decode(3 << 8).code, Some(3));
        let killed = WaitStatus::decode(9);
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
        assert!(WaitStatus::decode(11 | 0x80).core_dumped);
    }
}
