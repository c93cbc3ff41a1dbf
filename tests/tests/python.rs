//! End-to-end: CPython targets. What a script leaked is reported although the interpreter's
//! teardown frees it (the picture freezes at `Py_FinalizeEx`), small objects included (pymalloc
//! is probed).

use std::path::Path;

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
    for python in python_interpreters() {
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
        // Small objects come from pymalloc, probed where the interpreter has its symbols
        // (pyenv's builds); Debian's LTO build inlines pymalloc's fast path into its callers.
        let (floats, _) = blocks_of(&report, 24);
        if python.starts_with("/usr/bin") {
            eprintln!(
                "{}: pymalloc is inlined in this build: {floats} small blocks seen",
                python.display()
            );
        } else {
            // The 20000 floats the list holds, and the few other 24-byte objects alive then.
            assert!(
                (20_000..20_100).contains(&floats),
                "{}: {floats} blocks of 24 bytes",
                python.display()
            );
        }
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
