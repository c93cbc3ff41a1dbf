//! The launched command: run from its exec to its entry point (and from each later exec to
//! the new image's), stopped there while it is attached and its tables written; the processes
//! it leaves behind, reaped; how it ended.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use crate::{
    attach::{allocator::AttachPlan, probes::Probes},
    collect::Collector,
    error::TraceError,
    target::{
        launch::{ChildExit, LaunchedChild, Orphans, adopted, predict_loaded_objects},
        process::ProcessInfo,
    },
    terminal::eprintln_escaped,
};

/// How long a launched command may take from its exec to its entry point (the dynamic loader
/// mapping and relocating its libraries) before it is let go without waiting.
const LAUNCH_STOP_WAIT: Duration = Duration::from_secs(10);

/// Processes named in the note about those the command left running.
const NAMED_LEFT_BEHIND: usize = 5;

/// The command leaktracer launched, while the trace runs.
pub struct Launcher<'a> {
    child: &'a mut LaunchedChild,
    command: Vec<String>,
    /// `--empty-programs`: the programs return before the stop at exec.
    empty_programs: bool,
    /// `--follow-children`: what it leaves running is traced too.
    follow_children: bool,
    /// Its last exec stop followed (CLOCK_MONOTONIC ns of the exec).
    exec_followed_ns: u64,
    /// What it left running, adopted by leaktracer, to reap.
    orphans: Orphans,
}

