//! End-to-end: CPython targets. What a script leaked is reported although the interpreter's
//! teardown frees it (the picture freezes at `Py_FinalizeEx`, or at `Py_Exit` for a
//! `sys.exit()`), on every interpreter the tests cover, small objects included (pymalloc is
//! probed, on distribution builds too), at the Python function, file and line that allocated
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

/// Each block the script keeps in its dict (3000 bytes of content, 33 of header and NUL).
const CACHED_BLOCK: u64 = 3033;

/// Launches the exit script under `python` (`args`: its own), traced until it exits.
fn trace_script(dir: &Path, python: &Interpreter, args: &[&str]) -> (Finished, Value) {
    let json = dir.join(format!(
        "{}{}.json",
        python.label.replace(' ', "-"),
        args.join("-")
    ));
    let script = workspace_root().join("tests/workloads/py_cache_exit.py");
    let argv = python.argv(&script, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    trace_launched(&json, &[], &argv)
}

/// The script's figures at its end, on `python`, whether it ran off its end (`args` empty) or
/// called `sys.exit()`: what a failure says, or `None`.
fn exit_failure(dir: &Path, python: &Interpreter, args: &[&str]) -> Option<String> {
    let (done, report) = trace_script(dir, python, args);
    let what = format!("{} {args:?}", python.label);
    if report["end_reason"] != "target exited" {
        return Some(format!("{what}: ended by {}", report["end_reason"]));
    }
    // Exactly the 2000 buffers the dict held when the script ended.
    let cached = blocks_of(&report, CACHED_BLOCK);
    if cached != (2000, 2000 * CACHED_BLOCK) {
        return Some(format!(
            "{what}: {cached:?} blocks of {CACHED_BLOCK}: {}",
            done.stderr
        ));
    }
    // Each at the line that made it, called from the loop's line (the script as the
    // interpreter sees it: inside its root for a separate one).
    let script = python
        .script_path(&workspace_root().join("tests/workloads/py_cache_exit.py"))
        .display()
        .to_string();
    let want = vec![
        ("remember".to_string(), script.clone(), 14),
        ("<module>".to_string(), script, 18),
    ];
    let buffers = stacks_of_blocks(&report, CACHED_BLOCK);
    if let Some(stack) = buffers.iter().find(|s| python_lines(s) != want) {
        return Some(format!(
            "{what}: frames {:?}, not {want:?}",
            python_lines(stack)
        ));
    }
    // Small objects come from pymalloc, probed on every build (through its allocator tables
    // where no symbol names it; distribution builds' tables redirected): the 20000 floats the
    // list holds, and the few other 24-byte objects alive then.
    let (floats, _) = blocks_of(&report, 24);
    if !(20_000..20_100).contains(&floats) {
        return Some(format!("{what}: {floats} blocks of 24 bytes"));
    }
    let process = &report["processes"][0];
    if process["frozen_at_secs"].as_f64().is_none() {
        return Some(format!("{what}: not frozen: {process}"));
    }
    if !done.stderr.contains("Py_FinalizeEx") {
        return Some(format!("{what}: no teardown said: {}", done.stderr));
    }
    if !done
        .stdout
        .contains("figures as of its interpreter's teardown")
    {
        return Some(format!("{what}: the report says no teardown"));
    }
    None
}

/// On every interpreter, whichever way the script ends: by running off its end (CPython's
/// `Py_FinalizeEx`), or by `sys.exit()` (3.13+ tear down from `Py_Exit` without calling it).
#[test]
fn a_script_that_exits_still_reports_what_it_held() {
    require_root();
    let dir = scratch_dir("python-exit");
    let mut failures = Vec::new();
    for python in every_interpreter() {
        for args in [&[][..], &["sys-exit"][..]] {
            failures.extend(exit_failure(&dir, &python, args));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A CPython whose frames leaktracer does not know (3.8: older than 3.9) is traced natively,
/// said in one line, never mis-walked: no frame of its report is a Python frame.
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
    let python = Interpreter {
        label: "pyenv 3.8.18".into(),
        version: (3, 8),
        root: None,
        program: python,
        distribution_build: false,
    };
    let (done, report) = trace_script(&dir, &python, &[]);
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
    assert_eq!(
        blocks_of(&report, CACHED_BLOCK),
        (2000, 2000 * CACHED_BLOCK)
    );
}
