//! CPython's walker (runtime `RuntimeId::Python`, see `tracer_common::python`): after the
//! native walk, a process that runs CPython gets the current thread's Python frames appended
//! to its stack, newest first.
//!
//! The thread state comes from glibc's thread-specific data, not from the interpreter's
//! "current thread state": the pthread key's slot stays set while the thread has released the
//! GIL (C extensions, ctypes, I/O), so those allocations get their Python frames too. One
//! frame per `bpf_loop` iteration: one read of the frame's header, the fields taken from it at
//! the interpreter's offsets (3.11+'s `_PyInterpreterFrame`s here, 3.9 and 3.10's
//! `PyFrameObject`s in `frame_objects`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf, generated::bpf_loop},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_common::{
    MAX_STACK_DEPTH,
    python::{
        ActivationMarker, FRAME_HEADER_BYTES, FRAME_OWNED_BY_CSTACK, FRAME_WINDOW_BYTES,
        MAX_PYTHON_FRAMES, NO_CFRAME, NewPythonStack, PYTHON_ENTRY, PythonProcess, python_entry,
    },
    runtimes::{RUNTIME_DATA_WORDS, is_runtime_frame},
};

use crate::{maps::STACK_SCRATCH, stack::mix, tsd};

mod frame_objects;

/// Per CPU, the window of frames being read (a map value, so computed offsets index it).
#[map]
pub(crate) static PYTHON_SCRATCH: PerCpuArray<[u8; FRAME_WINDOW_BYTES]> =
    PerCpuArray::with_max_entries(1, 0);

/// Stacks with Python frames kept for the first time, so userspace reads their code objects
/// while the process lives.
#[map]
pub(crate) static PYTHON_STACKS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Mixed into the stack hash for each shim frame, so stacks that differ only in where the
/// eval loop was re-entered hash differently.
const SHIM_HASH: u64 = 0x5059_5f53_4849_4d00;

/// The walk's state, on the caller's stack (bpf_loop hands the callback a pointer to it).
#[repr(C)]
struct Walk {
    process: PythonProcess,
    /// The next frame to read; 0 at the end of the chain.
    frame: u64,
    hash: u64,
    /// Entries in the scratch stack.
    depth: u64,
    /// The bytes of the target `PYTHON_SCRATCH` holds: `[window, window + window_len)`
    /// (`window_len` 0: none yet).
    window: u64,
    window_len: u64,
}

