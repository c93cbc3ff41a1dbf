//! The report's schema: what a trace produces, as written to JSON and read back by `report`
//! and `diff`.
//!
//! The JSON keys are a contract other tools read: extend, never rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    growth::{Growth, Thresholds},
    runtimes::RuntimeId,
};

/// A finished trace.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub target: Target,
    pub duration_secs: f64,
    pub totals: Totals,
    /// Sorted by outstanding bytes, largest first.
    pub stacks: Vec<Stack>,
    /// The object that served `malloc`, per process.
    #[serde(default)]
    pub allocators: Vec<AllocatorUsed>,
    /// Every traced process: host pid, pid in its own namespace, command, cgroup, allocator.
    #[serde(default)]
    pub processes: Vec<ProcessEntry>,
    /// Why the trace ended: `duration`, `interrupted` or `target exited`.
    #[serde(default)]
    pub end_reason: String,
    /// Whole-process samples, one per interval.
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
    /// Is the process leaking, how fast, and when does it reach its memory limit.
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// The classification thresholds the growth figures were computed with.
    #[serde(default)]
    pub thresholds: Option<Thresholds>,
    /// `--min-age`: only allocations older than this were counted.
    #[serde(default)]
    pub min_age_secs: Option<f64>,
    /// `--sample-bytes`: heap figures are estimates from one allocation sampled per this many
    /// bytes on average.
    #[serde(default)]
    pub sample_bytes: Option<u64>,
    /// The mapped objects the stacks' addresses fall in, with build ids (for pprof).
    #[serde(default)]
    pub mappings: Vec<ModuleMapping>,
    /// How the launched command or the `--pid` target ended, when it ended during the trace;
    /// null otherwise (each process's own is in `processes[].exit`).
    #[serde(default)]
    pub target_exit: Option<TargetExit>,
    /// Traced processes that exec'd another program during the trace: what they held before
    /// the exec was retired with their old image (never a leak of the new one).
    #[serde(default)]
    pub execs: Vec<ExecEvent>,
    /// How the stacks were walked (`--unwind cfi`): the tables the kernel had, and how the
    /// recorded allocations' stacks ended. Null with `--unwind fp`.
    #[serde(default)]
    pub unwind: Option<UnwindStats>,
    /// Outstanding memory by function, inclusive: every function (past allocator plumbing)
    /// with the stacks it is on, most bytes first. Answers "which handler keeps it".
    #[serde(default)]
    pub functions: Vec<FunctionTotal>,
    /// `--reachability`: how the target's memory was scanned for pointers to its outstanding
    /// blocks, and the four classes summed. Null without the flag.
    #[serde(default)]
    pub reachability: Option<Reachability>,
    /// How the probes were attached and detached, and how long it took. Null in reports
    /// written by older versions.
    #[serde(default)]
    pub attach: Option<AttachSummary>,
}

/// Attaching and detaching the probes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttachSummary {
    /// Every attach of the trace, summed (processes that joined later included).
    pub attach_secs: f64,
    /// Detaching them all at the end; null in a live report (`--serve`), which is made
    /// while they are attached.
    pub detach_secs: Option<f64>,
    /// Kernel links: one per probe without `multi`, one per program and object with it.
    pub links: u64,
    /// Probes (file offsets, one process each) the links cover.
    pub probes: u64,
    /// `uprobe_multi` links were used (kernel 6.6+; `LEAKTRACER_NO_UPROBE_MULTI=1` turns
    /// them off).
    pub multi: bool,
    /// Seconds from leaktracer's start until the first targets' probes were in (programs
    /// loaded and verified, maps created, probes attached: nothing the targets did before is
    /// seen). Null in reports written by older versions.
    #[serde(default)]
    pub load_secs: Option<f64>,
    /// The programs the kernel loaded (verified) for this trace, by name: a program is loaded
    /// only once a target needs it (no pymalloc programs for a process without CPython).
    #[serde(default)]
    pub programs: Vec<String>,
    /// Where the mapping calls (mmap, munmap, mremap, mprotect, brk, a thread's clone) were
    /// traced: `"syscall_tracepoints"`, each call's own tracepoint, which other system calls
    /// never run; or `"raw_tracepoints"`, the machine-wide `sys_enter`/`sys_exit`, which every
    /// system call on the machine runs (the fallback; what reports without the key used).
    #[serde(default)]
    pub mapping_probes: MappingProbes,
}

