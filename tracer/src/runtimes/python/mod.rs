//! CPython 3.9-3.15: finding the interpreter in a process (`interpreter`, the loader; where
//! its eval loop is, `eval_loop`), the layouts of the versions known (`layout`: tables, or the
//! interpreter's own debug offsets), naming frames from code objects (`code`, `lines`),
//! merging them into native stacks (`merge`), and [`Python`], the runtime a trace drives: what
//! it hands the kernel's walk (`tracer-ebpf/src/runtimes/python.rs`) through `RUNTIME_PROCESSES`,
//! and the stacks the walk announces on `PYTHON_STACKS`. Also what to probe for it (pymalloc, and
//! `Py_FinalizeEx` and `Py_Exit`, where its picture freezes) and how reports treat its frames
//! ([`RULES`]).

pub mod allocators;
pub mod code;
pub mod eval_loop;
pub mod interpreter;
pub mod layout;
pub mod lines;
pub mod merge;

use std::os::fd::{AsRawFd, RawFd};

use aya::maps::{HashMap, MapData, RingBuf};
use tracer_common::{
    programs::{
        self, INTERPRETER_EXIT, PYMALLOC_CALLOC_ENTER, PYMALLOC_FREE_ENTER, PYMALLOC_MALLOC_ENTER,
        PYMALLOC_REALLOC_ENTER,
    },
    python::{NewPythonStack, PythonFrame},
    runtimes::{RuntimeId as KernelRuntimeId, RuntimeProcess},
};

use super::{EntryFamily, Merged, NativeFrame, Rules, Runtime, RuntimesError, TakeMap, take_map};
use crate::terminal::eprintln_escaped;
use code::CodeObjects;
use interpreter::Found;

/// Where CPython tears down: the kernel freezes the picture there.
const TEARDOWN: &str = "Py_FinalizeEx";
/// Where `sys.exit()` ends a script: 3.13+ tear down from there without calling the exported
/// `Py_FinalizeEx` (they call the function behind it), so it freezes the picture too.
const EXIT: &str = "Py_Exit";

/// How reports treat Python frames.
pub struct PythonRules;

pub static RULES: PythonRules = PythonRules;

impl Rules for PythonRules {
    fn name(&self) -> &'static str {
        "python"
    }

    fn title(&self) -> &'static str {
        "Python"
    }

    /// The interpreter's standard library (`.../lib/python3.X/`, not its `site-packages`), or
    /// frozen into the interpreter (`<frozen importlib._bootstrap>`).
    fn in_standard_library(&self, file: &str) -> bool {
        file.starts_with("<frozen ")
            || (file.contains("/lib/python3") && !file.contains("-packages/"))
    }

    /// The interpreter's C frames (the eval loop's calls between Python functions); C
    /// extensions and the thread's start stay.
    fn is_own_native_frame(&self, module: &str, runtime_module: &str) -> bool {
        module == runtime_module
    }
}

/// What to probe for CPython by symbol: its small-object allocator where the interpreter has
/// its symbols (pyenv and most self-built CPythons: .symtab; [`allocators`] finds it on every
/// build, stripped ones too, through its allocator tables), and its teardown (in the
/// executable, or libpython), where the picture freezes: `Py_FinalizeEx`, and `Py_Exit` where
/// present.
pub fn entry_families() -> Vec<EntryFamily> {
    vec![
        EntryFamily {
            points: vec![
                ("_PyObject_Malloc", &PYMALLOC_MALLOC_ENTER),
                ("_PyObject_Calloc", &PYMALLOC_CALLOC_ENTER),
                ("_PyObject_Realloc", &PYMALLOC_REALLOC_ENTER),
                ("_PyObject_Free", &PYMALLOC_FREE_ENTER),
            ],
            required: vec!["_PyObject_Malloc", "_PyObject_Free"],
        },
        EntryFamily {
            points: vec![(TEARDOWN, &INTERPRETER_EXIT), (EXIT, &INTERPRETER_EXIT)],
            required: vec![TEARDOWN],
        },
    ]
}

/// CPython in a trace: the kernel maps of its walk, and the code objects of every interpreter.
pub struct Python {
    /// The kernel's processes that run a runtime: tgid -> the runtime, where the native walk
    /// hands over to it (the eval loop), and its interpreter's layout. Python's entries only
    /// today; a second runtime would share this map, so it should then move to the registry.
    processes: HashMap<MapData, u32, RuntimeProcess>,
    /// New stacks with Python frames ([`NewPythonStack`]).
    new_stacks: RingBuf<MapData>,
    /// The Python frames of CPython targets, named.
    codes: CodeObjects,
}

