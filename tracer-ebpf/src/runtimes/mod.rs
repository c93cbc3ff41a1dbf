//! Language runtimes on the kernel side: the process's runtime, as userspace registered it in
//! `RUNTIME_PROCESSES` (see `tracer_common::runtimes`), and the dispatch to that runtime's
//! walker by its id. The native walker stops in the code ranges registered there, and `stack`
//! then calls [`append_runtime_frames`]; neither names a runtime. A runtime is one file here
//! (its walker and its own maps) and one arm in each dispatch below.

mod python;

use aya_ebpf::{macros::map, maps::HashMap};
use tracer_common::runtimes::{RuntimeId, RuntimeProcess, runtime_of};

use crate::maps::STACK_SCRATCH;

/// Traced processes that run a language runtime: tgid -> the runtime, the code ranges where the
/// native walk hands over to it, and what its walker needs. Written by userspace when it finds
/// the runtime; removed at exec.
#[map]
pub(crate) static RUNTIME_PROCESSES: HashMap<u32, RuntimeProcess> =
    HashMap::with_max_entries(4096, 0);

/// The runtime `tgid` runs, if userspace registered one.
#[inline(always)]
pub(crate) fn process(tgid: u32) -> Option<&'static RuntimeProcess> {
    // SAFETY: a map value, valid for the program's run.
    unsafe { RUNTIME_PROCESSES.get(tgid) }
}

/// Whether `tgid` runs a runtime whose frames userspace reads while the process lives.
#[inline(always)]
pub(crate) fn is_registered(tgid: u32) -> bool {
    process(tgid).is_some()
}

/// Appends the current thread's frames of `tgid`'s runtime, if it runs one, to this CPU's
/// scratch stack (holding the native frames, hashing to `hash`); returns the stack's hash.
///
/// A BPF global function (see `stack::capture_stack_at`): verified once per program, with
/// scalar arguments.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn append_runtime_frames(tgid: u32, hash: u64) -> u64 {
    match process(tgid) {
        Some(process) => append_frames(process, hash),
        None => hash,
    }
}

/// Appends the current thread's frames of `process`'s runtime to this CPU's scratch stack
/// (holding the native frames, hashing to `hash`); returns the stack's hash.
#[inline(always)]
fn append_frames(process: &RuntimeProcess, hash: u64) -> u64 {
    match process.runtime {
        r if r == RuntimeId::Python as u32 => python::append_frames(&process.data, hash),
        _ => hash,
    }
}

/// A stack was kept for the first time (it is in this CPU's scratch space): the runtime whose
/// frame ends it hears of it.
#[inline(always)]
pub(crate) fn stack_kept(tgid: u32, stack_id: u64) {
    let Some(stack) = STACK_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot, valid for the run; the index is checked.
    let last = unsafe {
        (*stack)
            .depth
            .checked_sub(1)
            .and_then(|i| (*stack).ips.get(i as usize).copied())
    };
    match last.and_then(runtime_of) {
        Some(id) if id == RuntimeId::Python as u64 => python::stack_kept(tgid, stack_id),
        _ => {}
    }
}

/// `tgid` exec'd: the new image runs none of the old one's runtimes.
#[inline(always)]
pub(crate) fn forget(tgid: u32) {
    // Fails when it had none.
    let _ = RUNTIME_PROCESSES.remove(tgid);
}
