//! Language runtimes in stacks: how a runtime's frame sits in a [`crate::UserStack`], and what
//! the kernel's native walker needs to know of a process that runs one ([`RuntimeProcess`]).
//!
//! A stack entry is either a return address (user addresses never have the top bit set) or a
//! runtime's frame: bit 63 set, the runtime's id in the next [`RUNTIME_ID_BITS`] bits, and the
//! rest ([`RUNTIME_DATA_BITS`] bits) the runtime's own (see each runtime's module, e.g.
//! [`crate::python`]).
//!
//! The native walk stops at the first return address inside one of the code ranges userspace
//! registered for the process (a runtime's interpreter loop): from there on the runtime's
//! walker, chosen by the process's runtime id, appends its frames, which stand for the rest.

/// Tag of a stack entry that is a runtime's frame, not a return address.
pub const RUNTIME_FRAME: u64 = 1 << 63;
/// Bits of the runtime id in an entry (room for `1 << RUNTIME_ID_BITS` runtimes).
pub const RUNTIME_ID_BITS: u32 = 3;
/// Bits of an entry that are the runtime's own: below the id.
pub const RUNTIME_DATA_BITS: u32 = 63 - RUNTIME_ID_BITS;
/// Where the runtime id sits in an entry.
pub const RUNTIME_ID_SHIFT: u32 = RUNTIME_DATA_BITS;
/// The runtime id field (shifted down).
pub const RUNTIME_ID_MASK: u64 = (1 << RUNTIME_ID_BITS) - 1;
/// The runtime's own bits of an entry.
pub const RUNTIME_DATA_MASK: u64 = (1 << RUNTIME_DATA_BITS) - 1;
/// Runtimes an entry can name.
pub const MAX_RUNTIMES: usize = 1 << RUNTIME_ID_BITS;

/// The runtimes whose frames the kernel walks, by the id their entries carry.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeId {
    /// CPython (see [`crate::python`]).
    Python = 0,
}

impl RuntimeId {
    /// Every runtime, in id order.
    pub const ALL: [RuntimeId; 1] = [RuntimeId::Python];

    /// The runtime of an id, if there is one.
    pub const fn from_id(id: u64) -> Option<Self> {
        match id {
            0 => Some(RuntimeId::Python),
            _ => None,
        }
    }

    /// The tag every entry of this runtime carries: [`RUNTIME_FRAME`] and the id.
    pub const fn tag(self) -> u64 {
        RUNTIME_FRAME | ((self as u64) << RUNTIME_ID_SHIFT)
    }
}

/// The runtime id of a stack entry, when it is a runtime's frame (the raw id: a runtime this
/// build does not know is still told from a return address).
#[inline(always)]
pub const fn runtime_of(entry: u64) -> Option<u64> {
    if entry & RUNTIME_FRAME == 0 {
        None
    } else {
        Some((entry >> RUNTIME_ID_SHIFT) & RUNTIME_ID_MASK)
    }
}

/// Whether a stack entry is a runtime's frame rather than a return address.
#[inline(always)]
pub const fn is_runtime_frame(entry: u64) -> bool {
    entry & RUNTIME_FRAME != 0
}

/// The entry of `runtime`'s frame whose own bits are `data` (cut to [`RUNTIME_DATA_MASK`]).
#[inline(always)]
pub const fn runtime_entry(runtime: RuntimeId, data: u64) -> u64 {
    runtime.tag() | (data & RUNTIME_DATA_MASK)
}

/// Code ranges a process registers at most (CPython's eval loop and its `.cold` part). More
/// cost verifier steps at every frame of the native walk (see [`in_stop_range`]).
pub const MAX_STOP_RANGES: usize = 2;
/// Words of a process entry that are its runtime's own.
pub const RUNTIME_DATA_WORDS: usize = 5;