/// Which tracepoints the mapping programs run at (the report's `attach.mapping_probes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingProbes {
    /// Each mapping call's own tracepoint: other system calls cost nothing.
    SyscallTracepoints,
    /// The machine-wide `sys_enter`/`sys_exit` raw tracepoints: every system call on the
    /// machine runs a program.
    #[default]
    RawTracepoints,
}

/// Bytes and blocks of one reachability class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassFigures {
    pub bytes: u64,
    pub allocations: u64,
}

/// A stack's outstanding blocks by reachability class, as valgrind's memcheck defines them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackReachability {
    /// No pointer to the block is left anywhere.
    pub definitely_lost: ClassFigures,
    /// Pointed to only from lost blocks (the tail of a dropped list, a cycle's other members).
    pub indirectly_lost: ClassFigures,
    /// Pointed to only into its middle (an interior pointer), never at its start.
    pub possibly_lost: ClassFigures,
    /// A pointer to its start is reachable from the registers, stacks or globals.
    pub still_reachable: ClassFigures,
}

impl StackReachability {
    /// Bytes in the three lost classes.
    pub fn lost_bytes(&self) -> u64 {
        self.definitely_lost.bytes + self.indirectly_lost.bytes + self.possibly_lost.bytes
    }

    pub fn classified_bytes(&self) -> u64 {
        self.lost_bytes() + self.still_reachable.bytes
    }

    pub fn add(&mut self, other: &StackReachability) {
        for (mine, theirs) in [
            (&mut self.definitely_lost, other.definitely_lost),
            (&mut self.indirectly_lost, other.indirectly_lost),
            (&mut self.possibly_lost, other.possibly_lost),
            (&mut self.still_reachable, other.still_reachable),
        ] {
            mine.bytes += theirs.bytes;
            mine.allocations += theirs.allocations;
        }
    }
}

/// What the reachability scan of the traced processes did and found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reachability {
    /// `exact` (every process stopped, glibc's heaps walked), `conservative` (free heap memory
    /// of an allocator that cannot be walked was scanned as roots: a leak may read as
    /// reachable, never the reverse), `unstopped` (another tracer held the target: scanned
    /// while it ran), or `none` (nothing could be scanned). The weakest over the processes.
    pub mode: String,
    /// Longest time a process stayed stopped, in milliseconds.
    pub pause_ms: f64,
    pub scanned_bytes: u64,
    /// Threads stopped and scanned, over every process.
    pub threads: u64,
    /// False when a pause cap or an error left some process unclassed.
    pub complete: bool,
    /// Seconds into the trace the scan was made.
    #[serde(default)]
    pub at_secs: f64,
    pub definitely_lost: ClassFigures,
    pub indirectly_lost: ClassFigures,
    pub possibly_lost: ClassFigures,
    pub still_reachable: ClassFigures,
    /// Each process's scan.
    #[serde(default)]
    pub processes: Vec<ProcessReachability>,
    /// Caveats, one sentence each.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One process's reachability scan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReachability {
    pub pid: u32,
    /// As [`Reachability::mode`], or `skipped` (a Python process, or one that exited first).
    pub mode: String,
    pub complete: bool,
    pub pause_ms: f64,
    pub scanned_bytes: u64,
    pub threads: u64,
    /// Blocks classed.
    pub blocks: u64,
    /// Milliseconds the mark took, after the process went on.
    pub mark_ms: f64,
    /// Seconds into the trace it was scanned.
    #[serde(default)]
    pub at_secs: f64,
    /// Scanned where it called exit(), before its teardown (stopped there by the kernel).
    #[serde(default)]
    pub at_exit: bool,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One function's inclusive share of the outstanding memory: the stacks it is on, each once
