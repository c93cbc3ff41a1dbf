//! `cargo xtask bench` (its table "Python on every interpreter", issue 26): the Python workload
//! (`xtask/bench/alloc.py`) under each interpreter the tests cover, natively, under leaktracer
//! default, under `-X tracemalloc=25` and under `memray run` where memray is importable; one row
//! per interpreter, each missing one named in its row.
//!
//! The interpreters are those of the tests' `every_interpreter()` (`tests/src/python.rs`):
//! pyenv's 3.9.18 to 3.13.0, Debian 12's `/usr/bin/python3.11`, and Debian unstable's python3.13,
//! 3.14 and 3.15 in `target/python-roots/sid` (run with `chroot`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    bench::{Config, Kind, Row, Workload},
    setup,
    util::{self, workspace_root},
};

/// Fewer than the other workloads' five: nine interpreters, each traced.
const REPETITIONS: usize = 3;
const ITERATIONS: &str = "100000";

/// Where a rooted interpreter finds the script.
const SCRIPT_IN_ROOT: &str = "/tmp/leaktracer-bench/alloc.py";

/// The configurations of each row, in its columns' order.
const CONFIGS: [Config; 4] = [
    Config::Native,
    Config::Leaktracer,
    Config::Tracemalloc,
    Config::Memray,
];

/// One interpreter of the table.
struct Interpreter {
    /// As the tests name it: `pyenv 3.10.13`, `debian python3.11`, `sid python3.14`.
    label: String,
    /// Its path as the process sees it (inside `root` when there is one).
    program: PathBuf,
    root: Option<PathBuf>,
}

impl Interpreter {
    fn host_path(&self) -> PathBuf {
        match &self.root {
            Some(root) => root.join(self.program.strip_prefix("/").unwrap_or(&self.program)),
            None => self.program.clone(),
        }
    }

    /// `program ARGS`, through `chroot` in a separate root.
    fn command(&self) -> Command {
        match &self.root {
            Some(root) => {
                let mut chroot = Command::new("chroot");
                chroot.arg(root).arg(&self.program);
                chroot
            }
            None => Command::new(&self.program),
        }
    }

    /// As it reports itself (`3.14.10`).
    fn version(&self) -> Option<String> {
        let out = self.command().arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.trim().strip_prefix("Python ")?.to_string();
        out.status.success().then_some(version)
    }
}

/// pyenv's interpreters of the table (the ones memray can be pip-installed into).
pub fn pyenv_programs() -> Vec<PathBuf> {
    let pyenv = setup::pyenv_root();
    ["3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"]
        .iter()
        .map(|version| {
            let minor = version.rsplit_once('.').map_or(*version, |(m, _)| m);
            pyenv.join(format!("versions/{version}/bin/python{minor}"))
        })
        .collect()
}