impl<'a> Launcher<'a> {
    pub fn new(
        child: &'a mut LaunchedChild,
        command: &[String],
        empty_programs: bool,
        follow_children: bool,
    ) -> Self {
        Self {
            child,
            command: command.to_vec(),
            empty_programs,
            follow_children,
            exec_followed_ns: 0,
            orphans: Orphans::default(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid
    }

    /// The objects its loader will map, the program first.
    pub fn loaded_objects(&self) -> anyhow::Result<Vec<PathBuf>> {
        let program = &self.child.program;
        predict_loaded_objects(program)
            .with_context(|| format!("cannot tell which libraries {} loads", program.display()))
    }

    /// Lets the command exec, and runs it to its new image's entry point, where it stops
    /// (true) with its libraries mapped and none of its own code run. The kernel stops it at
    /// the exec itself first, so the entry probe goes on the file the kernel runs: the path
    /// resolved before the fork may name another file by now (a deploy or a rebuild renamed
    /// over it), whose probe would never fire. Without that stop (`--empty-programs` returns
    /// before it) the probe goes on `program` before the exec.
    pub fn launch_to_entry(
        &mut self,
        probes: &mut Probes,
        collector: &Collector,
        program: &Path,
    ) -> anyhow::Result<bool> {
        let pid = self.child.pid;
        let command = self.command.clone();
        if self.empty_programs || !probes.stop_at_exec(pid) {
            return Ok(self.run_to_entry(probes, program, |child| child.resume(&command))?);
        }
        self.child.resume(&command)?;
        if !self.child.wait_stopped(LAUNCH_STOP_WAIT) {
            eprintln_escaped!(
                "leaktracer: warning: {} did not stop at its exec; a program that exits at once may have no symbols",
                program.display()
            );
            return Ok(false);
        }
        // This exec is the launch, not news for `stopped_at_new_exec`.
        self.exec_followed_ns = collector.exec_time(probes.maps(), pid).unwrap_or_default();
        Ok(self.run_from_exec_to_entry(probes))
    }

    /// Stopped at an exec: let go to the new image's entry point (the file the kernel runs)
    /// and stopped there again (true), or let go without a stop when its probe cannot go in.
    pub fn run_from_exec_to_entry(&mut self, probes: &mut Probes) -> bool {
        let executable = PathBuf::from(format!("/proc/{}/exe", self.child.pid));
        let continued = self.run_to_entry(probes, &executable, |child| {
            child.continue_stopped();
            Ok(())
        });
        continued.unwrap_or(false)
    }

    /// Puts the stop at `executable`'s entry point, lets the command go (`let_go`), waits for
    /// that stop (true), and takes the probe out again.
    fn run_to_entry(
        &mut self,
        probes: &mut Probes,
        executable: &Path,
        let_go: impl FnOnce(&mut LaunchedChild) -> Result<(), TraceError>,
    ) -> Result<bool, TraceError> {
        let stops = attach_entry_stop(probes, executable, self.child.pid);
        let gone = let_go(self.child);
        let stopped = gone.is_ok() && stops && self.child.wait_stopped(LAUNCH_STOP_WAIT);
        probes.detach_launch_stop();
        gone.map(|()| stopped)
    }

    /// Stopped, and at an exec not followed yet (the kernel stops it there, see
    /// `Probes::stop_at_exec`): true, and that exec is followed from now. A stop where its
    /// picture froze (exit(), Py_FinalizeEx) is another part's; a stop that follows no exec
    /// (someone else's SIGSTOP) is left alone.
    pub fn stopped_at_new_exec(&mut self, probes: &Probes, collector: &Collector) -> bool {
        let pid = self.child.pid;
        if !self.child.has_stopped() || probes.maps().frozen.get(&pid, 0).is_ok() {
            return false;
        }
        // Compared with the last exec followed, not the last settled: a poll may have settled
        // this exec (and failed to attach the half-loaded image) before seeing the stop.
        let Some(exec_ns) = collector.exec_time(probes.maps(), pid) else {
            return false;
        };
        if exec_ns <= self.exec_followed_ns {
            return false;
        }
        self.exec_followed_ns = exec_ns;
        true
    }

    /// Lets it go from a stop.
    pub fn continue_stopped(&self) {
        self.child.continue_stopped();
    }

    /// Probes in the program itself (a statically linked allocator) went on the file its path
    /// named before the fork (`program`, planned in `plan`); warns when a file renamed over it
    /// since is what runs, which is not probed.
    pub fn warn_if_replaced(&self, plan: &AttachPlan, program: &Path) {
        let program = program.display().to_string();
        if let Some(planned) = plan.objects.iter().find(|o| o.display_path == program)
            && let Ok(running) = std::fs::metadata(format!("/proc/{}/exe", self.child.pid))
            && (running.dev(), running.ino()) != (planned.dev, planned.inode)
        {
            eprintln_escaped!(
                "leaktracer: warning: {program} was replaced on disk as it started: the probes in it are on the old file, so its own allocator's calls are not seen"
            );
        }
    }

    /// Reaps what it left behind that has exited.
    pub fn reap_orphans(&mut self) {
        self.orphans.reap_exited(self.child.pid);
    }

    /// True once it has exited and been reaped (a zombie is still "alive" in /proc).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_reap().is_some()
    }

    /// Its wait status, once it has been reaped.
    pub fn waited(&mut self) -> Option<(u32, ChildExit)> {
        self.child.try_reap()?;
        Some((self.child.pid, self.child.exit()?))
    }

    /// Without --follow-children: names the processes it left running when it exited (a
    /// daemon it forked; leaktracer adopted them), which were not traced.
    pub fn note_left_behind(&self) {
        if self.follow_children {
            return;
        }
        let left: Vec<(u32, String)> = adopted(self.child.pid)
            .into_iter()
            .map(|pid| {
                let comm = ProcessInfo::read(pid).map(|i| i.comm).unwrap_or_default();
                (pid, comm)
            })
            .collect();
        if let Some(note) = left_behind_note(&left) {
            eprintln_escaped!("{note}");
        }
    }
}

/// Puts the stop at `executable`'s entry point for `pid`; warns when it cannot.
fn attach_entry_stop(probes: &mut Probes, executable: &Path, pid: u32) -> bool {
    match probes.attach_launch_stop(executable, pid) {
        Ok(()) => true,
        Err(e) => {
            eprintln_escaped!(
                "leaktracer: warning: {e}; a program that exits at once may have no symbols, and with CFI unwinding its first allocations are walked by frame pointers"
            );
            false
        }
    }
}

/// The note naming the processes (pid, comm) the command left running, if any.
fn left_behind_note(left: &[(u32, String)]) -> Option<String> {
    if left.is_empty() {
        return None;
    }
    let mut named: Vec<String> = left
        .iter()
        .take(NAMED_LEFT_BEHIND)
        .map(|(pid, comm)| format!("pid {pid} ({comm})"))
        .collect();
    if left.len() > NAMED_LEFT_BEHIND {
        named.push(format!("and {} more", left.len() - NAMED_LEFT_BEHIND));
    }
    Some(format!(
        "leaktracer: note: the command exited and left {} process{} running, not traced: {}; with --follow-children the trace follows them (a daemon too) until they exit",
        left.len(),
        if left.len() == 1 { "" } else { "es" },
        named.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processes_left_behind_are_named_five_at_most() {
        assert_eq!(left_behind_note(&[]), None);
        assert_eq!(
            left_behind_note(&[(41, "redis-server".into())]).unwrap(),
            "leaktracer: note: the command exited and left 1 process running, not traced: pid 41 (redis-server); with --follow-children the trace follows them (a daemon too) until they exit"
        );
        let many: Vec<(u32, String)> = (1..=7).map(|pid| (pid, "worker".to_string())).collect();
        let note = left_behind_note(&many).unwrap();
        assert!(
            note.contains("left 7 processes running, not traced: pid 1 (worker), pid 2 (worker), pid 3 (worker), pid 4 (worker), pid 5 (worker), and 2 more;"),
            "{note}"
        );
    }

    /// A real command, launched stopped: let go, it runs to its end, and its wait status is
    /// what the report says of it.
    #[test]
    fn a_launched_command_s_end_is_its_wait_status() {
        let command = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        let mut child = LaunchedChild::spawn_stopped(&command).unwrap();
        let mut launcher = Launcher::new(&mut child, &command, false, false);
        assert!(!launcher.has_exited());
        assert!(launcher.waited().is_none());
        launcher.child.resume(&command).unwrap();
        let pid = launcher.pid();
        let waited = loop {
            if let Some(waited) = launcher.waited() {
                break waited;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(waited.0, pid);
        assert_eq!((waited.1.code, waited.1.signal), (Some(3), None));
        assert!(launcher.has_exited());
    }
}
