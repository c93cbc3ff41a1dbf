//! End-to-end: the start of a trace (issue 27). The report says how long leaktracer took to
//! get its probes in (`attach.load_secs`) and which programs it had the kernel load
//! (`attach.programs`): a process without CPython gets no pymalloc program and no freeze, a
//! CPython process gets pymalloc's.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use leaktracer_e2e::*;
use serde_json::Value;

/// The report's `attach.programs`, as names.
fn loaded_programs(report: &Value) -> Vec<String> {
    report["attach"]["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("attach.programs is a list: {}", report["attach"]))
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// Asserts `attach.load_secs` is there and positive, and `-v` said it.
fn assert_load_time(report: &Value, stderr: &str) {
    let load = report["attach"]["load_secs"]
        .as_f64()
        .unwrap_or_else(|| panic!("attach.load_secs is a number: {}", report["attach"]));
    assert!(load > 0.0, "attach.load_secs is positive: {load}");
    assert!(
        stderr.contains("s after start (attach.load_secs)"),
        "-v says the start-up time: {stderr}"
    );
}

/// Traces `pid` with `-v` until interrupted once attached; the report and stderr.
fn trace_pid(pid: u32, json: &std::path::Path) -> (Value, String) {
    let mut tracer = Tracer::start([
        "trace",
        "--pid",
        &pid.to_string(),
        "-v",
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    tracer.interrupt();
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
    (read_json(json), run.stderr)
}

#[test]
fn a_c_target_loads_no_python_program_and_says_its_start_up_time() {
    require_root();
    let dir = scratch_dir("startup_c");
    let json = dir.join("leaks.json");
    let mut target = Command::new(workload("leaky"))
        .arg("attach")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let (report, stderr) = trace_pid(target.id(), &json);
    drop(target.stdin.take());
    let _ = target.kill();
    let _ = target.wait();

    assert_load_time(&report, &stderr);
    let programs = loaded_programs(&report);
    // The mapping calls: at their own tracepoints here, at the raw pair where those fail.
    let mapping = match report["attach"]["mapping_probes"].as_str() {
        Some("syscall_tracepoints") => "sys_exit_mapping",
        _ => "syscall_exit",
    };
    for needed in ["malloc_enter", "free_enter", "call_return", mapping] {
        assert!(
            programs.iter().any(|p| p == needed),
            "{needed} loaded: {programs:?}"
        );
    }
    for python in [
        "pymalloc_malloc_enter",
        "pymalloc_calloc_enter",
        "pymalloc_realloc_enter",
        "pymalloc_free_enter",
        "interpreter_exit",
        "launch_entry",
    ] {
        assert!(
            !programs.iter().any(|p| p == python),
            "{python} not loaded for a C process: {programs:?}"
        );
    }
}

#[test]
fn a_python_target_loads_the_pymalloc_programs_when_attached() {
    require_root();
    let python =
        PathBuf::from(std::env::var_os("PYENV_ROOT").unwrap_or_else(|| "/root/.pyenv".into()))
            .join("versions/3.12.1/bin/python3.12");
    if !python.exists() {
        eprintln!(
            "SKIP a_python_target_loads_the_pymalloc_programs_when_attached: pyenv's 3.12.1 ({}) not installed",
            python.display()
        );
        return;
    }
    let dir = scratch_dir("startup_python");
    let json = dir.join("leaks.json");
    let mut target = Command::new(&python)
        .args([
            "-c",
            "import sys, time\nprint('ready', flush=True)\nkeep = []\nwhile True:\n    keep.append(str(len(keep)) * 3)\n    del keep[:-100]\n    time.sleep(0.001)\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let (report, stderr) = trace_pid(target.id(), &json);
    let _ = target.kill();
    let _ = target.wait();

    assert_load_time(&report, &stderr);
    let programs = loaded_programs(&report);
    for needed in [
        "malloc_enter",
        "call_return",
        "pymalloc_malloc_enter",
        "pymalloc_free_enter",
        "interpreter_exit",
    ] {
        assert!(
            programs.iter().any(|p| p == needed),
            "{needed} loaded for a CPython process: {programs:?}"
        );
    }
}
