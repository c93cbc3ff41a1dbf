//! The session's CPython targets: found in each process (once per image), their Python frames
//! walked by the kernel, named while their code objects exist, and merged into the native
//! stacks.

use tracer_common::{StackKey, python::PythonFrame};

use super::session::Session;
use crate::{python::interpreter::Found, report, terminal::eprintln_escaped};

impl Session<'_> {
    /// The frames of a stack, innermost first: native frames symbolized, and a CPython
    /// target's Python frames in place of the eval-loop frames that ran them.
    pub(super) fn stack_frames(&mut self, key: &StackKey) -> Vec<report::Frame> {
        let ips = self.collector.stack(self.probes.maps(), key.stack_id);
        let native: Vec<u64> = ips
            .iter()
            .copied()
            .filter(|ip| PythonFrame::from_entry(*ip).is_none())
            .collect();
        let frames = self
            .symbolizer
            .symbolize_stack(&self.spaces, key.tgid, &native);
        if native.len() == ips.len() {
            return frames;
        }
        let python = self.python.frames(key.tgid, key.stack_id, &ips);
        crate::python::merge::merge(frames, python)
    }

    /// Looks for CPython in `pid` (once per image): when found, the kernel walks its Python
    /// frames from now on; an interpreter it does not know is said once and traced natively.
    pub(super) fn update_python(&mut self, pid: u32) {
        if !self.python_checked.insert(pid) {
            return;
        }
        match crate::python::interpreter::find(pid) {
            Found::Nothing => {}
            Found::Unsupported(note) => eprintln_escaped!("leaktracer: note: pid {pid}: {note}"),
            Found::Python(interpreter) => {
                use tracer_common::runtimes::{RuntimeId, RuntimeProcess};
                let entry = RuntimeProcess::new(
                    RuntimeId::Python,
                    &interpreter.eval_loop,
                    interpreter
                        .layout
                        .kernel_entry(interpreter.runtime, interpreter.none)
                        .to_runtime_data(),
                );
                if let Err(e) = self
                    .probes
                    .maps_mut()
                    .runtime_processes
                    .insert(pid, entry, 0)
                {
                    eprintln_escaped!(
                        "leaktracer: warning: pid {pid}: cannot walk its Python frames: {e}"
                    );
                    return;
                }
                if self.verbose {
                    eprintln_escaped!(
                        "leaktracer: pid {pid} runs CPython {} ({}): its stacks get Python frames",
                        interpreter.version_text(),
                        interpreter.module
                    );
                }
                if !interpreter.small_objects_seen {
                    eprintln_escaped!(
                        "leaktracer: note: pid {pid}: CPython {} in {} has its small-object allocator inlined (no symbols to probe): objects of 512 bytes or less are not seen; run it with PYTHONMALLOC=malloc to see them",
                        interpreter.version_text(),
                        interpreter.module
                    );
                }
                self.python.track(pid, interpreter);
            }
        }
    }

    /// Names the Python frames of the stacks the kernel kept since the last poll, while their
    /// code objects exist.
    pub(super) fn read_python_stacks(&mut self) {
        self.python.next_batch();
        for (pid, stack_id) in self.collector.new_python_stacks(self.probes.maps_mut()) {
            let ips = self.collector.stack(self.probes.maps(), stack_id);
            self.python.read_stack(pid, stack_id, &ips);
        }
    }
}