/// (however often it recurses there).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionTotal {
    pub function: String,
    /// File name of its module.
    pub module: String,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// The summed growth of its stacks (bytes per second; 0 without a growth figure).
    pub bytes_per_sec: f64,
    /// Stacks it is on, holding memory.
    pub stacks: usize,
    /// On every stack that holds memory (`main`, `_start`, an event loop): it says nothing
    /// about which code keeps the memory, and the text report leaves it out.
    pub on_every_stack: bool,
    /// A Python function of the interpreter's standard library (threading, socketserver,
    /// http.server, importlib...): the frame around the program's own code, which the text
    /// report leaves out so the program's handlers lead.
    #[serde(default)]
    pub standard_library: bool,
}

/// What the CFI unwinder had and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwindStats {
    /// Objects whose tables the kernel has, and their rows.
    pub objects: u64,
    pub rows: u64,
    /// Room for rows (`--max-unwind-rows`).
    pub row_capacity: u64,
    /// Objects left without a table: unreadable, or no usable call-frame information.
    pub objects_without_table: u64,
    /// Objects left without a table for want of room (raise `--max-unwind-rows`).
    pub objects_without_room: u64,
    /// Recorded allocations by how their stack's walk ended: `complete` (the outermost frame),
    /// `depth_limit` (`--max-depth`), `no_mapping` (code mapped after the tables were read, or
    /// JIT code), `no_table`, `no_rule` (a gap or a signal frame), `uprobe_trampoline`,
    /// `bad_frame` (unreadable stack), `frame_pointers` (walked by frame pointers: the
    /// process had no tables yet), `python_eval_loop` (CPython's eval loop: the Python frames
    /// that follow stand for the rest).
    pub stack_ends: BTreeMap<String, u64>,
    /// Frames the CFI walks added beyond each stack's first.
    pub frames_walked: u64,
}

/// How a traced process ended: the launched command (its wait status), or a `--pid` or
/// `--cgroup` target (its status from the kernel's `sched_process_exit`); whether the OOM
/// killer chose it, under which limit, and what it held then.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetExit {
    pub pid: u32,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it (e.g. `SIGSEGV`), when one did.
    pub signal: Option<String>,
    pub core_dumped: bool,
    /// The OOM killer chose it: the kernel's `mark_victim` named it, or (without that mark,
    /// when the kernel's BTF is missing) it died of SIGKILL while its memory cgroup counted an
    /// OOM kill.
    #[serde(default)]
    pub oom_killed: bool,
    /// When the OOM killer chose it, seconds into the trace.
    #[serde(default)]
    pub oom_at_secs: Option<f64>,
    /// When it exited, seconds into the trace (when the kernel's exit record says).
    #[serde(default)]
    pub exited_at_secs: Option<f64>,
    /// The memory limit in force when it ended (last read while it ran), and where it comes
    /// from, e.g. `cgroup v1 memory.limit_in_bytes of /sys/fs/cgroup/memory/app`.
    #[serde(default)]
    pub limit_bytes: Option<u64>,
    #[serde(default)]
    pub limit_source: Option<String>,
    /// OOM kills the limiting cgroup counted while it was traced (v2 `memory.events`, v1
    /// `memory.oom_control`, `oom_kill`); null without a cgroup limit.
    #[serde(default)]
    pub cgroup_oom_kills: Option<u64>,
    /// What it held at its end: its outstanding bytes and allocations (heap and mappings). A
    /// killed process frees nothing, so this is the picture at its death.
    #[serde(default)]
    pub outstanding_bytes: Option<u64>,
    #[serde(default)]
    pub outstanding_allocations: Option<u64>,
}

