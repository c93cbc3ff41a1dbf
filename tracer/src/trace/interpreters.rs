//! The session's language runtimes (CPython), through the registry: a stack's frames with
//! each runtime's frames merged into the native ones, and the stacks the kernel announced
//! read while what names their frames (code objects) exists.

use tracer_common::StackKey;

use super::session::Session;
use crate::report;

impl Session<'_> {
    /// The frames of a stack, innermost first: native frames symbolized, and a runtime's
    /// frames (a CPython target's) in place of the native frames that ran them.
    pub(super) fn stack_frames(&mut self, key: &StackKey) -> Vec<report::Frame> {
        let ips = self.collector.stack(self.probes.maps(), key.stack_id);
        self.symbolizer.symbolize_with_runtimes(
            &self.spaces,
            &mut self.runtimes,
            key.tgid,
            key.stack_id,
            &ips,
        )
    }

    /// Names the runtime frames (Python's) of the stacks the kernel kept since the last poll,
    /// while what names them (code objects) exists.
    pub(super) fn read_runtime_stacks(&mut self) {
        let (collector, maps) = (&self.collector, self.probes.maps());
        self.runtimes
            .read_new_stacks(&mut |stack_id| collector.stack(maps, stack_id));
    }
}