/// A traced process that runs a language runtime, as the kernel needs it: the runtime whose
/// walker appends its frames after the native ones, the code ranges where the native walk
/// stops because those frames stand for the rest, and what that walker needs (its own layout,
/// e.g. [`crate::python::PythonProcess`]). One per process in `RUNTIME_PROCESSES`, written by
/// userspace when it finds the runtime, removed at exec.
///
/// One entry, not one per runtime beside a map of ranges: the verifier checks the programs
/// once per combination of map values found or not, so a second lookup would double the
/// stack capture's checks (past the kernel's limit for `call_return`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeProcess {
    /// A [`RuntimeId`].
    pub runtime: u32,
    pub _pad: u32,
    /// `[start, end)` ranges of the runtime's code (`[0, 0)`: unused).
    pub stops: [[u64; 2]; MAX_STOP_RANGES],
    /// The runtime's own.
    pub data: [u64; RUNTIME_DATA_WORDS],
}

impl RuntimeProcess {
    /// The process entry of `runtime`, stopping the native walk in `stops` (at most
    /// [`MAX_STOP_RANGES`]; empty ranges are skipped), with the runtime's own `data`.
    pub fn new(runtime: RuntimeId, stops: &[[u64; 2]], data: [u64; RUNTIME_DATA_WORDS]) -> Self {
        let mut process = Self {
            runtime: runtime as u32,
            data,
            ..Self::default()
        };
        let used = stops.iter().filter(|[start, end]| start < end);
        for (slot, range) in process.stops.iter_mut().zip(used) {
            *slot = *range;
        }
        process
    }
}

/// Whether `pc` is in one of `stops` (see [`RuntimeProcess::stops`]). One expression, not a
/// loop over the ranges: the loop's code cost the stack capture 100k more verifier steps.
#[inline(always)]
pub fn in_stop_range(stops: &[[u64; 2]; MAX_STOP_RANGES], pc: u64) -> bool {
    let [[start0, end0], [start1, end1]] = *stops;
    (pc >= start0 && pc < end0) || (pc >= start1 && pc < end1)
}

const _: () = {
    assert!(MAX_RUNTIMES >= 8);
    assert!(RuntimeId::ALL.len() <= MAX_RUNTIMES);
    assert!(size_of::<RuntimeProcess>() == 8 + 16 * MAX_STOP_RANGES + 8 * RUNTIME_DATA_WORDS);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_their_runtime() {
        for runtime in RuntimeId::ALL {
            let entry = runtime_entry(runtime, RUNTIME_DATA_MASK);
            assert!(is_runtime_frame(entry));
            assert_eq!(runtime_of(entry), Some(runtime as u64));
            assert_eq!(RuntimeId::from_id(runtime as u64), Some(runtime));
            assert_eq!(entry & RUNTIME_DATA_MASK, RUNTIME_DATA_MASK);
        }
        // Every id fits, and the data never spills into it.
        assert_eq!(runtime_of(RUNTIME_FRAME | (7 << RUNTIME_ID_SHIFT)), Some(7));
        assert_eq!(
            runtime_of(runtime_entry(RuntimeId::Python, u64::MAX)),
            Some(0)
        );
        // A user address is no runtime's frame.
        assert_eq!(runtime_of(0x7fff_ffff_f000), None);
        assert!(!is_runtime_frame(0x40_1000));
    }

    #[test]
    fn stop_ranges_are_half_open_and_skip_empty_ones() {
        let process = RuntimeProcess::new(
            RuntimeId::Python,
            &[[0, 0], [0x1000, 0x2000], [0x5000, 0x5100]],
            [1, 2, 3, 4, 5],
        );
        assert_eq!(process.runtime, RuntimeId::Python as u32);
        assert_eq!(process.stops, [[0x1000, 0x2000], [0x5000, 0x5100]]);
        assert_eq!(process.data, [1, 2, 3, 4, 5]);
        for (pc, inside) in [
            (0xfff, false),
            (0x1000, true),
            (0x1fff, true),
            (0x2000, false),
            (0x50ff, true),
            (0x5100, false),
            (0, false),
        ] {
            assert_eq!(in_stop_range(&process.stops, pc), inside, "{pc:#x}");
        }
    }
}