impl TargetExit {
    /// `exit code 3`, `killed by SIGSEGV (core dumped)`, `killed by the OOM killer (SIGKILL,
    /// at 2.5 s) at the 64.00 MiB limit (cgroup v1 ...), holding 63.00 MiB outstanding`.
    pub fn describe(&self) -> String {
        if self.oom_killed {
            let mut text = format!(
                "killed by the OOM killer ({}{})",
                self.signal.as_deref().unwrap_or("SIGKILL"),
                self.oom_at_secs
                    .map(|t| format!(", at {t:.1} s"))
                    .unwrap_or_default()
            );
            if let Some(limit) = self.limit_bytes {
                text.push_str(&format!(
                    " at the {} limit{}",
                    crate::units::human_bytes(limit),
                    self.limit_source
                        .as_ref()
                        .map(|source| format!(" ({source})"))
                        .unwrap_or_default()
                ));
            }
            if let Some(bytes) = self.outstanding_bytes {
                text.push_str(&format!(
                    ", holding {} outstanding",
                    crate::units::human_bytes(bytes)
                ));
            }
            return text;
        }
        match (&self.code, &self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!(
                "killed by {signal}{}",
                if self.core_dumped {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            (None, None) => "ended".to_string(),
        }
    }
}

/// A traced process that exec'd during the trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecEvent {
    pub pid: u32,
    /// Seconds since the trace started (when leaktracer noticed it).
    pub t_secs: f64,
    /// The program it ran before, and the one it runs now.
    pub from: String,
    pub to: String,
    /// Outstanding allocations of the old image retired at the exec, and their bytes.
    pub retired_allocations: u64,
    pub retired_bytes: u64,
}

/// An executable mapping of a traced process that stack addresses point into.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleMapping {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub file_offset: u64,
    /// The object, as the process sees its path.
    pub path: String,
    /// GNU build id (hex), when the object has one.
    pub build_id: Option<String>,
}

/// The whole process at one sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the trace started.
    pub t_secs: f64,
    pub outstanding_bytes: u64,
    /// Resident set size; null once the process has exited.
    pub rss_bytes: Option<u64>,
    /// `outstanding_bytes` with thread stacks counted by what is resident of them rather than
    /// what they reserve: what the process's growth rate and the verdict are computed from.
    /// Absent in recordings from before it (their `outstanding_bytes` is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_bytes: Option<u64>,
}

impl TimelinePoint {
    /// What the process's memory cost at this sample (see [`TimelinePoint::cost_bytes`]).
    pub fn cost(&self) -> u64 {
        self.cost_bytes.unwrap_or(self.outstanding_bytes)
    }
}

/// One stack at one sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StackPoint {
    pub t_secs: f64,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Thread stacks: what was resident of them (absent for other stacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<u64>,
    /// Thread stacks: live threads on them (absent for other stacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u64>,
}

impl StackPoint {
    /// What the stack's memory cost at this sample (thread stacks: what was resident of them).
    pub fn cost(&self) -> u64 {
        self.resident_bytes.unwrap_or(self.outstanding_bytes)
    }
}

