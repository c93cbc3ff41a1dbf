//! The runtime allocator tables redirected in traced processes (see
//! [`crate::runtimes::allocator_table`]): made once a process's probes are in, forgotten when its
//! image goes (an exec or its exit take the table with them), undone at detach, and undone
//! when a trace ends in error too (on drop).

use std::collections::BTreeMap;

use crate::{
    attach::allocator::AttachPlan,
    runtimes::allocator_table::{AppliedRedirect, RedirectError},
    target::process::is_alive,
    terminal::eprintln_escaped,
};

/// The redirects in place, by process.
#[derive(Default)]
pub struct Redirects {
    applied: BTreeMap<u32, Vec<AppliedRedirect>>,
    verbose: bool,
}

impl Redirects {
    pub fn new(verbose: bool) -> Self {
        Self {
            applied: BTreeMap::new(),
            verbose,
        }
    }

    /// Makes the redirects of `plan` in `pid` (attached with it), and says the plan's notes.
    pub fn apply(&mut self, pid: u32, plan: &AttachPlan) {
        for note in &plan.notes {
            eprintln_escaped!("leaktracer: note: pid {pid}: {note}");
        }
        for redirect in &plan.redirects {
            match redirect.apply(pid) {
                Ok(applied) => {
                    if self.verbose {
                        eprintln_escaped!(
                            "leaktracer: pid {pid}: {} redirected to probed entries ({} of {} table slots written{}; restored at detach)",
                            redirect.what,
                            applied.changed,
                            redirect.slots.len(),
                            if applied.changed < redirect.slots.len() {
                                ", the others were already"
                            } else {
                                ""
                            }
                        );
                        for (address, original, redirected) in applied.slots_in_process() {
                            eprintln_escaped!(
                                "leaktracer: pid {pid}: {} slot {address:#x}: {original:#x} -> {redirected:#x}",
                                redirect.what
                            );
                        }
                    }
                    self.applied.entry(pid).or_default().push(applied);
                }
                // Gone meanwhile: nothing to see any more.
                Err(_) if !is_alive(pid) => {}
                Err(error) => {
                    eprintln_escaped!(
                        "leaktracer: note: pid {pid}: {} not redirected to probed entries ({error}): {}",
                        redirect.what,
                        redirect.missed
                    );
                }
            }
        }
    }

    /// `pid`'s image is gone (an exec, its exit): its redirects went with it.
    pub fn forget(&mut self, pid: u32) {
        self.applied.remove(&pid);
    }

    /// Points every redirected table back at its functions.
    pub fn restore_all(&mut self) {
        for (pid, applied) in std::mem::take(&mut self.applied) {
            for redirect in applied {
                let result = redirect.restore();
                self.say_restored(pid, &redirect, result);
            }
        }
    }

    fn say_restored(
        &self,
        pid: u32,
        redirect: &AppliedRedirect,
        result: Result<(usize, usize), RedirectError>,
    ) {
        let what = &redirect.redirect.what;
        match result {
            Ok((written, 0)) if self.verbose => {
                eprintln_escaped!(
                    "leaktracer: pid {pid}: {what} restored ({written} table slots written)"
                );
            }
            Ok((_, 0)) => {}
            Ok((written, left)) => eprintln_escaped!(
                "leaktracer: note: pid {pid}: {what} restored in part ({written} table slots written; {left} left as the process itself set them since)"
            ),
            // Gone, or exec'd: nothing of the table is left.
            Err(RedirectError::NotMapped(_)) => {}
            Err(_) if !is_alive(pid) => {}
            Err(error) => eprintln_escaped!(
                "leaktracer: warning: pid {pid}: {what} not restored ({error}); its calls keep going through the other entries of the same functions, which is harmless"
            ),
        }
    }
}

impl Drop for Redirects {
    fn drop(&mut self) {
        self.restore_all();
    }
}
