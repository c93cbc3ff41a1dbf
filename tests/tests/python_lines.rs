//! End-to-end: the line-table decoder (`leaktracer::runtimes::python::lines::line_at`) against
//! CPython's own. For every interpreter, `tests/workloads/py_lines_dump.py` compiles the whole
//! standard library and dumps every code object's first line, `co_linetable`, and the line
//! `co_lines()` gives each even byte offset of its `co_code`; every one must decode the same,
//! and offset -2 (a frame just pushed, 3.11/3.12) must give the first line. No root needed.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use leaktracer::runtimes::python::lines::line_at;
use leaktracer_e2e::*;

/// What one interpreter's check found.
#[derive(Default)]
struct Tally {
    files: u64,
    skipped_files: Vec<String>,
    code_objects: u64,
    offsets: u64,
    mismatches: u64,
    /// The first few mismatches, described.
    examples: Vec<String>,
}

impl Tally {
    fn mismatch(&mut self, what: impl FnOnce() -> String) {
        self.mismatches += 1;
        if self.examples.len() < 10 {
            self.examples.push(what());
        }
    }
}

fn unhex(text: &str) -> Vec<u8> {
    if text == "-" {
        return Vec::new();
    }
    assert!(text.len().is_multiple_of(2), "odd hex {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Checks one dump line: `<first line> <table hex> <line|.,...>`.
fn check_code_object(line: &str, tally: &mut Tally) {
    let mut fields = line.splitn(3, ' ');
    let (Some(first), Some(table), Some(expected)) = (fields.next(), fields.next(), fields.next())
    else {
        panic!("malformed dump line {line:?}");
    };
    let first: i32 = first.parse().unwrap();
    let table = unhex(table);
    tally.code_objects += 1;
    let got = line_at(&table, first, -2);
    if got != u32::try_from(first).ok() {
        tally
            .mismatch(|| format!("first line {first}, table {table:02x?}, offset -2: got {got:?}"));
    }
    if expected.is_empty() {
        return;
    }
    for (unit, want) in expected.split(',').enumerate() {
        let want: Option<u32> = match want {
            "." => None,
            n => Some(n.parse().unwrap()),
        };
        let offset = 2 * i32::try_from(unit).unwrap();
        tally.offsets += 1;
        let got = line_at(&table, first, offset);
        if got != want {
            tally.mismatch(|| {
                format!(
                    "first line {first}, table {table:02x?}, offset {offset}: \
                     co_lines() {want:?}, decoded {got:?}"
                )
            });
        }
    }
}

/// Runs the dump under `python` and checks it as it streams in.
fn check(python: &Path) -> Tally {
    let script = workspace_root().join("tests/workloads/py_lines_dump.py");
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} runs: {e}", python.display()));
    let mut stderr = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let mut tally = Tally::default();
    let mut trailer = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("# ") {
            trailer = Some(rest.to_owned());
        } else {
            check_code_object(&line, &mut tally);
        }
    }
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "{}: {status}\n{stderr}", python.display());
    let trailer = trailer.unwrap_or_else(|| panic!("{}: no trailer\n{stderr}", python.display()));
    // "files <compiled> skipped <skipped>"
    let words: Vec<&str> = trailer.split(' ').collect();
    assert_eq!(
        (words.len(), words[0], words[2]),
        (4, "files", "skipped"),
        "{trailer}"
    );
    tally.files = words[1].parse().unwrap();
    tally.skipped_files = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("skipped "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        tally.skipped_files.len().to_string(),
        words[3],
        "{}: {stderr}",
        python.display()
    );
    tally
}

#[test]
fn line_tables_decode_as_cpython_does_for_the_whole_standard_library() {
    let interpreters: Vec<PathBuf> = python_interpreters();
    // One thread per interpreter: most of the time is CPython compiling.
    let checks: Vec<_> = interpreters
        .into_iter()
        .map(|python| thread::spawn(move || (check(&python), python)))
        .collect();
    let mut failures = Vec::new();
    for handle in checks {
        let (tally, python) = handle.join().unwrap();
        eprintln!(
            "{}: {} files compiled ({} skipped), {} code objects, {} offsets \
             (+{} at offset -2), {} mismatches",
            python.display(),
            tally.files,
            tally.skipped_files.len(),
            tally.code_objects,
            tally.offsets,
            tally.code_objects,
            tally.mismatches
        );
        for skipped in &tally.skipped_files {
            eprintln!("  skipped {skipped}");
        }
        // The standard library is hundreds of files: an empty dump is a broken dump.
        assert!(
            tally.files > 300 && tally.code_objects > 10_000 && tally.offsets > 1_000_000,
            "{}: too little checked",
            python.display()
        );
        if tally.mismatches > 0 {
            failures.push(format!(
                "{}: {} mismatches, first:\n  {}",
                python.display(),
                tally.mismatches,
                tally.examples.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