/// Every interpreter of the table, oldest first, as the tests' `every_interpreter()` has them.
fn every_interpreter() -> Vec<Interpreter> {
    let mut all: Vec<Interpreter> = pyenv_programs()
        .into_iter()
        .map(|program| Interpreter {
            label: format!(
                "pyenv {}",
                program
                    .components()
                    .rev()
                    .nth(2)
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            program,
            root: None,
        })
        .collect();
    all.push(Interpreter {
        label: "debian python3.11".into(),
        program: PathBuf::from("/usr/bin/python3.11"),
        root: None,
    });
    let sid = workspace_root().join("target/python-roots/sid");
    for minor in [13, 14, 15] {
        all.push(Interpreter {
            label: format!("sid python3.{minor}"),
            program: PathBuf::from(format!("/usr/bin/python3.{minor}")),
            root: Some(sid.clone()),
        });
    }
    all
}

/// A workload per interpreter, each a row of the table; a missing interpreter's row says why
/// it is skipped.
pub fn workloads() -> anyhow::Result<Vec<Workload>> {
    let script = workspace_root().join("xtask/bench/alloc.py");
    let mut workloads = Vec::new();
    for python in every_interpreter() {
        let missing = (!python.host_path().exists()).then(|| {
            format!(
                "{} not installed{}",
                python.host_path().display(),
                if python.root.is_some() {
                    " (run `cargo xtask setup`)"
                } else {
                    ""
                }
            )
        });
        let args = match &python.root {
            Some(root) if missing.is_none() => {
                let copy = root.join(SCRIPT_IN_ROOT.trim_start_matches('/'));
                fs::create_dir_all(copy.parent().expect("a directory"))?;
                fs::copy(&script, &copy)?;
                vec![SCRIPT_IN_ROOT.to_string(), ITERATIONS.into()]
            }
            _ => vec![script.display().to_string(), ITERATIONS.into()],
        };
        let version = missing.is_none().then(|| python.version()).flatten();
        let memray_missing = missing.clone().or_else(|| match &python.root {
            // Nothing is pip-installed into the root (and memray's capture path is the host's).
            Some(_) => Some("no memray in the root".to_string()),
            None => (!has_memray(&python.program)).then(|| "memray not importable".to_string()),
        });
        workloads.push(Workload {
            name: format!("Python on every interpreter: {}", python.label),
            kind: Kind::Python,
            program: python.program.clone(),
            root: python.root.clone(),
            args,
            repetitions: REPETITIONS,
            interpreter_row: Some(python.label.clone()),
            note: version,
            configs: CONFIGS
                .iter()
                .map(|config| {
                    let skipped = match config {
                        Config::Memray => memray_missing.clone(),
                        _ => missing.clone(),
                    };
                    (*config, skipped)
                })
                .collect(),
        });
    }
    Ok(workloads)
}

/// The table, from the rows of [`workloads`] (empty when none ran: a filtered run).
pub fn render(results: &[Row]) -> String {
    let mut interpreters: Vec<&Workload> = Vec::new();
    for row in results {
        if row.workload.interpreter_row.is_some()
            && !interpreters.iter().any(|w| std::ptr::eq(*w, row.workload))
        {
            interpreters.push(row.workload);
        }
    }
    if interpreters.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n### Python on every interpreter (per loop iteration)\n\n\
         `xtask/bench/alloc.py` ({ITERATIONS} iterations) under each interpreter the tests cover \
         (Debian unstable's in a root of their own, run with `chroot`), natively, under \
         leaktracer default, `python -X tracemalloc=25` and `memray run` (where memray is \
         importable). ns per loop iteration, medians of {REPETITIONS}; each ratio is over the \
         same interpreter's native run. leaktracer's notes (where it walks no Python frames or \
         sees no small objects, it costs less) follow the table.\n\n\
         | interpreter | Python | native | leaktracer | leaktracer / native | \
         tracemalloc | tracemalloc / native | memray | memray / native |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    let mut notes: Vec<String> = Vec::new();
    for workload in interpreters {
        let label = workload.interpreter_row.as_deref().unwrap_or_default();
        let row_of = |config: Config| {
            results
                .iter()
                .find(|r| std::ptr::eq(r.workload, workload) && r.config == config)
        };
        let native = row_of(Config::Native).and_then(Row::median_ns);
        if let Some(why) = row_of(Config::Native).and_then(|r| r.skipped.as_deref()) {
            out.push_str(&format!(
                "| {label} | skipped: {why} | - | - | - | - | - | - | - |\n"
            ));
            continue;
        }
        let mut cells = vec![
            label.to_string(),
            workload.note.clone().unwrap_or_else(|| "?".into()),
            native.map_or("-".into(), |ns| format!("{ns:.0}")),
        ];
        for config in [Config::Leaktracer, Config::Tracemalloc, Config::Memray] {
            let row = row_of(config);
            match (row.and_then(Row::median_ns), native) {
                (Some(ns), Some(native)) => {
                    cells.push(format!("{ns:.0}"));
                    cells.push(format!("{:.1}×", ns / native));
                }
                _ => {
                    let why = row.and_then(|r| r.skipped.as_deref()).unwrap_or("-");
                    cells.push(why.to_string());
                    cells.push("-".into());
                }
            }
            if config == Config::Leaktracer {
                let runs = row.map_or(&[][..], |r| r.runs.as_slice());
                for note in runs.iter().flat_map(|r| &r.notes) {
                    // The pid differs between runs: the note without it.
                    let text = note.trim_start_matches("leaktracer: note: ");
                    let text = text
                        .split_once(": ")
                        .filter(|(pid, _)| pid.starts_with("pid "));
                    let line = format!("- {label}: {}", text.map_or(note.as_str(), |(_, t)| t));
                    if !notes.contains(&line) {
                        notes.push(line);
                    }
                }
            }
        }
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    if !notes.is_empty() {
        out.push_str(&format!("\nleaktracer's notes:\n\n{}\n", notes.join("\n")));
    }
    out
}

/// Whether `program` (a host interpreter) can import memray.
pub fn has_memray(program: &Path) -> bool {
    util::succeeds(Command::new(program).args(["-c", "import memray"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Run;

    fn workload(label: &str, version: Option<&str>, missing: Option<&str>) -> Workload {
        Workload {
            name: format!("Python on every interpreter: {label}"),
            kind: Kind::Python,
            program: PathBuf::from("/usr/bin/python3"),
            root: None,
            args: Vec::new(),
            repetitions: REPETITIONS,
            interpreter_row: Some(label.to_string()),
            note: version.map(str::to_string),
            configs: CONFIGS
                .iter()
                .map(|c| (*c, missing.map(str::to_string)))
                .collect(),
        }
    }

    fn runs(ns: &[f64], note: Option<&str>) -> Vec<Run> {
        ns.iter()
            .map(|&ns_per_op| {
                let mut run = Run::default();
                run.ns_per_op = ns_per_op;
                run.notes = note.map(str::to_string).into_iter().collect();
                run
            })
            .collect()
    }

    #[test]
    fn a_row_per_interpreter_the_missing_named_and_notes_once() {
        let present = workload("sid python3.14", Some("3.14.10"), None);
        let missing = workload("pyenv 3.9.18", None, Some("/x/python3.9 not installed"));
        let note = "leaktracer: note: pid 42: CPython 3.14.10 is not a version leaktracer knows";
        let mut results = vec![
            Row {
                workload: &present,
                config: Config::Native,
                runs: runs(&[100.0, 90.0, 110.0], None),
                skipped: None,
            },
            Row {
                workload: &present,
                config: Config::Leaktracer,
                runs: runs(&[1000.0, 900.0, 950.0], Some(note)),
                skipped: None,
            },
            Row {
                workload: &present,
                config: Config::Tracemalloc,
                runs: runs(&[300.0, 300.0, 300.0], None),
                skipped: None,
            },
            Row {
                workload: &present,
                config: Config::Memray,
                runs: Vec::new(),
                skipped: Some("no memray in the root".into()),
            },
        ];
        for config in CONFIGS {
            results.push(Row {
                workload: &missing,
                config,
                runs: Vec::new(),
                skipped: Some("/x/python3.9 not installed".into()),
            });
        }
        let table = render(&results);
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            lines[1..],
            [
                "| sid python3.14 | 3.14.10 | 100 | 950 | 9.5× | 300 | 3.0× | no memray in the root | - |",
                "| pyenv 3.9.18 | skipped: /x/python3.9 not installed | - | - | - | - | - | - | - |",
            ]
        );
        assert!(
            table.ends_with(
                "leaktracer's notes:\n\n- sid python3.14: CPython 3.14.10 is not a version \
                 leaktracer knows\n"
            ),
            "{table}"
        );
    }

    #[test]
    fn a_filtered_run_without_these_rows_has_no_table() {
        assert_eq!(render(&[]), "");
    }
}
