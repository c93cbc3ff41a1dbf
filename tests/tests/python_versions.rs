//! End-to-end: the Python walk on every CPython the tests cover ([`every_interpreter`]): pyenv's
//! builds with symbols, Debian 12's stripped LTO `python3.11`, and Debian unstable's stripped
//! LTO python3.13, 3.14 and 3.15 in a separate root (run with chroot, read by leaktracer through
//! `/proc/PID/root` and `/proc/PID/map_files`, as a container's). A script
//! (`tests/workloads/py_versions_leak.py`), attached to by pid once it says it is ready, keeps
//! [`COUNT`] bytes objects at its line marked `# LEAK`; the report must hold exactly those
//! blocks at that Python function, file and line, under the script's own callers, and list no
//! stack twice (kernel stacks it shows alike are one entry).
//!
//! Every interpreter is tried and every failure said at the end, so one version's failure
//! hides no other's.

use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::Stdio,
};

use leaktracer_e2e::*;
use serde_json::Value;

/// Objects kept, and their size: each a block of `SIZE + 33` bytes (the bytes object's header
/// and NUL), above pymalloc's 512 bytes, so it comes from the C library on every build.
const COUNT: u64 = 400;
const SIZE: u64 = 4000;
const BLOCK: u64 = SIZE + 33;

fn script() -> PathBuf {
    workspace_root().join("tests/workloads/py_versions_leak.py")
}

/// The script's lines: the leak (`# LEAK`), the call of `leak` in `main`, and the call of
/// `main` at the module's level.
fn lines(script: &Path) -> [u64; 3] {
    let text = fs::read_to_string(script).unwrap();
    let find = |what: &dyn Fn(&str) -> bool| {
        text.lines()
            .position(what)
            .map(|i| i as u64 + 1)
            .unwrap_or_else(|| panic!("{}: a line is missing", script.display()))
    };
    [
        find(&|l| l.contains("# LEAK")),
        find(&|l| l.trim_start().starts_with("leak(count, size)")),
        find(&|l| l == "main()"),
    ]
}

/// Runs the script under `python`, attaches by pid once it is ready, lets it leak, and returns
/// leaktracer's report and stderr.
fn trace(python: &Interpreter, dir: &Path) -> (Value, String) {
    let mut command = python.command(&script(), &[&COUNT.to_string(), &SIZE.to_string()]);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env_remove("PYTHONMALLOC");
    let mut process = Workload(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", python.label)),
    );
    let mut stdin = process.0.stdin.take().unwrap();
    let mut stdout = BufReader::new(process.0.stdout.take().unwrap());
    let mut said = String::new();
    stdout.read_line(&mut said).unwrap();
    // chroot execs the interpreter: the pid it prints is the one spawned.
    assert_eq!(
        said.trim(),
        format!("ready {}", process.pid()),
        "{}",
        python.label
    );
    let json = dir.join(format!("{}.json", python.label.replace(' ', "-")));
    let mut tracer = Tracer::start([
        "trace",
        "-q",
        "--pid",
        &process.pid().to_string(),
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_traced(process.pid());
    writeln!(stdin, "go").unwrap();
    said.clear();
    stdout.read_line(&mut said).unwrap();
    assert_eq!(said.trim(), format!("leaked {COUNT}"), "{}", python.label);
    tracer.interrupt();
    let done = tracer.finish();
    assert!(done.status.success(), "{}: {}", python.label, done.stderr);
    // Its stdin closed, the script exits.
    drop(stdin);
    let _ = process.0.wait();
    (read_json(&json), done.stderr)
}

/// What of the report is wrong for `python` (`None`: nothing).
fn check(python: &Interpreter, dir: &Path) -> Option<String> {
    let [leak_line, main_line, module_line] = lines(&script());
    let (report, stderr) = trace(python, dir);
    if let Some(note) = stderr
        .lines()
        .find(|l| l.contains("stays native") || l.contains("stay native"))
    {
        return Some(format!("not walked: {note}"));
    }
    let blocks = stacks_of_blocks(&report, BLOCK);
    let at_line: Vec<&Value> = blocks
        .iter()
        .copied()
        .filter(|s| {
            innermost_python_frame(s)
                .is_some_and(|f| f["function"] == "leak" && f["line"] == leak_line)
        })
        .collect();
    let (bytes, count) = held_by(&at_line);
    if (bytes, count) != (COUNT * BLOCK, COUNT) || held_by(&blocks) != (COUNT * BLOCK, COUNT) {
        return Some(format!(
            "{count} blocks ({bytes} bytes) at leak:{leak_line}, {} in all, of {COUNT} kept:\n{}",
            held_by(&blocks).1,
            stacks_text(&blocks, 6)
        ));
    }
    for stack in &at_line {
        let frames: Vec<(String, String, u64)> = python_frames(stack)
            .iter()
            .map(|f| {
                let file = f["file"].as_str().unwrap_or_default();
                let name = Path::new(file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                (
                    f["function"].as_str().unwrap_or_default().to_string(),
                    name.unwrap_or_default(),
                    f["line"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let file = "py_versions_leak.py".to_string();
        let expected = vec![
            ("leak".to_string(), file.clone(), leak_line),
            ("main".to_string(), file.clone(), main_line),
            ("<module>".to_string(), file, module_line),
        ];
        if frames != expected {
            return Some(format!("Python frames {frames:?}, not {expected:?}"));
        }
    }
    twice(&report).map(|stack| format!("a stack listed twice:\n{stack}"))
}

/// A stack the report lists more than once (same process, kind and frames as shown), if any.
fn twice(report: &Value) -> Option<String> {
    let mut seen = HashSet::new();
    for stack in report["stacks"].as_array().unwrap() {
        let frames: Vec<String> = stack["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{} {} {} {}",
                    f["function"], f["module"], f["file"], f["line"]
                )
            })
            .collect();
        let key = (
            stack["pid"].to_string(),
            stack["mapping_kind"].to_string(),
            frames,
        );
        if !seen.insert(key) {
            return Some(stacks_text(&[stack], 1));
        }
    }
    None
}

/// Every interpreter names the function, file and line that keeps the memory, with exactly the
/// blocks kept there, attached by pid.
#[test]
fn every_interpreter_names_the_line_that_keeps_the_memory() {
    require_root();
    let dir = scratch_dir("python-versions");
    let mut failures = Vec::new();
    for python in every_interpreter() {
        match check(&python, &dir) {
            Some(why) => failures.push(format!("{}: {why}", python.label)),
            None => eprintln!("{}: {COUNT} blocks at the leak's line", python.label),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
