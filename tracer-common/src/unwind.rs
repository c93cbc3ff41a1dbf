//! The unwinder's tables, as userspace writes them and the kernel walks them: per traced
//! process a sorted run of [`UnwindMapping`]s (its executable file mappings), per object a
//! sorted run of [`UnwindRow`]s compiled from its call-frame information. Both runs live in
//! flat array maps (`UNWIND_MAPPINGS`, `UNWIND_ROWS`) so the verifier inlines every lookup;
//! `UNWIND_PROCESSES` says where a process's run starts.
//!
//! x86-64 today. A row keeps two spare bytes (`_pad`) for what aarch64 adds (where the return
//! address lives: the link register or a CFA offset).

/// How an unwinder finds the canonical frame address (CFA: the caller's stack pointer before
/// the call) within an [`UnwindRow`]'s range.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CfaRule {
    /// No usable CFI here (a gap between functions' entries, or a rule the row format cannot
    /// express): the unwinder stops.
    Stop = 0,
    /// CFA = RSP + `cfa_offset`.
    SpOffset = 1,
    /// CFA = RBP + `cfa_offset`.
    FpOffset = 2,
    /// A PLT stub's expression: CFA = RSP + 8, plus 8 more once `RIP & 15` reaches
    /// `cfa_offset` (the stub has pushed its argument).
    Plt = 3,
    /// The outermost frame (`_start`, a thread's start routine): the CFI marks the return
    /// address undefined. The stack is complete here.
    End = 4,
}

/// Where the caller's RBP is within an [`UnwindRow`]'s range.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpRule {
    /// RBP still holds the caller's value.
    Unchanged = 0,
    /// Saved at CFA + `fp_offset`.
    AtCfaOffset = 1,
    /// Not recoverable: frames above cannot use the frame pointer.
    Lost = 2,
}

/// One row of an object's unwind table: from `pc` up to the next row's, how to find the CFA and
/// the caller's RBP. The return address is at CFA - 8 (x86-64; a row whose CFI says otherwise is
/// a [`CfaRule::Stop`] row). `pc` is an address in the object's own address space (its ELF
/// virtual addresses, before the load bias); objects whose code lies above 4 GiB get no table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    /// A [`CfaRule`] as u8.
    pub cfa_rule: u8,
    /// An [`FpRule`] as u8.
    pub fp_rule: u8,
    pub _pad: u16,
    /// See [`CfaRule`].
    pub cfa_offset: i32,
    /// See [`FpRule::AtCfaOffset`].
    pub fp_offset: i32,
}

/// One executable mapping of a traced process: where it is, its load bias, and its object's
/// rows in `UNWIND_ROWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    /// Runtime address - the object's virtual address.
    pub bias: u64,
    /// First row of the object's table, or [`TRAMPOLINE_ROWS`] for the kernel's `[uprobes]`
    /// page.
    pub rows_first: u32,
    /// Rows of the table; 0 when the object has none (no CFI, or it could not be read).
    pub rows_count: u32,
}

/// `rows_first` of the `[uprobes]` page: a return into it is a pending uretprobe's trampoline,
/// whose real return address only the kernel knows.
pub const TRAMPOLINE_ROWS: u32 = u32::MAX;

/// Where a traced process's mappings are in `UNWIND_MAPPINGS` (sorted by start).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindProcess {
    pub mappings_first: u32,
    pub mappings_count: u32,
    /// Distinct for every table userspace publishes (never 0): rows cached under an older
    /// generation are never used for this one.
    pub generation: u32,
    pub _pad: u32,
}

/// One slot of the per-CPU cache of rows found (`UNWIND_CACHE`, slot by a hash of the
/// address): a hit skips both binary searches, and most allocations come from a few call
/// sites.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedRow {
    /// The address looked up (a return address - 1).
    pub pc: u64,
    /// The process table's [`UnwindProcess::generation`] it was found in.
    pub generation: u32,
    pub _pad: u32,
    pub row: UnwindRow,
}

/// Slots of the per-CPU row cache (a power of two).
pub const UNWIND_CACHE_SLOTS: u32 = 4096;