/// Appends the current thread's Python frames to this CPU's scratch stack (holding its native
/// frames, hashing to `hash`); returns the stack's hash. `data`: the process's runtime data
/// (its interpreter's [`PythonProcess`]).
#[inline(always)]
pub(crate) fn append_frames(data: &[u64; RUNTIME_DATA_WORDS], hash: u64) -> u64 {
    let process = PythonProcess::from_runtime_data(data);
    let Some(frame) = newest_frame(process) else {
        return hash;
    };
    let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) else {
        return hash;
    };
    // SAFETY: this CPU's scratch slot, valid for the run.
    let depth = unsafe { (*stack).depth };
    let room = (MAX_STACK_DEPTH as u64).saturating_sub(depth);
    let frames = room.min(u64::from(MAX_PYTHON_FRAMES));
    if frames == 0 {
        return hash;
    }
    if process.marker == ActivationMarker::EveryFrame as u8 {
        let (depth, hash) = frame_objects::append(process, frame, hash, depth, frames);
        // SAFETY: this CPU's scratch slot, valid for the run; the walk is over.
        unsafe { (*stack).depth = depth };
        return hash;
    }
    let mut walk = Walk {
        process: *process,
        frame,
        hash,
        depth,
        window: 0,
        window_len: 0,
    };
    // SAFETY: the helper calls `python_frame` at most `frames` times with a pointer to
    // `walk`, which outlives the call; flags must be 0.
    unsafe {
        bpf_loop(
            frames as u32,
            python_frame as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    // SAFETY: this CPU's scratch slot, valid for the run; the walk is over.
    unsafe { (*stack).depth = walk.depth };
    walk.hash
}

/// The newest frame of the current thread, if it runs Python.
#[inline(always)]
fn newest_frame(process: &PythonProcess) -> Option<u64> {
    // First: without the kernel's layout nothing else is read.
    let thread_data = tsd::current()?;
    // SAFETY: the helper copies from user memory and fails (no fault) on a bad address.
    let [initialized, key] = unsafe { bpf_probe_read_user(process.tss as *const [u32; 2]) }.ok()?;
    if initialized != 1 {
        return None;
    }
    let thread = thread_data.value(key)?;
    let at = thread + u64::from(process.thread_frame);
    // SAFETY: as above.
    let mut frame = unsafe { bpf_probe_read_user(at as *const u64) }.ok()?;
    if process.cframe_frame != NO_CFRAME {
        if frame == 0 {
            return None;
        }
        let at = frame + u64::from(process.cframe_frame);
        // SAFETY: as above.
        frame = unsafe { bpf_probe_read_user(at as *const u64) }.ok()?;
    }
    (frame != 0).then_some(frame)
}

/// bpf_loop's callback: reads one frame and appends it (shim frames mark the activation
/// instead). 0 goes on, 1 stops.
#[inline(never)]
extern "C" fn python_frame(_index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `Walk` given to it, on the caller's stack.
    let walk = unsafe { &mut *walk.cast::<Walk>() };
    match step(walk) {
        Some(()) => 0,
        None => 1,
    }
}

/// Frames start at most here in a window, so that every field offset (below 128, masked)
/// plus 8 stays inside it without a check per field (each check would be a verifier branch).
const LAST_FRAME_START: usize = FRAME_WINDOW_BYTES - 136;
const FIELD_MASK: usize = 127;

/// The u64 at `at + offset` of the window (`at <= LAST_FRAME_START`).
#[inline(always)]
fn field(window: &[u8; FRAME_WINDOW_BYTES], at: usize, offset: u16) -> u64 {
    let at = (at & (FRAME_WINDOW_BYTES - 1)).min(LAST_FRAME_START) + (offset as usize & FIELD_MASK);
    // SAFETY: `at <= LAST_FRAME_START + FIELD_MASK`, and `LAST_FRAME_START + FIELD_MASK + 8`
    // is the window's size.
    unsafe { core::ptr::read_unaligned(window.as_ptr().add(at).cast::<u64>()) }
}

/// Where the frame at `frame` starts in this CPU's window, reading the window that holds it
/// when the one held does not: the aligned window around it (in its page, so mapped whenever
/// the frame is), or, for a frame near a window's end, its header alone.
#[inline(always)]
fn frame_in_window(walk: &mut Walk, window: &mut [u8; FRAME_WINDOW_BYTES]) -> Option<usize> {
    let frame = walk.frame;
    let held = walk.window_len != 0
        && frame >= walk.window
        && frame - walk.window <= (LAST_FRAME_START as u64).min(walk.window_len);
    if !held {
        let aligned = frame & !(FRAME_WINDOW_BYTES as u64 - 1);
        if frame - aligned <= LAST_FRAME_START as u64 {
            // SAFETY: the helper copies from user memory and fails (no fault) on a bad address.
            unsafe { bpf_probe_read_user_buf(aligned as *const u8, window) }.ok()?;
            walk.window = aligned;
            walk.window_len = FRAME_WINDOW_BYTES as u64;
        } else {
            let header = window.get_mut(..FRAME_HEADER_BYTES)?;
            // SAFETY: as above.
            unsafe { bpf_probe_read_user_buf(frame as *const u8, header) }.ok()?;
            walk.window = frame;
            // Only this frame is held: a later frame never matches.
            walk.window_len = 0;
            return Some(0);
        }
    }
    Some((frame - walk.window) as usize)
}

#[inline(always)]
fn step(walk: &mut Walk) -> Option<()> {
    if walk.frame == 0 {
        return None;
    }
    // SAFETY: this CPU's scratch slot (per-CPU map, valid for the run, no other user meanwhile).
    let window = unsafe { &mut *PYTHON_SCRATCH.get_ptr_mut(0)? };
    let at = frame_in_window(walk, window)?;
    let process = &walk.process;
    let code = field(window, at, process.frame_code);
    let instr = field(window, at, process.frame_instr);
    walk.frame = field(window, at, process.frame_previous);
    let marker = field(window, at, process.frame_marker) as u8;
    if process.marker == ActivationMarker::CStackOwner as u8 && marker == FRAME_OWNED_BY_CSTACK {
        // A shim: the frame before it (newer, already appended) began an activation.
        walk.hash = mix(walk.hash, SHIM_HASH);
        let stack = STACK_SCRATCH.get_ptr_mut(0)?;
        let last = walk.depth.checked_sub(1)?;
        // SAFETY: this CPU's scratch slot, valid for the run; the index is checked.
        let slot = unsafe { (*stack).ips.get_mut(last as usize)? };
        // A runtime frame there is one this walk appended (the native frames come first).
        if is_runtime_frame(*slot) {
            *slot |= PYTHON_ENTRY;
        }
        return Some(());
    }
    if code == 0 || code == process.none {
        return None;
    }
    let offset = instr.wrapping_sub(code + u64::from(process.code_bytecode)) as i64;
    let entry = process.marker == ActivationMarker::IsEntry as u8 && marker == 1;
    let value = python_entry(code, offset, entry);
    let stack = STACK_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, valid for the run; the index is checked.
    let slot = unsafe { (*stack).ips.get_mut(walk.depth as usize)? };
    *slot = value;
    walk.hash = mix(walk.hash, value);
    walk.depth += 1;
    Some(())
}

/// A stack ending in a Python frame was kept for the first time: userspace hears of it, so it
/// reads the code objects while they exist. A full ring loses the notice only: the stack is
/// read again at the report.
#[inline(always)]
pub(crate) fn stack_kept(tgid: u32, stack_id: u64) {
    let _ = PYTHON_STACKS.output::<NewPythonStack>(
        &NewPythonStack {
            tgid,
            _pad: 0,
            stack_id,
        },
        0,
    );
}