/// The verdict line of a report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// True when at least one stack is classed `leak` (and, after a reachability scan, is not
    /// wholly still referenced), or holds definitely lost bytes.
    pub leak: bool,
    /// Stacks classed `leak`, and with `--reachability` those holding lost bytes.
    pub leaking_stacks: usize,
    /// `--reachability`: bytes definitely or indirectly lost (no pointer left to them).
    #[serde(default)]
    pub lost_bytes: Option<u64>,
    /// `--reachability`: stacks that grow steadily with every byte still referenced (a cache
    /// or store to bound): not counted as leaking.
    #[serde(default)]
    pub referenced_growth_stacks: usize,
    /// Live threads on the leaking stacks that are thread stacks: a leak of threads (their
    /// count keeps growing). 0 when no thread stacks leak.
    #[serde(default)]
    pub leaking_threads: u64,
    /// Least-squares slope of the process's outstanding bytes over the trace.
    pub growth_bytes_per_sec: f64,
    pub memory_limit_bytes: Option<u64>,
    /// Use under that limit when the trace ended.
    pub memory_usage_bytes: Option<u64>,
    pub memory_limit_source: Option<String>,
    /// (limit - usage) / growth rate, when memory grows (null once the OOM killer ended a
    /// target: the limit was reached).
    pub seconds_to_limit: Option<f64>,
    /// A traced process was killed by the OOM killer (its `target_exit` says when, under which
    /// limit, holding what); the summary says so first.
    #[serde(default)]
    pub oom_killed: bool,
    /// Allocations the kernel could not record, its record table full (`alloc_map_full`): a leak
    /// among them is not seen, so without a leak found the summary begins `INCOMPLETE`.
    #[serde(default)]
    pub unrecorded_allocations: u64,
    /// The verdict in one sentence.
    pub summary: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Target {
    pub pids: Vec<u32>,
    /// The launched command, or the traced process's command line; null when unreadable.
    pub command: Option<Vec<String>>,
    /// Short command name of each traced process.
    #[serde(default)]
    pub comms: Vec<String>,
    /// With `--cgroup` or `--container`: the cgroup v2 directory traced.
    #[serde(default)]
    pub cgroup: Option<String>,
}

/// A traced process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// Host pid.
    pub pid: u32,
    /// Its pid in each pid namespace, the host's first (the last is what it calls itself).
    pub nspid: Vec<u32>,
    pub comm: String,
    pub command: Vec<String>,
    /// Its cgroup v2 path.
    pub cgroup: Option<String>,
    /// The object that served `malloc`, as the process sees its path.
    pub allocator: String,
    /// Device and inode of that object: the file the process maps.
    pub allocator_dev: u64,
    pub allocator_inode: u64,
    /// Every object probed for it.
    pub probed_objects: Vec<String>,
    /// When its interpreter began tearing down (CPython's `Py_FinalizeEx`), or with
    /// `--reachability` when it called `exit()`, seconds into the trace: its figures are the
    /// picture from just before, what the program still held.
    #[serde(default)]
    pub frozen_at_secs: Option<f64>,
    /// Where its picture froze: `Py_FinalizeEx`, or `exit` (a native process with
    /// `--reachability`, scanned there). Null when it did not.
    #[serde(default)]
    pub frozen_at: Option<String>,
    /// How it ended, when it did during the trace; null while it runs.
    #[serde(default)]
    pub exit: Option<TargetExit>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AllocatorUsed {
    pub pid: u32,
    pub object: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Allocations recorded during the trace.
    pub allocations: u64,
    /// Frees (and unmaps) that released a recorded allocation.
    pub frees: u64,
    /// Allocations or attributions lost: the sum of `dropped_by_cause`.
    pub dropped: u64,
    #[serde(default)]
    pub dropped_by_cause: BTreeMap<String, u64>,
    /// Calls deliberately not counted: frees of pointers allocated before the trace, allocator
    /// calls nested in another, the allocator's own mmaps.
    #[serde(default)]
    pub ignored: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stack {
    /// Short id of the stack, stable across runs and restarts: a hash of its functions and
    /// modules (not addresses). Labels its Prometheus series.
    #[serde(default)]
    pub id: String,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// All allocations from this stack during the trace, freed or not.
    #[serde(default)]
    pub total_allocations: u64,
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default)]
    pub pid: u32,
    /// Command name of that process.
    #[serde(default)]
    pub comm: String,
    /// Innermost first: frame 0 is the allocator's caller. Every frame, allocator plumbing
    /// included (marked): see [`Stack::own_frames`] for what renderings show.
    pub frames: Vec<Frame>,
    /// How this stack's outstanding bytes changed over the trace.
    #[serde(default)]
    pub growth: Option<Growth>,
    #[serde(default)]
    pub timeline: Vec<StackPoint>,
    /// `--reachability`: this stack's blocks by class, when its process was scanned. Blocks
    /// allocated after the scan are in no class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachability: Option<StackReachability>,
    /// What kind of mapping the stack's records are: `mapping` (a direct mapping), or
    /// `thread_stack` (threads' stacks: counted by what is resident of them, classed by their
    /// thread count). Absent for heap blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_kind: Option<MappingKind>,
    /// Thread stacks: how many live threads run on them (each thread has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u64>,
    /// Thread stacks: how many of them no live thread runs on: their threads ended, and the C
    /// library keeps them mapped (glibc's stack cache, up to 40 MiB, for its next threads; or
    /// a thread not joined yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_stacks: Option<u64>,
    /// Thread stacks: the bytes of them in memory (`outstanding_bytes` is what they reserve),
    /// from the process's pagemap at each sample (once the process is gone, as last read; a
    /// stack it took with it before it was ever read counts 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<u64>,
}

