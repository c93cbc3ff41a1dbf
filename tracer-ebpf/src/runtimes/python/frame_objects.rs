//! CPython 3.9 and 3.10: the thread's frames are a chain of heap `PyFrameObject`s (`f_back`,
//! `f_code`, `f_lasti`), newest first, each run by its own C call of the eval loop (so every
//! frame begins an activation). One read of the object's first [`FRAME_OBJECT_BYTES`] per
//! frame, as 3.11+'s headers are read (see `read_object`).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use tracer_common::python::{FRAME_OBJECT_BYTES, InstrKind, PythonProcess, python_entry};

use super::{field, push_frame, read_object};

/// The walk's state, on the caller's stack (bpf_loop hands the callback a pointer to it).
#[repr(C)]
struct ObjectWalk {
    /// The next frame object to read; 0 at the end of the chain.
    frame: u64,
    hash: u64,
    /// Entries in the scratch stack.
    depth: u64,
    /// Offsets of `f_code`, `f_back` and `f_lasti`.
    code: u16,
    back: u16,
    lasti: u16,
    /// `f_lasti` counts code units (3.10), not bytes (3.9).
    units: u16,
}

/// Appends up to `frames` frame objects from `frame` (the newest) to this CPU's scratch stack,
/// which holds `depth` entries hashing to `hash`; returns the new depth and hash.
#[inline(always)]
pub(super) fn append(
    process: &PythonProcess,
    frame: u64,
    hash: u64,
    depth: u64,
    frames: u64,
) -> (u64, u64) {
    let mut walk = ObjectWalk {
        frame,
        hash,
        depth,
        code: process.frame_code,
        back: process.frame_previous,
        lasti: process.frame_instr,
        units: u16::from(process.instr_kind == InstrKind::LastiUnits as u8),
    };
    // SAFETY: the helper calls `frame_object` at most `frames` times with a pointer to
    // `walk`, which outlives the call; flags must be 0.
    unsafe {
        bpf_loop(
            frames as u32,
            frame_object as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    (walk.depth, walk.hash)
}

/// bpf_loop's callback: reads one frame object and appends it. 0 goes on, 1 stops.
#[inline(never)]
extern "C" fn frame_object(_index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `ObjectWalk` given to it, on the caller's stack.
    let walk = unsafe { &mut *walk.cast::<ObjectWalk>() };
    match step(walk) {
        Some(()) => 0,
        None => 1,
    }
}

#[inline(always)]
fn step(walk: &mut ObjectWalk) -> Option<()> {
    if walk.frame == 0 {
        return None;
    }
    let header = read_object(walk.frame, FRAME_OBJECT_BYTES)?;
    let code = field(header, walk.code);
    // An `int`: -1 before the first instruction.
    let lasti = i64::from(field(header, walk.lasti) as u32 as i32);
    walk.frame = field(header, walk.back);
    if code == 0 {
        return None;
    }
    let offset = match (lasti < 0, walk.units != 0) {
        (true, _) => -2,
        (false, true) => lasti * 2,
        (false, false) => lasti,
    };
    push_frame(
        python_entry(code, offset, true),
        &mut walk.depth,
        &mut walk.hash,
    )
}
