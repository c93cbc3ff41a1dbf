//! End-to-end: CPython targets. What a script leaked is reported although the interpreter's
//! teardown frees it (the picture freezes at `Py_FinalizeEx`), small objects included (pymalloc
//! is probed, on distribution builds too), at the Python function, file and line that allocated
//! it.

use std::path::{Path, PathBuf};

use leaktracer_e2e::*;
use serde_json::Value;

/// Sums the stacks whose bytes are all blocks of `size`: (allocations, bytes).
fn blocks_of(report: &Value, size: u64) -> (u64, u64) {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["outstanding_allocations"].as_u64().unwrap(),
                s["outstanding_bytes"].as_u64().unwrap(),
            )
        })
        .filter(|&(n, bytes)| n > 0 && bytes == n * size)
        .fold((0, 0), |(n, b), (sn, sb)| (n + sn, b + sb))
}

/// The Python frames of `stack`, innermost first: (function, file, line).
fn python_lines(stack: &Value) -> Vec<(String, String, u64)> {
    python_frames(stack)
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("?").to_string(),
                f["file"].as_str().unwrap_or("?").to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn trace_script(dir: &Path, python: &Path) -> (Finished, Value) {
    let json = dir.join(format!(
        "{}.json",
        python.to_string_lossy().replace('/', "_")
    ));
    let script = workspace_root().join("tests/workloads/py_cache_exit.py");
    trace_launched(
        &json,
        &[],
        &[python.to_str().unwrap(), script.to_str().unwrap()],
    )
}

#[test]
fn a_script_that_exits_still_reports_what_it_held() {
    require_root();
    let dir = scratch_dir("python-exit");
    let script = workspace_root().join("tests/workloads/py_cache_exit.py");
    let script = script.to_str().unwrap();
    // The host's interpreters (pyenv 3.9 to 3.13, Debian's 3.11).
    for interpreter in every_interpreter().into_iter().filter(|i| i.root.is_none()) {
        let python = interpreter.program.clone();
        let (done, report) = trace_script(&dir, &python);
        assert_eq!(report["end_reason"], "target exited");
        // Exactly the 2000 buffers the dict held when the script ended.
        assert_eq!(
            blocks_of(&report, 3001),
            (2000, 2000 * 3001),
            "{}: {}",
            python.display(),
            done.stderr
        );
        // Each at the line that made it, called from the loop's line.
        let buffers = stacks_of_blocks(&report, 3001);
        let want = vec![
            ("remember".to_string(), script.to_string(), 10),
            ("<module>".to_string(), script.to_string(), 14),
        ];
        for stack in &buffers {
            assert_eq!(
                python_lines(stack),
                want,
                "{}: {}",
                interpreter.label,
                stacks_text(&buffers, 5)
            );
        }
        // Small objects come from pymalloc, probed on every build (through its allocator
        // tables where no symbol names it; distribution builds' tables redirected): the 20000
        // floats the list holds, and the few other 24-byte objects alive then.
        let (floats, _) = blocks_of(&report, 24);
        assert!(
            (20_000..20_100).contains(&floats),
            "{}: {floats} blocks of 24 bytes",
            python.display()
        );
        let process = &report["processes"][0];
        assert!(
            process["frozen_at_secs"].as_f64().is_some(),
            "{}: {process}",
            python.display()
        );
        assert!(done.stderr.contains("Py_FinalizeEx"), "{}", done.stderr);
        assert!(
            done.stdout
                .contains("figures as of its interpreter's teardown"),
            "{}",
            done.stdout
        );
    }
}

/// A CPython whose frames leaktracer does not know (3.8) is traced natively, said in one line,
/// never mis-walked: no frame of its report is a Python frame.
#[test]
fn an_unknown_interpreter_is_traced_natively_with_a_note() {
    require_root();
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let python = pyenv.join("versions/3.8.18/bin/python3.8");
    if !python.exists() {
        eprintln!("SKIP for {}: not installed", python.display());
        return;
    }
    let dir = scratch_dir("python-unknown");
    let (done, report) = trace_script(&dir, &python);
    let notes: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("older than 3.9"))
        .collect();
    assert_eq!(notes.len(), 1, "{}", done.stderr);
    let stacks = report["stacks"].as_array().unwrap();
    assert!(
        stacks
            .iter()
            .flat_map(|s| s["frames"].as_array().unwrap())
            .all(|f| f["kind"] == "native"),
        "a Python frame in a 3.8 report"
    );
    // Still traced: the script's 2000 buffers are there, by native stacks.
    assert_eq!(blocks_of(&report, 3001), (2000, 2000 * 3001));
}