/// What kind of mapping a stack's records are (see [`Stack::mapping_kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingKind {
    Mapping,
    ThreadStack,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Demangled function name, or `module+0xoffset` when unknown.
    pub function: String,
    /// Object the address belongs to, as the target sees its path.
    pub module: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The return address in the target's address space.
    pub address: u64,
    /// True for a function inlined into the next frame.
    #[serde(default)]
    pub inlined: bool,
    /// True for a leading frame of allocator plumbing (the allocator's front end, or library
    /// code on its way there: see [`super::plumbing`]), which the text report, the folded
    /// stacks, the flamegraph and the summaries fold. Marked frames are always a run from
    /// frame 0, never the whole stack.
    #[serde(default)]
    pub plumbing: bool,
    /// What runs it: native code (`"native"`), or a runtime, by name (`"python"`: then
    /// `function` is the Python function's qualified name, `file` and `line` its source,
    /// `module` the interpreter, `address` its code object).
    #[serde(default)]
    pub kind: RuntimeId,
}

impl Stack {
    /// The stable short id of a stack with these frames (see [`Stack::id`]): 64-bit FNV-1a over
    /// each frame's function and module file name, as 12 hex digits.
    pub fn id_of(frames: &[Frame]) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for byte in bytes {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for frame in frames {
            eat(frame.function.as_bytes());
            eat(b"\0");
            eat(frame
                .module
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .as_bytes());
            eat(b"\n");
        }
        format!("{:012x}", hash >> 16)
    }
}

impl Stack {
    /// True for a stack of threads' stacks.
    pub fn is_thread_stacks(&self) -> bool {
        self.mapping_kind == Some(MappingKind::ThreadStack)
    }

    /// What the stack's memory costs: its outstanding bytes, but for thread stacks what is
    /// resident of them, not the megabytes each thread reserves. Rankings, widths and growth
    /// count this.
    pub fn cost_bytes(&self) -> u64 {
        match self.resident_bytes {
            Some(resident) if self.is_thread_stacks() => resident,
            _ => self.outstanding_bytes,
        }
    }

    /// The leading frames folded as allocator plumbing (marked `plumbing`).
    pub fn folded_frames(&self) -> &[Frame] {
        &self.frames[..folded_len(&self.frames)]
    }

    /// The frames a reader sees: all but the leading plumbing ones, the user's code first.
    pub fn own_frames(&self) -> &[Frame] {
        own_frames(&self.frames)
    }

    /// The frames renderings show (text, HTML, flamegraph, the by-function view): its own
    /// frames (see [`Stack::own_frames`]), and for a stack with Python frames, without the
    /// interpreter's C frames above its innermost Python frame (the eval loop's calls between
    /// Python functions). What the innermost Python line called, C extensions and the
    /// thread's start stay. JSON keeps every frame.
    pub fn shown_frames(&self) -> Vec<&Frame> {
        shown_frames(self.own_frames())
    }

