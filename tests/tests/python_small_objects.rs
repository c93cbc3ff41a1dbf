//! End-to-end: CPython's small objects (pymalloc) seen without a restart on every build (issue
//! 26), distribution builds (stripped, LTO: pymalloc inlined into its callers) included, where
//! leaktracer redirects the interpreter's allocator tables to other entries of pymalloc's own
//! functions while it traces (docs/design/python-small-objects.md).
//!
//! - Found: a process leaking one small str per event at a known line, attached by pid under
//!   load, has at least 98% of the events made during the trace at that line; a loop that
//!   makes and drops strs at once holds less than 64 KiB there.
//! - Harm: a process whose threads build small objects and check every result, forks children
//!   that do the same, runs child interpreters and handles signals, while leaktracer attaches,
//!   detaches, sees tracemalloc started under it, is SIGKILLed mid-trace and attaches again: it
//!   keeps running and its results are right; after a normal detach its tables hold what an
//!   untraced twin's hold.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::{ChildStdin, Stdio},
    time::Duration,
};

use leaktracer_e2e::*;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long the load runs while traced.
const TRACED_FOR: Duration = Duration::from_secs(3);
/// The share of the events that must be found.
const FOUND_AT_LEAST: f64 = 0.98;
/// What the balanced loop may hold at its line.
const BALANCED_HOLDS_BELOW: u64 = 64 * 1024;

fn workload_script(name: &str) -> PathBuf {
    workspace_root().join("tests/workloads").join(name)
}

/// A Python workload driven through its stdin, answering on its stdout.
struct Driven {
    process: Workload,
    stdin: ChildStdin,
    lines: Lines,
    /// Its `ready ...` line.
    ready: String,
}

impl Driven {
    fn start(python: &Interpreter, script: &Path, args: &[&str]) -> Self {
        let mut command = python.command(script, args);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env_remove("PYTHONMALLOC");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", python.label));
        let stdin = child.stdin.take().unwrap();
        let mut lines = Lines::read(child.stdout.take().unwrap());
        let process = Workload(child);
        let ready = lines.wait_for("ready", TIMEOUT);
        Self {
            process,
            stdin,
            lines,
            ready,
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `command` and returns the answer's line.
    fn ask(&mut self, command: &str) -> String {
        send_line(&mut self.stdin, command);
        self.lines.next_line(TIMEOUT)
    }

    /// Sends `command`, reads the line it answers with when `answer` starts one, then waits
    /// for the process to exit: its status, and that line.
    fn end(mut self, command: &str, answer: Option<&str>) -> (std::process::ExitStatus, String) {
        send_line(&mut self.stdin, command);
        let said = answer
            .map(|prefix| self.lines.wait_for(prefix, TIMEOUT))
            .unwrap_or_default();
        let deadline = std::time::Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the workload did not exit in {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, said)
    }
}

/// The line of `script` that ends with `# MARKER`.
fn marked_line(script: &Path, marker: &str) -> u64 {
    let text = fs::read_to_string(script).unwrap();
    let found: Vec<u64> = (1..)
        .zip(text.lines())
        .filter(|(_, line)| line.trim_end().ends_with(&format!("# {marker}")))
        .map(|(number, _)| number)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{}: lines marked {marker}",
        script.display()
    );
    found[0]
}

/// Two numbers on a line.
fn two(line: &str) -> (u64, u64) {
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "{line:?}");
    (numbers[0], numbers[1])
}

/// What one interpreter's run found.
struct Found {
    /// Events made while traced (from the first count after the attach to the pause), and
    /// since just before the attach began.
    expected: u64,
    upper: u64,
    found: u64,
    /// Strs churned while traced, the balanced line's allocations seen, and what it holds.
    churned: u64,
    churn_seen: u64,
    churn_held: u64,
    /// Whether the stacks were matched by their Python line (else by block size: a build
    /// whose frames this leaktracer does not walk).
    by_line: bool,
}

/// Stacks at `function`'s `line` (when the report has Python frames) or else every stack of
/// blocks of `size`, with (allocations held, bytes held, allocations made).
fn at_site(report: &Value, function: &str, line: u64, size: u64, by_line: bool) -> (u64, u64, u64) {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let total = s["total_allocations"].as_u64().unwrap_or(0);
            let of_size = total > 0 && s["total_bytes"].as_u64() == Some(total * size);
            if by_line {
                of_size
                    && innermost_python_frame(s)
                        .is_some_and(|f| f["function"] == function && f["line"] == line)
            } else {
                of_size
            }
        })
        .fold((0, 0, 0), |(n, b, t), s| {
            (
                n + s["outstanding_allocations"].as_u64().unwrap(),
                b + s["outstanding_bytes"].as_u64().unwrap(),
                t + s["total_allocations"].as_u64().unwrap(),
            )
        })
}

