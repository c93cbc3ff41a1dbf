//! The unwind tables the kernel walks each traced process's stacks by (`--unwind cfi`), kept
//! up to date with what it maps.

use std::{io, time::Duration};

use crate::{report::UnwindStats, terminal::eprintln_escaped, unwind::TablesInMaps};

/// A write of one process's tables that takes longer than this is said without --verbose.
const SLOW_WRITE: Duration = Duration::from_secs(1);

/// The traced processes' unwind tables in the kernel; none with `--unwind frame-pointers`.
pub struct UnwindTables {
    tables: Option<TablesInMaps>,
    /// Say every write, not only slow ones.
    verbose: bool,
}

/// What follows a write of one process's tables.
#[derive(Debug, PartialEq)]
enum Written {
    /// Unchanged, or written quickly.
    Quiet,
    Say(String),
    /// The process is gone: its tables go too.
    Forget,
    Warn(String),
}

/// What to make of `pid`'s tables written with `result` in `took`.
fn written(pid: u32, result: io::Result<bool>, took: Duration, verbose: bool) -> Written {
    match result {
        Ok(true) if verbose || took > SLOW_WRITE => Written::Say(format!(
            "leaktracer: pid {pid}: unwind tables written in {:.2} s",
            took.as_secs_f64()
        )),
        Ok(_) => Written::Quiet,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Written::Forget,
        Err(e) => Written::Warn(format!(
            "leaktracer: warning: pid {pid}: {e}; its stacks are walked by frame pointers"
        )),
    }
}

impl UnwindTables {
    pub fn new(tables: Option<TablesInMaps>, verbose: bool) -> Self {
        Self { tables, verbose }
    }

    /// Writes `pid`'s tables for what it maps now, when they changed. A process that exited
    /// meanwhile has none.
    pub fn update(&mut self, pid: u32) {
        let Some(tables) = self.tables.as_mut() else {
            return;
        };
        let started = std::time::Instant::now();
        let result = tables.update(pid);
        match written(pid, result, started.elapsed(), self.verbose) {
            Written::Quiet => {}
            Written::Say(line) | Written::Warn(line) => eprintln_escaped!("{line}"),
            Written::Forget => tables.remove(pid),
        }
    }

    /// Forgets `pid`'s tables (it exited, or exec'd: the kernel dropped them).
    pub fn remove(&mut self, pid: u32) {
        if let Some(tables) = self.tables.as_mut() {
            tables.remove(pid);
        }
    }

    /// For the report: how much of the tables' room is used; none without CFI unwinding.
    pub fn stats(&self) -> Option<UnwindStats> {
        self.tables.as_ref().map(TablesInMaps::stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_said_when_slow_or_verbose_and_a_gone_process_is_forgotten() {
        let quick = Duration::from_millis(20);
        let slow = Duration::from_millis(1500);
        assert_eq!(written(7, Ok(true), quick, false), Written::Quiet);
        assert_eq!(written(7, Ok(false), slow, true), Written::Quiet);
        assert_eq!(
            written(7, Ok(true), slow, false),
            Written::Say("leaktracer: pid 7: unwind tables written in 1.50 s".to_string())
        );
        assert_eq!(
            written(7, Ok(true), quick, true),
            Written::Say("leaktracer: pid 7: unwind tables written in 0.02 s".to_string())
        );
        let gone = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(written(7, Err(gone), quick, true), Written::Forget);
        let refused = io::Error::other("the tables are full");
        assert_eq!(
            written(7, Err(refused), quick, false),
            Written::Warn(
                "leaktracer: warning: pid 7: the tables are full; its stacks are walked by frame pointers"
                    .to_string()
            )
        );
    }

    #[test]
    fn without_cfi_unwinding_there_is_nothing_to_write_or_report() {
        let mut tables = UnwindTables::new(None, true);
        tables.update(std::process::id());
        tables.remove(std::process::id());
        assert_eq!(tables.stats(), None);
    }
}