    /// The frame summaries name a stack by: its innermost runtime (Python) frame when it has
    /// one (the interpreter's C code below it is the interpreter at work), else the first frame
    /// a reader sees; `None` for a stack without frames.
    pub fn first_own_frame(&self) -> Option<&Frame> {
        let own = self.own_frames();
        own.iter()
            .find(|f| !f.kind.is_native())
            .or_else(|| own.first())
    }
}

/// `frames` without the runtime's own native frames above its innermost frame, as its rules
/// say (see [`Stack::shown_frames`]).
pub fn shown_frames(frames: &[Frame]) -> Vec<&Frame> {
    let Some(first) = frames.iter().position(|f| !f.kind.is_native()) else {
        return frames.iter().collect();
    };
    let innermost = &frames[first];
    let Some(rules) = innermost.kind.rules() else {
        return frames.iter().collect();
    };
    frames[..first]
        .iter()
        .chain(frames[first..].iter().filter(|f| {
            !f.kind.is_native() || !rules.is_own_native_frame(&f.module, &innermost.module)
        }))
        .collect()
}

/// How many leading frames of `frames` are marked plumbing; never all of them, whatever a
/// recording says, so a stack with frames always shows one.
pub fn folded_len(frames: &[Frame]) -> usize {
    frames
        .iter()
        .take_while(|f| f.plumbing)
        .count()
        .min(frames.len().saturating_sub(1))
}

/// `frames` without their leading plumbing frames (see [`Stack::own_frames`]).
pub fn own_frames(frames: &[Frame]) -> &[Frame] {
    &frames[folded_len(frames)..]
}

impl Frame {
    /// A frame nothing is known about but its module and offset.
    pub fn unknown(address: u64, module: String, offset: u64) -> Self {
        let name = module.rsplit('/').next().unwrap_or(&module);
        Self {
            function: format!("{name}+{offset:#x}"),
            module,
            file: None,
            line: None,
            address,
            inlined: false,
            plumbing: false,
            kind: RuntimeId::NATIVE,
        }
    }

    /// The frame's name in flamegraphs and folded stacks: the function, and for a runtime's
    /// (a Python function) its source place (`search (service.py:19)`), which tells apart the
    /// same-named functions of different modules.
    pub fn label(&self) -> String {
        match (self.kind.is_native(), &self.file) {
            (false, Some(file)) => {
                let file = file.rsplit('/').next().unwrap_or(file);
                match self.line {
                    Some(line) => format!("{} ({file}:{line})", self.function),
                    None => format!("{} ({file})", self.function),
                }
            }
            _ => self.function.clone(),
        }
    }
}

impl Report {
    /// Folded stacks (`root;...;leaf bytes`), one line per stack, for flamegraph tools: each
    /// stack's own frames, its leading allocator plumbing folded (so a leaf is the user's code,
    /// and stacks that differ only inside the allocator share it). When the trace covers
    /// several processes, each stack's root frame names its process, so stacks of different
    /// processes never merge. Bytes are what each stack costs ([`Stack::cost_bytes`]).
    pub fn folded_lines(&self) -> Vec<String> {
        let several = self.target.pids.len() > 1;
        self.stacks
            .iter()
            .filter(|s| s.cost_bytes() > 0)
            .map(|stack| {
                let process = format!("{} (pid {})", stack.comm.replace(';', ":"), stack.pid);
                let mut names: Vec<String> = Vec::new();
                if several {
                    names.push(process);
                }
                names.extend(
                    stack
                        .shown_frames()
                        .iter()
                        .rev()
                        .map(|f| f.label().replace(';', ":")),
                );
                if stack.frames.is_empty() {
                    names.push("[unknown stack]".to_string());
                }
                format!("{} {}", names.join(";"), stack.cost_bytes())
            })
            .collect()
    }
}

