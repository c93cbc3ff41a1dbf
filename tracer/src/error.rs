//! Errors a user can act on. Each message is one line that says what is wrong and what to do.

use std::path::PathBuf;

/// Why a trace could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("no process with pid {0} (check it with `ps -p {0}`; it may have exited)")]
    NoSuchProcess(u32),

    /// `why`: what refused it, from leaktracer's real capabilities (see
    /// `attach::probes::access_refusal`).
    #[error("cannot read the memory maps of pid {pid}: permission denied ({why})")]
    ProcessNotReadable { pid: u32, why: String },

    #[error("pid {0} exited while leaktracer was attaching to it")]
    ExitedDuringAttach(u32),

    #[error(
        "cannot open the objects pid {pid} maps (through /proc/{pid}/map_files): {reason} ({why})"
    )]
    ObjectsNotOpenable {
        pid: u32,
        reason: String,
        why: String,
    },

    #[error("cannot create the kernel map {map} with {entries} entries: {reason}; lower {flag}")]
    MapTooLarge {
        map: String,
        entries: u32,
        flag: &'static str,
        reason: String,
    },

    #[error(
        "the kernel maps would take up to {at_most} once full ({at_load} as soon as they are created), more than a quarter of this machine's {mem_total}: {largest}; lower {flags}, or pass --allow-large-maps to create them anyway"
    )]
    MapsBeyondMemory {
        at_most: String,
        at_load: String,
        mem_total: String,
        /// The largest maps, with the flags that size them.
        largest: String,
        /// The flags that size most of it, e.g. `--max-stacks`.
        flags: String,
    },

    #[error(
        "leaktracer needs root: the kernel attaches uprobes only with CAP_SYS_ADMIN (CAP_BPF and CAP_PERFMON alone are not enough; missing: {0}): run it with sudo"
    )]
    NotRoot(String),

    #[error(
        "this kernel lacks uprobe support ({0} is missing): leaktracer needs CONFIG_UPROBES, CONFIG_UPROBE_EVENTS and CONFIG_BPF_EVENTS"
    )]
    NoUprobes(PathBuf),

    #[error(
        "no allocator found in pid {pid}: none of its mapped objects defines both `malloc` and `free` (looked in: {searched})"
    )]
    NoAllocator { pid: u32, searched: String },

    #[error("cannot run `{command}`: {reason}")]
    Launch { command: String, reason: String },

    #[error("cannot load the eBPF programs: {0} (is this kernel 5.8 or newer with BPF enabled?)")]
    Load(String),

    #[error("cannot attach {program} to {path} at offset {offset:#x}: {reason}")]
    Attach {
        program: String,
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}
