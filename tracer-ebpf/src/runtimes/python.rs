//! CPython's walker (runtime `RuntimeId::Python`, see `tracer_common::python`): after the
//! native walk, a process that runs CPython gets the current thread's Python frames appended
//! to its stack, newest first.
//!
//! The thread state comes from the interpreter's per-thread "bound" thread state, not from its
//! "current thread state": glibc's thread-specific data of its pthread key (3.9-3.14), or the
//! static thread-local variable that replaced it (3.15): either stays set while the thread has
//! released the GIL (C extensions, ctypes, I/O), so those allocations get their Python frames
//! too. One frame per `bpf_loop` iteration: one read of the frame's header (only the header),
//! the fields taken from it at the interpreter's offsets (3.11+'s `_PyInterpreterFrame`s here, 3.9 and 3.10's
//! `PyFrameObject`s in `frame_objects`). The eval loop's shim frames (3.12: owned by the C
//! stack; 3.13+: `None` as their executable) mark where an activation began; 3.15's sentinel
//! frame at the bottom of every thread's chain ends it.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf, generated::bpf_loop},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_common::{
    MAX_STACK_DEPTH,
    python::{
        ActivationMarker, EXECUTABLE_TAG_MASK, FRAME_HEADER_BYTES, FRAME_OWNED_BY_CSTACK,
        FRAME_SCRATCH_BYTES, MAX_PYTHON_FRAMES, NO_CFRAME, NewPythonStack, PYTHON_ENTRY,
        PythonProcess, ThreadSource, python_entry,
    },
    runtimes::{RUNTIME_DATA_WORDS, is_runtime_frame},
};

use crate::{arch::thread_pointer, maps::STACK_SCRATCH, stack::mix, tsd};

mod frame_objects;

/// Per CPU, the frame being read (a map value, so computed offsets index it).
#[map]
pub(crate) static PYTHON_SCRATCH: PerCpuArray<[u8; FRAME_SCRATCH_BYTES]> =
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
    /// The thread's sentinel frame (3.15+), which ends the chain; 0 when there is none.
    base: u64,
    hash: u64,
    /// Entries in the scratch stack.
    depth: u64,
}