/// Runs the small-objects workload under `python`, attaches to it by pid while it runs, and
/// reads what the report found at its two lines.
fn trace_small_objects(python: &Interpreter, dir: &Path) -> (Found, String) {
    let script = workload_script("py_small_objects.py");
    let mut target = Driven::start(python, &script, &[]);
    let sizes: Vec<u64> = target
        .ready
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect();
    let (event_size, churn_size) = (sizes[0], sizes[1]);
    let (before_attach, _) = two(&target.ask("count"));
    let json = dir.join(format!("{}.json", python.label.replace(' ', "-")));
    let pid = target.pid().to_string();
    let mut tracer = Tracer::start([
        "trace",
        "-q",
        "-v",
        "--pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    let (first, churn_first) = two(&target.ask("count"));
    std::thread::sleep(TRACED_FOR);
    let (last, churn_last) = two(&target.ask("pause"));
    tracer.interrupt();
    let run = tracer.finish();
    assert!(run.status.success(), "{}: {}", python.label, run.stderr);
    let (status, _) = target.end("quit", None);
    assert!(
        status.success(),
        "{}: the workload ended {status}",
        python.label
    );
    let report = read_json(&json);
    let by_line = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| innermost_python_frame(s).is_some());
    let (found, _, _) = at_site(
        &report,
        "events",
        marked_line(&script, "LEAK:events"),
        event_size,
        by_line,
    );
    let (_, churn_held, churn_seen) = at_site(
        &report,
        "churn",
        marked_line(&script, "BALANCED:churn"),
        churn_size,
        by_line,
    );
    let found = Found {
        expected: last - first,
        upper: last - before_attach,
        found,
        churned: churn_last - churn_first,
        churn_seen,
        churn_held,
        by_line,
    };
    (found, run.stderr)
}

#[test]
fn small_objects_are_found_at_their_line_on_every_build() {
    require_root();
    let dir = scratch_dir("python-small-objects");
    let mut failures = Vec::new();
    let mut figures = Vec::new();
    for python in every_interpreter() {
        let (found, stderr) = trace_small_objects(&python, &dir);
        let share = found.found as f64 / found.expected.max(1) as f64;
        figures.push(format!(
            "{:<18} events found {}/{} ({:.1}%), churn seen {}/{} holding {} B{}",
            python.label,
            found.found,
            found.expected,
            share * 100.0,
            found.churn_seen,
            found.churned,
            found.churn_held,
            if found.by_line {
                ""
            } else {
                " (matched by block size: no Python frames in this build's report)"
            }
        ));
        let mut fail = |what: String| failures.push(format!("{}: {what}\n{stderr}", python.label));
        if found.expected < 1000 {
            fail(format!("only {} events while traced", found.expected));
        }
        if share < FOUND_AT_LEAST || found.found > found.upper {
            fail(format!(
                "{} events found at the leak's line, {} made while traced (at most {} since the attach began)",
                found.found, found.expected, found.upper
            ));
        }
        if (found.churn_seen as f64) < found.churned as f64 * FOUND_AT_LEAST {
            fail(format!(
                "{} of {} churned strs seen",
                found.churn_seen, found.churned
            ));
        }
        if found.churn_held >= BALANCED_HOLDS_BELOW {
            fail(format!("the balanced loop holds {} B", found.churn_held));
        }
        if python.distribution_build && !stderr.contains("object allocator redirected") {
            fail("no redirect said with -v".to_string());
        }
    }
    eprintln!(
        "small objects, per interpreter:\n  {}",
        figures.join("\n  ")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The table slots leaktracer said it redirected in `pid` (`-v`): address -> (original,
/// redirected).
fn redirected_slots(stderr: &str, pid: u32) -> BTreeMap<u64, (u64, u64)> {
    let prefix = format!("leaktracer: pid {pid}: ");
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once(" slot ").map(|(_, slot)| slot))
        .filter_map(|slot| {
            let (address, values) = slot.split_once(": ")?;
            let (original, redirected) = values.split_once(" -> ")?;
            let hex = |t: &str| u64::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok();
            Some((hex(address)?, (hex(original)?, hex(redirected)?)))
        })
        .collect()
}

/// The words at `addresses` in `pid`'s memory.
fn words(pid: u32, addresses: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let memory = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    addresses
        .into_iter()
        .map(|address| {
            let mut word = [0u8; 8];
            memory.read_exact_at(&mut word, address).unwrap();
            u64::from_le_bytes(word)
        })
        .collect()
}

/// Where the interpreter's executable is loaded in `pid` (the start of its mapping at file
/// offset 0): the tables of two processes of one program differ by the difference of theirs.
fn program_base(pid: u32, python: &Interpreter) -> u64 {
    let name = python.program.file_name().unwrap().to_str().unwrap();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 6 && fields[2] == "00000000" && fields[5].ends_with(name))
                .then(|| u64::from_str_radix(fields[0].split('-').next().unwrap(), 16).unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not mapped in pid {pid}"))
}

/// One attach of leaktracer to the harm workload, `-v`, for `for_how_long`, during which
/// `during` is asked of the target (if anything), then ended by SIGKILL when `kill`, else by
/// SIGINT: its stderr and the slots it said it redirected.
fn attach_once(
    target: &mut Driven,
    extra: &[&str],
    for_how_long: Duration,
    during: Option<&str>,
    kill: bool,
) -> (String, BTreeMap<u64, (u64, u64)>) {
    let pid = target.pid();
    let mut args = vec!["trace", "-q", "-v", "--pid"];
    let pid_text = pid.to_string();
    args.push(&pid_text);
    args.extend(extra);
    let mut tracer = Tracer::start(&args);
    tracer.wait_attached();
    if let Some(command) = during {
        assert_eq!(target.ask(command), "ok", "{command}");
    }
    std::thread::sleep(for_how_long);
    let (rounds, bad) = two(&target.ask("count"));
    assert_eq!(bad, 0, "wrong results while traced");
    assert!(rounds > 0);
    if kill {
        unsafe { libc::kill(tracer.pid() as i32, libc::SIGKILL) };
    } else {
        tracer.interrupt();
    }
    let run = tracer.finish();
    if !kill {
        assert!(run.status.success(), "{}", run.stderr);
    }
    let slots = redirected_slots(&run.stderr, pid);
    (run.stderr, slots)
}

#[test]
fn writing_the_tables_never_harms_the_target() {
    require_root();
    let script = workload_script("py_small_harm.py");
    for python in every_interpreter()
        .into_iter()
        .filter(|p| p.distribution_build)
    {
        let label = &python.label;
        let mut target = Driven::start(&python, &script, &[]);
        let twin = Driven::start(&python, &script, &["idle"]);
        let pid = target.pid();
        let shift = program_base(pid, &python).wrapping_sub(program_base(twin.pid(), &python));

        // A normal trace: redirected while it runs, restored at detach, as the untraced twin's.
        let (stderr, slots) = attach_once(&mut target, &[], Duration::from_secs(2), None, false);
        assert_eq!(slots.len(), 8, "{label}: slots said: {stderr}");
        assert!(
            stderr.contains("object allocator redirected to probed entries (8 of 8"),
            "{label}: {stderr}"
        );
        assert!(
            stderr.contains("object allocator restored (8 table"),
            "{label}: {stderr}"
        );
        let now = words(pid, slots.keys().copied());
        let pristine = words(twin.pid(), slots.keys().map(|a| a.wrapping_sub(shift)));
        let originals: Vec<u64> = slots.values().map(|(original, _)| *original).collect();
        assert_eq!(now, originals, "{label}: the tables after detach");
        assert_eq!(
            now,
            pristine
                .iter()
                .map(|w| w.wrapping_add(shift))
                .collect::<Vec<_>>(),
            "{label}: the tables of an untraced twin"
        );
        assert_eq!(target.ask("pymalloc"), "pymalloc yes", "{label}");

        // tracemalloc started during a trace wraps the redirected entries: the detach leaves
        // its hooks alone, and its stop puts the redirected entries back, for good.
        let (stderr, _) = attach_once(
            &mut target,
            &[],
            Duration::from_secs(1),
            Some("tracemalloc-start"),
            false,
        );
        assert!(
            stderr.contains("object allocator restored in part (0 table slots written; 8 left"),
            "{label}: {stderr}"
        );
        assert_eq!(target.ask("tracemalloc-stop"), "ok", "{label}");
        let redirected: Vec<u64> = slots.values().map(|(_, redirected)| *redirected).collect();
        assert_eq!(words(pid, slots.keys().copied()), redirected, "{label}");

        // Killed mid-trace: each slot keeps an entry of the same function.
        let (stderr, _) = attach_once(&mut target, &[], Duration::from_millis(1500), None, true);
        assert!(is_alive(pid), "{label}: {stderr}");
        assert!(
            stderr.contains("redirected to probed entries (0 of 8 table slots written"),
            "{label}: {stderr}"
        );
        for ((address, (original, redirected)), word) in
            slots.iter().zip(words(pid, slots.keys().copied()))
        {
            assert!(
                word == *original || word == *redirected,
                "{label}: slot {address:#x} holds {word:#x} after the kill"
            );
        }
        std::thread::sleep(Duration::from_secs(1));

        // Attached again, children followed: the table is taken back as found, and restored.
        let (stderr, again) = attach_once(
            &mut target,
            &["--follow-children"],
            Duration::from_secs(2),
            None,
            false,
        );
        assert_eq!(again, slots, "{label}: {stderr}");
        assert_eq!(
            words(pid, slots.keys().copied()),
            originals,
            "{label}: the tables after the last detach: {stderr}"
        );
        assert_eq!(target.ask("pymalloc"), "pymalloc yes", "{label}");

        let (status, done) = target.end("stop", Some("done "));
        assert!(status.success(), "{label}: ended {status}: {done}");
        let figures: Vec<u64> = done
            .split_whitespace()
            .skip(1)
            .map(|w| w.parse().unwrap())
            .collect();
        let [rounds, forks, execs, signals, bad] = figures[..] else {
            panic!("{label}: {done}");
        };
        assert_eq!(bad, 0, "{label}: {done}");
        assert!(
            rounds > 0 && forks > 0 && execs > 0 && signals > 0,
            "{label}: {done}"
        );
        eprintln!(
            "{label}: unharmed: {rounds} rounds right, {forks} children forked and {execs} run, all exited 0, {signals} signals handled"
        );
        drop(twin);
    }
}
