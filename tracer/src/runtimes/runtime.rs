//! What a runtime is to the rest of leaktracer: the [`Runtime`] trait a live trace drives, the
//! [`Rules`] reports apply to its frames (known without a trace: a recording is re-rendered with
//! them), and the plain types they speak in.

use std::os::fd::RawFd;

use tracer_common::programs::Program;

/// Takes a map out of the loaded eBPF object by name (`None`: the object has no such map).
pub type TakeMap<'a> = dyn FnMut(&'static str) -> Option<aya::maps::Map> + 'a;

/// Why a runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimesError {
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    MapType {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The map called `name`, as the typed handle `M`.
pub fn take_map<M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    take: &mut TakeMap,
    name: &'static str,
) -> Result<M, RuntimesError> {
    let map = take(name).ok_or(RuntimesError::MissingMap(name))?;
    M::try_from(map).map_err(|source| RuntimesError::MapType { name, source })
}

/// How reports treat a runtime's frames.
pub trait Rules: Sync {
    /// Its frames' `kind` in JSON, and their module in the text report (`python`).
    fn name(&self) -> &'static str;
    /// Its name in sentences (`Python`).
    fn title(&self) -> &'static str;
    /// Whether a frame of its code in `file` is its standard library (the frames around the
    /// program's own code, which the text report leaves out of its by-function view).
    fn in_standard_library(&self, file: &str) -> bool;
    /// Whether a native frame of `module`, rootward of the runtime's innermost frame (whose
    /// module is `runtime_module`), is the runtime itself at work between its frames, which
    /// renderings leave out.
    fn is_own_native_frame(&self, module: &str, runtime_module: &str) -> bool;
}

/// Entry points a runtime wants probed (its own allocator, where its picture freezes): probed
/// in the first object, in symbol-resolution order, that defines all of `required`.
#[derive(Clone, Debug)]
pub struct EntryFamily {
    /// Symbol and the eBPF entry program for it.
    pub points: Vec<(&'static str, &'static Program)>,
    pub required: Vec<&'static str>,
}

/// What a runtime's merge needs of a native frame of the stack.
#[derive(Clone, Copy, Debug)]
pub struct NativeFrame<'a> {
    pub function: &'a str,
    pub inlined: bool,
    /// Its return address in the process (the entry of the stack it came from).
    pub address: u64,
}

/// A frame of a runtime's code, named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeFrame {
    /// Its function (a qualified name where the runtime has one).
    pub function: String,
    /// The object that runs it (the interpreter).
    pub module: String,
    /// Its source.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Where the runtime keeps the function (a code object's address).
    pub address: u64,
}

/// One frame of a stack merged from native and runtime frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merged {
    /// The native frame at this index of the native frames.
    Native(usize),
    Runtime(RuntimeFrame),
}

/// A runtime in a live trace: it keeps the kernel maps its walk shares with userspace and an
/// instance per process it runs in (as the OpenTelemetry eBPF profiler's `interpreter.Data` and
/// `interpreter.Instance`), and keeps the names of a stack's frames once read, beyond the image
/// that ran them.
pub trait Runtime {
    /// The loader: looks for the runtime in `pid` (a new process, or a new image), and when it
    /// is there gives the kernel what its walker needs, so its frames are walked from now on.
    /// Says what it found (`verbose`: also what it walks); true when the runtime is there,
    /// walked or not.
    fn attach(&mut self, pid: u32, verbose: bool) -> bool;
    /// Forgets `pid`'s instance (it exec'd: the kernel dropped what its walker had with the
    /// old image); the names read from it stay.
    fn detach(&mut self, pid: u32);
    /// Whether its frames are walked in `pid`.
    fn runs_in(&self, pid: u32) -> bool;
    /// The descriptor that turns readable when the kernel announces new stacks with its frames.
    fn announcements(&self) -> Option<RawFd>;
    /// Names the frames of the stacks the kernel announced since the last call, while what
    /// names them still exists in the target (`stack`: a stack id's entries).
    fn read_new_stacks(&mut self, stack: &mut dyn FnMut(u64) -> Vec<u64>);
    /// Whether a stack entry is one of its frames (not a native return address).
    fn is_frame_entry(&self, ip: u64) -> bool;
    /// The stack `stack_id` of `pid` (its entries `ips`, innermost first) as native frames
    /// (`native`: its native entries, symbolized, innermost first) with the runtime's frames in
    /// place of the native frames that ran them.
    fn merge(
        &mut self,
        pid: u32,
        stack_id: u64,
        ips: &[u64],
        native: &[NativeFrame],
    ) -> Vec<Merged>;
    /// Where the kernel freezes its processes' picture and stops them (`Py_FinalizeEx`: the
    /// teardown that frees what names its frames), if it does (see [`EntryFamily`]).
    fn teardown(&self) -> Option<&'static str>;
    /// Why a reachability scan of `pid` says nothing, when it runs the runtime.
    fn reachability_note(&self, pid: u32) -> Option<String>;
}