/// Appends the current thread's Python frames to this CPU's scratch stack (holding its native
/// frames, hashing to `hash`); returns the stack's hash. `data`: the process's runtime data
/// (its interpreter's [`PythonProcess`]).
#[inline(always)]
pub(crate) fn append_frames(data: &[u64; RUNTIME_DATA_WORDS], hash: u64) -> u64 {
    let process = PythonProcess::from_runtime_data(data);
    let Some((frame, base)) = newest_frame(process) else {
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
        base,
        hash,
        depth,
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

/// The current thread's `PyThreadState`, if it has one.
#[inline(always)]
fn current_thread(process: &PythonProcess) -> Option<u64> {
    if process.thread_source == ThreadSource::StaticTls as u8 {
        // `tss` is the variable's (negative) offset from the thread pointer.
        let at = thread_pointer()?.wrapping_add(process.tss);
        // SAFETY: the helper copies from user memory and fails (no fault) on a bad address.
        let thread = unsafe { bpf_probe_read_user(at as *const u64) }.ok()?;
        return (thread != 0).then_some(thread);
    }
    // First: without the kernel's layout nothing else is read.
    let thread_data = tsd::current()?;
    // SAFETY: as above.
    let [initialized, key] = unsafe { bpf_probe_read_user(process.tss as *const [u32; 2]) }.ok()?;
    if initialized != 1 {
        return None;
    }
    thread_data.value(key)
}

/// The newest frame of the current thread, if it runs Python, and the thread's sentinel frame
/// (0 without one).
#[inline(always)]
fn newest_frame(process: &PythonProcess) -> Option<(u64, u64)> {
    let thread = current_thread(process)?;
    let at = thread + u64::from(process.thread_frame);
    // SAFETY: the helper copies from user memory and fails (no fault) on a bad address.
    let mut frame = unsafe { bpf_probe_read_user(at as *const u64) }.ok()?;
    if process.cframe_frame != NO_CFRAME {
        if frame == 0 {
            return None;
        }
        let at = frame + u64::from(process.cframe_frame);
        // SAFETY: as above.
        frame = unsafe { bpf_probe_read_user(at as *const u64) }.ok()?;
    }
    let mut base = 0;
    if process.thread_base_frame != 0 {
        let at = thread + u64::from(process.thread_base_frame);
        // SAFETY: as above.
        base = unsafe { bpf_probe_read_user(at as *const u64) }.ok()?;
    }
    (frame != 0 && frame != base).then_some((frame, base))
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

/// Field offsets are masked to this, so that every field read stays inside the scratch without
/// a check per field (each would be a verifier branch).
const FIELD_MASK: usize = 127;
const _: () = assert!(FIELD_MASK + 8 <= FRAME_SCRATCH_BYTES);

/// The u64 at `offset` of the object read into `scratch` (see [`read_object`]).
#[inline(always)]
pub(crate) fn field(scratch: &[u8; FRAME_SCRATCH_BYTES], offset: u16) -> u64 {
    let at = offset as usize & FIELD_MASK;
    // SAFETY: `at + 8 <= FIELD_MASK + 8 <= FRAME_SCRATCH_BYTES`.
    unsafe { core::ptr::read_unaligned(scratch.as_ptr().add(at).cast::<u64>()) }
}

/// Reads the first `len` bytes of the object at `at` (a frame) into this CPU's scratch.
///
/// Only what the fields need: a walk's cost is mostly these copies, and the frames of a chain
/// are seldom next to each other (a coroutine's frame lives in its generator object), so the
/// larger windows read before brought cache lines nobody used.
#[inline(always)]
pub(crate) fn read_object(at: u64, len: usize) -> Option<&'static mut [u8; FRAME_SCRATCH_BYTES]> {
    // SAFETY: this CPU's scratch slot (per-CPU map, valid for the run, no other user meanwhile).
    let scratch = unsafe { &mut *PYTHON_SCRATCH.get_ptr_mut(0)? };
    let bytes = scratch.get_mut(..len)?;
    // SAFETY: the helper copies from user memory and fails (no fault) on a bad address.
    unsafe { bpf_probe_read_user_buf(at as *const u8, bytes) }.ok()?;
    Some(scratch)
}

#[inline(always)]
fn step(walk: &mut Walk) -> Option<()> {
    if walk.frame == 0 || walk.frame == walk.base {
        return None;
    }
    let header = read_object(walk.frame, FRAME_HEADER_BYTES)?;
    let process = &walk.process;
    // 3.14+ tag the executable's low bits.
    let code = field(header, process.frame_code) & !EXECUTABLE_TAG_MASK;
    let instr = field(header, process.frame_instr);
    walk.frame = field(header, process.frame_previous);
    let marker = field(header, process.frame_marker) as u8;
    let shim = match process.marker {
        m if m == ActivationMarker::CStackOwner as u8 => marker == FRAME_OWNED_BY_CSTACK,
        m if m == ActivationMarker::NoneExecutable as u8 => code == process.none,
        _ => false,
    };
    if shim {
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
    push_frame(
        python_entry(code, offset, entry),
        &mut walk.depth,
        &mut walk.hash,
    )
}

/// Appends a Python frame's entry (see `python_entry`) to this CPU's scratch stack at `depth`,
/// and mixes it into `hash`; `None` when the stack is full. Both walkers end a frame so.
#[inline(always)]
fn push_frame(value: u64, depth: &mut u64, hash: &mut u64) -> Option<()> {
    let stack = STACK_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, valid for the run; the index is checked.
    let slot = unsafe { (*stack).ips.get_mut(*depth as usize)? };
    *slot = value;
    *hash = mix(*hash, value);
    *depth += 1;
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