impl Report {
    /// The flamegraph's title: the target and how long it was traced.
    pub fn title(&self) -> String {
        let comm = self.target.comms.first().filter(|c| !c.is_empty());
        format!(
            "leaktracer: {} (pid {}), outstanding bytes after {:.1} s",
            comm.map_or("target", String::as_str),
            self.target.pids.first().copied().unwrap_or_default(),
            self.duration_secs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> Frame {
        Frame {
            function: name.into(),
            module: "/bin/x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn folded_is_root_first_with_bytes() {
        let report = Report {
            stacks: vec![Stack {
                outstanding_bytes: 4096,
                outstanding_allocations: 2,
                frames: vec![frame("leak"), frame("worker"), frame("main")],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            report.folded_lines(),
            vec!["main;worker;leak 4096".to_string()]
        );
    }

    fn plumbing(name: &str) -> Frame {
        Frame {
            plumbing: true,
            ..frame(name)
        }
    }

    #[test]
    fn folded_lines_drop_the_plumbing() {
        let report = Report {
            stacks: vec![
                Stack {
                    outstanding_bytes: 100,
                    frames: vec![
                        plumbing("zmalloc_usable"),
                        frame("_sdsnewlen"),
                        frame("main"),
                    ],
                    ..Default::default()
                },
                // A recording that marks every frame still shows its outermost one.
                Stack {
                    outstanding_bytes: 50,
                    frames: vec![plumbing("g_malloc"), plumbing("g_strdup")],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            report.folded_lines(),
            vec!["main;_sdsnewlen 100".to_string(), "g_strdup 50".to_string()]
        );
        let stack = &report.stacks[0];
        assert_eq!(stack.folded_frames().len(), 1);
        assert_eq!(stack.first_own_frame().unwrap().function, "_sdsnewlen");
        assert_eq!(
            report.stacks[1].first_own_frame().unwrap().function,
            "g_strdup"
        );
        assert!(Stack::default().first_own_frame().is_none());
    }

    #[test]
    fn json_keeps_every_frame_and_its_mark() {
        let stack = Stack {
            frames: vec![plumbing("operator new(unsigned long)"), frame("add_node")],
            ..Default::default()
        };
        let id = Stack::id_of(&stack.frames);
        let text = serde_json::to_string(&stack).unwrap();
        assert!(text.contains("\"plumbing\":true") && text.contains("\"plumbing\":false"));
        let back: Stack = serde_json::from_str(&text).unwrap();
        assert_eq!(back.frames, stack.frames);
        // Marks do not change a stack's id, which hashes every frame.
        let unmarked: Vec<Frame> = ["operator new(unsigned long)", "add_node"]
            .map(frame)
            .to_vec();
        assert_eq!(Stack::id_of(&unmarked), id);
        // Recordings from before the mark read as unmarked.
        let old: Frame = serde_json::from_str(
            r#"{"function":"f","module":"m","file":null,"line":null,"address":1}"#,
        )
        .unwrap();
        assert!(!old.plumbing);
    }

    #[test]
    fn interpreter_frames_above_python_code_are_not_shown() {
        let native = |name: &str, module: &str| Frame {
            function: name.into(),
            module: module.into(),
            ..Frame::default()
        };
        let python = |name: &str| Frame {
            function: name.into(),
            module: "libpython3.12.so".into(),
            kind: RuntimeId::from_name("python").unwrap(),
            ..Frame::default()
        };
        let stack = Stack {
            frames: vec![
                native("PyUnicode_New", "libpython3.12.so"),
                python("expensive_search"),
                native("method_vectorcall", "libpython3.12.so"),
                native("zlib_call", "zlib.so"),
                python("search"),
                native("start_thread", "libc.so.6"),
                native("_start", "libpython3.12.so"),
            ],
            ..Stack::default()
        };
        let names: Vec<&str> = stack
            .shown_frames()
            .iter()
            .map(|f| f.function.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "PyUnicode_New",
                "expensive_search",
                "zlib_call",
                "search",
                "start_thread"
            ]
        );
        assert_eq!(
            stack.first_own_frame().unwrap().function,
            "expensive_search"
        );
    }
}