impl Python {
    /// Takes the maps of the Python walk out of the loaded object.
    pub fn load(take: &mut TakeMap) -> Result<Box<dyn Runtime>, RuntimesError> {
        Ok(Box::new(Self {
            processes: take_map(take, programs::maps::RUNTIME_PROCESSES)?,
            new_stacks: take_map(take, programs::maps::PYTHON_STACKS)?,
            codes: CodeObjects::default(),
        }))
    }

    /// The (tgid, stack id) of the stacks with Python frames the kernel kept since the last
    /// call.
    fn announced(&mut self) -> Vec<(u32, u64)> {
        let mut stacks = Vec::new();
        while let Some(item) = self.new_stacks.next() {
            if item.len() >= size_of::<NewPythonStack>() {
                // SAFETY: the kernel wrote a whole NewPythonStack; read_unaligned copes with
                // any alignment of the ring's data.
                let new =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<NewPythonStack>()) };
                stacks.push((new.tgid, new.stack_id));
            }
        }
        stacks
    }
}

impl Runtime for Python {
    /// Looks for CPython in `pid`: when found, the kernel walks its Python frames from now on;
    /// an interpreter it does not know is said once and traced natively.
    fn attach(&mut self, pid: u32, verbose: bool) -> bool {
        match interpreter::find(pid) {
            Found::Nothing => return false,
            Found::Unsupported(note) => eprintln_escaped!("leaktracer: note: pid {pid}: {note}"),
            Found::Python(interpreter) => {
                let entry = RuntimeProcess::new(
                    KernelRuntimeId::Python,
                    &interpreter.eval_loop,
                    interpreter
                        .layout
                        .kernel_entry(interpreter.thread, interpreter.none)
                        .to_runtime_data(),
                );
                if let Err(e) = self.processes.insert(pid, entry, 0) {
                    eprintln_escaped!(
                        "leaktracer: warning: pid {pid}: cannot walk its Python frames: {e}"
                    );
                    return true;
                }
                if verbose {
                    let [hot, cold] = interpreter.eval_loop;
                    eprintln_escaped!(
                        "leaktracer: pid {pid} runs CPython {} ({}): its stacks get Python frames (eval loop {:#x}-{:#x}{})",
                        interpreter.version_text(),
                        interpreter.module,
                        hot[0],
                        hot[1],
                        if cold[0] < cold[1] {
                            format!(", its split-off part {:#x}-{:#x}", cold[0], cold[1])
                        } else {
                            String::new()
                        }
                    );
                }
                self.codes.track(pid, interpreter);
            }
        }
        true
    }

    fn detach(&mut self, pid: u32) {
        // The kernel dropped its RUNTIME_PROCESSES entry at the exec.
        self.codes.forget(pid);
    }

    fn runs_in(&self, pid: u32) -> bool {
        self.codes.interpreter(pid).is_some()
    }

    fn announcements(&self) -> Option<RawFd> {
        Some(self.new_stacks.as_raw_fd())
    }

    fn read_new_stacks(&mut self, stack: &mut dyn FnMut(u64) -> Vec<u64>) {
        self.codes.next_batch();
        for (pid, stack_id) in self.announced() {
            let ips = stack(stack_id);
            self.codes.read_stack(pid, stack_id, &ips);
        }
    }

    fn is_frame_entry(&self, ip: u64) -> bool {
        PythonFrame::from_entry(ip).is_some()
    }

    fn merge(
        &mut self,
        pid: u32,
        stack_id: u64,
        ips: &[u64],
        native: &[NativeFrame],
    ) -> Vec<Merged> {
        let python = self.codes.frames(pid, stack_id, ips);
        let eval_loop = self
            .codes
            .interpreter(pid)
            .map_or([[0, 0]; 2], |interpreter| interpreter.eval_loop);
        merge::merge(native, python, &eval_loop)
    }

    fn teardown(&self) -> Option<&'static str> {
        Some(TEARDOWN)
    }

    fn reachability_note(&self, pid: u32) -> Option<String> {
        self.runs_in(pid).then(|| format!(
            "pid {pid} is a Python interpreter: its objects stay reachable by design (the interpreter keeps them), so reachability says nothing there; look at growth instead"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_standard_library_is_told_from_the_program() {
        for file in [
            "/usr/lib/python3.11/threading.py",
            "/root/.pyenv/versions/3.12.1/lib/python3.12/socketserver.py",
            "<frozen importlib._bootstrap>",
        ] {
            assert!(RULES.in_standard_library(file), "{file}");
        }
        for file in [
            "/srv/app/service.py",
            "/usr/lib/python3/dist-packages/flask/app.py",
            "/venv/lib/python3.12/site-packages/werkzeug/serving.py",
        ] {
            assert!(!RULES.in_standard_library(file), "{file}");
        }
    }
}