/// How a captured stack ended: slot `end as u32` of `UNWIND_ENDS` counts the stacks (one per
/// recorded allocation) that ended so. Frames walked are counted in slot [`UNWIND_FRAMES_SLOT`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindEnd {
    /// The outermost frame: the stack is complete.
    Complete = 0,
    /// `--max-depth` frames: the stack is cut there.
    DepthLimit = 1,
    /// A return address outside every known mapping (code mapped after the tables were read,
    /// or not from a file: JIT code).
    NoMapping = 2,
    /// A mapping whose object has no table (no CFI, or unreadable).
    NoTable = 3,
    /// An address the table has no rule for (a gap, a signal frame, an expression the row
    /// format cannot follow).
    NoRule = 4,
    /// A return into the uretprobe trampoline page.
    Trampoline = 5,
    /// A stack read failed, or a CFA did not move up the stack.
    BadFrame = 6,
    /// The process had no tables (yet): its stack was walked by frame pointers.
    FramePointers = 7,
    /// A code range a runtime registered (see `runtimes::RuntimeProcess`; today CPython's eval
    /// loop, hence the name reported): the runtime's frames follow (they replace it and every
    /// interpreter frame outside it), so the native walk stops there.
    RuntimeCode = 8,
}

impl UnwindEnd {
    /// Every end, in slot order.
    pub const ALL: [UnwindEnd; 9] = [
        UnwindEnd::Complete,
        UnwindEnd::DepthLimit,
        UnwindEnd::NoMapping,
        UnwindEnd::NoTable,
        UnwindEnd::NoRule,
        UnwindEnd::Trampoline,
        UnwindEnd::BadFrame,
        UnwindEnd::FramePointers,
        UnwindEnd::RuntimeCode,
    ];

    /// The name reported in text and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            UnwindEnd::Complete => "complete",
            UnwindEnd::DepthLimit => "depth_limit",
            UnwindEnd::NoMapping => "no_mapping",
            UnwindEnd::NoTable => "no_table",
            UnwindEnd::NoRule => "no_rule",
            UnwindEnd::Trampoline => "uprobe_trampoline",
            UnwindEnd::BadFrame => "bad_frame",
            UnwindEnd::FramePointers => "frame_pointers",
            UnwindEnd::RuntimeCode => "python_eval_loop",
        }
    }
}

/// Slot of `UNWIND_ENDS` counting the frames walked by CFI (the cost driver).
pub const UNWIND_FRAMES_SLOT: u32 = UnwindEnd::ALL.len() as u32;
/// Slots of `UNWIND_ENDS`.
pub const UNWIND_END_SLOTS: u32 = UNWIND_FRAMES_SLOT + 1;

/// Default `--max-depth`.
pub const DEFAULT_MAX_DEPTH: u32 = 64;
/// Default capacity of `UNWIND_ROWS` (16 B each: 16 MiB), set by `--max-unwind-rows`.
pub const DEFAULT_UNWIND_ROWS: u32 = 1 << 20;
/// Capacity of `UNWIND_MAPPINGS` (all traced processes together).
pub const UNWIND_MAPPING_SLOTS: u32 = 1 << 15;
/// Steps of the binary search over one process's mappings: at most 2^this mappings each.
pub const MAPPING_SEARCH_STEPS: u32 = 10;
/// Steps of the binary search over one object's rows: at most 2^this rows each.
pub const ROW_SEARCH_STEPS: u32 = 24;
/// The most mappings one process's table holds: a search of n entries takes
/// ceil(log2(n + 1)) halvings (see [`MAPPING_SEARCH_STEPS`]).
pub const MAX_PROCESS_MAPPINGS: u32 = (1 << MAPPING_SEARCH_STEPS) - 1;
/// The most rows one object's table holds (see [`ROW_SEARCH_STEPS`]).
pub const MAX_OBJECT_ROWS: u32 = (1 << ROW_SEARCH_STEPS) - 1;

const _: () = {
    assert!(size_of::<UnwindRow>() == 16);
    assert!(size_of::<UnwindMapping>() == 32);
    assert!(size_of::<CachedRow>() == 32);
    assert!(UNWIND_CACHE_SLOTS.is_power_of_two());
};
