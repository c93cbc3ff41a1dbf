//! End-to-end: the line-table decoder (`leaktracer::runtimes::python::lines::line_at_for`)
//! against CPython's own, on every interpreter of [`every_interpreter`] (3.9 to 3.15).
//! `tests/workloads/py_lines_dump.py` compiles the whole standard library and dumps every code
//! object's first line, line table (`co_lnotab` on 3.9, `co_linetable` after) and the line
//! CPython gives each even byte offset of its `co_code` (`co_lines()`, or 3.9's
//! `PyCode_Addr2Line`); every one must decode the same, in its version's format, and offset -2
//! (a frame just pushed) must give the first line. Root is needed only for the interpreters of
//! a separate root (run with `chroot`).

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    thread,
};

use leaktracer::runtimes::python::lines::line_at_for;
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

/// Checks one dump line of CPython `version`: `<first line> <table hex> <line|.,...>`.
fn check_code_object(version: (u8, u8), line: &str, tally: &mut Tally) {
    let mut fields = line.splitn(3, ' ');
    let (Some(first), Some(table), Some(expected)) = (fields.next(), fields.next(), fields.next())
    else {
        panic!("malformed dump line {line:?}");
    };
    let first: i32 = first.parse().unwrap();
    let table = unhex(table);
    tally.code_objects += 1;
    let got = line_at_for(version, &table, first, -2);
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
        let got = line_at_for(version, &table, first, offset);
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

/// Runs the dump (`command`) under `python` and checks it as it streams in.
fn check(python: &Interpreter, mut command: Command) -> Tally {
    let (major, minor) = python.version;
    let version = (major as u8, minor as u8);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} runs: {e}", python.label));
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
            check_code_object(version, &line, &mut tally);
        }
    }
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "{}: {status}\n{stderr}", python.label);
    let trailer = trailer.unwrap_or_else(|| panic!("{}: no trailer\n{stderr}", python.label));
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
        python.label
    );
    tally
}

#[test]
fn line_tables_decode_as_cpython_does_for_the_whole_standard_library() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let interpreters: Vec<Interpreter> = every_interpreter()
        .into_iter()
        .filter(|python| {
            let runs = python.root.is_none() || root;
            if !runs {
                eprintln!("SKIP for {}: chroot needs root", python.label);
            }
            runs
        })
        .collect();
    // Every command before any runs: the interpreters of one root share the copy of the script
    // that making a command writes there.
    let script = workspace_root().join("tests/workloads/py_lines_dump.py");
    let commands: Vec<_> = interpreters
        .into_iter()
        .map(|python| (python.command(&script, &[]), python))
        .collect();
    // One thread per interpreter: most of the time is CPython compiling.
    let checks: Vec<_> = commands
        .into_iter()
        .map(|(command, python)| thread::spawn(move || (check(&python, command), python)))
        .collect();
    let mut failures = Vec::new();
    for handle in checks {
        let (tally, python) = handle.join().unwrap();
        eprintln!(
            "{}: {} files compiled ({} skipped), {} code objects, {} offsets \
             (+{} at offset -2), {} mismatches",
            python.label,
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
            python.label
        );
        if tally.mismatches > 0 {
            failures.push(format!(
                "{}: {} mismatches, first:\n  {}",
                python.label,
                tally.mismatches,
                tally.examples.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
