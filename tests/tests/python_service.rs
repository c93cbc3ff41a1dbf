//! End-to-end: a CPython HTTP service (`tests/workloads/py_service.py`), attached to by pid
//! while a client drives it, on every interpreter this machine kind has. Its leaks are told
//! apart by their Python frames (issue 12: each frame says `"kind": "python"` or `"native"`; a
//! Python frame's `function` is the code object's `co_qualname`, `file` its `co_filename`,
//! `line` the line it is executing; Python frames stand where the interpreter's
//! `_PyEval_EvalFrameDefault` frames were). Each leak is one line of the script marked
//! `# LEAK:<name>`, found by scanning the file, and the service reports what each leak holds
//! (`GET /truth`, from `sys.getsizeof`), so the report is checked against the service's own
//! ground truth: the growth of each leak between a `/truth` taken once the probes are attached
//! and one taken after the load.
//!
//! Covered: an unbounded cache (a handler thread, three Python functions deep), small objects
//! (pymalloc), a handler that keeps nothing, a worker thread's own leak, a malloc made through
//! ctypes with the GIL released, and a coroutine on an asyncio loop in its own thread.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ChildStdout, Command, Stdio},
    time::Duration,
};

use leaktracer_e2e::*;
use serde_json::Value;

/// The load, per interpreter.
const SEARCHES: u64 = 300;
const EVENTS: u64 = 300;
const CHURNS: u64 = 100;
const THREAD_JOBS: u64 = 3;
const THREAD_OBJECTS_PER_JOB: u64 = 50;
const NOGIL_CALLS: u64 = 4;
const NOGIL_BLOCKS_PER_CALL: u64 = 10;
const ASYNC_CALLS: u64 = 3;
const ASYNC_OBJECTS_PER_CALL: u64 = 30;

/// The service's allocation sizes (see the script): bytes objects of 4000, 5000 and 6000 bytes
/// of content (33 bytes more each: header and NUL), and the raw malloc of the GIL-released call.
const CACHE_OBJECT_BYTES: u64 = 4033;
const THREAD_OBJECT_BYTES: u64 = 5033;
const ASYNC_OBJECT_BYTES: u64 = 6033;
const NOGIL_BLOCK_BYTES: u64 = 7777;

/// Python frames that belong to the main thread (`main`, the accept loop) or to a request's
/// handler thread: never on the stack of the worker's or the asyncio loop's allocations.
const NOT_OTHER_THREADS: [&str; 6] = [
    "<module>",
    "main",
    "BaseServer.serve_forever",
    "Handler.do_GET",
    "thread_leak",
    "run_async",
];

/// Stacks shown in a failure message, per check.
const SHOWN: usize = 6;

const TIMEOUT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    workspace_root().join("tests/workloads/py_service.py")
}

/// Where the script's leaks and calls are: the `# LEAK:<name>` lines, and the lines of the
/// calls the cache leak's outer frames must be executing.
struct Lines {
    leak: HashMap<String, u64>,
    /// `CACHE[q] = expensive_search(q)`, in `search`.
    search_call: u64,
    /// `... search(query["q"][0]) ...`, in `Handler.do_GET`.
    do_get_search_call: u64,
}

impl Lines {
    fn read(script: &Path) -> Self {
        let text = fs::read_to_string(script).unwrap();
        let mut leak = HashMap::new();
        for (number, line) in (1..).zip(text.lines()) {
            // A marker ends its line: `code  # LEAK:name`.
            let Some((_, name)) = line.rsplit_once("# LEAK:") else {
                continue;
            };
            let name = name.trim_end().to_string();
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                assert!(
                    leak.insert(name.clone(), number).is_none(),
                    "{}: two lines marked LEAK:{name}",
                    script.display()
                );
            }
        }
        for name in ["cache", "events", "thread", "nogil", "async"] {
            assert!(
                leak.contains_key(name),
                "{}: no line marked LEAK:{name}",
                script.display()
            );
        }
        let only_line = |needle: &str| {
            let found: Vec<u64> = (1..)
                .zip(text.lines())
                .filter(|(_, line)| line.contains(needle))
                .map(|(number, _)| number)
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{}: lines with {needle:?}",
                script.display()
            );
            found[0]
        };
        Self {
            leak,
            search_call: only_line("CACHE[q] = expensive_search(q)"),
            do_get_search_call: only_line("search(query[\"q\"][0])"),
        }
    }

    fn of(&self, leak: &str) -> u64 {
        self.leak[leak]
    }
}

/// The service, killed when the test ends.
struct Service {
    process: Workload,
    addr: SocketAddr,
    /// Kept open: the service's stdout stays a live pipe.
    _stdout: BufReader<ChildStdout>,
}

/// Starts the service on a free port and waits for its `ready PORT`.
fn start_service(python: &Path, script: &Path) -> Service {
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .env_remove("PYTHONMALLOC");
    if inlines_pymalloc(python) {
        // Debian's python3.11 is built with LTO: pymalloc's fast path is inlined into its
        // callers, so small objects never reach a probed function. PYTHONMALLOC=malloc makes
        // every object a malloc (pyenv's builds need nothing: pymalloc itself is probed).
        command.env("PYTHONMALLOC", "malloc");
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", python.display()));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let process = Workload(child);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{} {}: said {line:?}, not `ready PORT`",
                python.display(),
                script.display()
            )
        });
    Service {
        process,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _stdout: stdout,
    }
}

/// `GET path` from the service, which answers JSON once the request's work is done.
fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path, TIMEOUT);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// One request of each kind, before the trace: the first-use allocations (imports, caches, the
/// worker's and the loop's first wake-up) are not part of what is checked.
fn warm_up(addr: SocketAddr) {
    for path in [
        "/search?q=warm-up",
        "/event?name=warm-up",
        "/churn",
        "/thread-leak?n=1",
        "/nogil?n=1",
        "/async?n=1",
        "/truth",
    ] {
        get(addr, path);
    }
}

/// The load: distinct searches (each a new cache entry), events, churn, and the other leaks.
fn drive(addr: SocketAddr) {
    for i in 0..SEARCHES {
        get(addr, &format!("/search?q=query-{i}"));
    }
    for i in 0..EVENTS {
        get(addr, &format!("/event?name=event-{i}"));
        if i % 3 == 0 {
            get(addr, "/churn");
        }
    }
    for _ in 0..CHURNS {
        get(addr, "/churn?rounds=20");
    }
    for _ in 0..THREAD_JOBS {
        get(addr, &format!("/thread-leak?n={THREAD_OBJECTS_PER_JOB}"));
    }
    for _ in 0..NOGIL_CALLS {
        get(addr, &format!("/nogil?n={NOGIL_BLOCKS_PER_CALL}"));
    }
    for _ in 0..ASYNC_CALLS {
        get(addr, &format!("/async?n={ASYNC_OBJECTS_PER_CALL}"));
    }
}

/// How much a `/truth` figure (a JSON pointer) grew during the trace.
fn grew(before: &Value, after: &Value, pointer: &str) -> u64 {
    let at = |truth: &Value| {
        truth
            .pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("/truth has no {pointer}: {truth}"))
    };
    at(after) - at(before)
}

/// The function names of a stack's Python frames, innermost first.
fn python_names(stack: &Value) -> Vec<&str> {
    python_frames(stack)
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .collect()
}

/// True when `wanted` appear among `names` in this order (not necessarily next to each other).
fn in_order(names: &[&str], wanted: &[&str]) -> bool {
    let mut rest = names.iter();
    wanted.iter().all(|w| rest.any(|n| n == w))
}

/// The Python frame of `function` in a stack (the innermost one).
fn python_frame<'a>(stack: &'a Value, function: &str) -> Option<&'a Value> {
    python_frames(stack)
        .into_iter()
        .find(|f| f["function"] == function)
}

/// The failures found for one interpreter.
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn expect(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(failure());
        }
    }

    /// Each of `stacks` must satisfy `shape` (which says what is wrong with it, if anything);
    /// one failure lists the stacks that do not.
    fn each_stack(
        &mut self,
        what: &str,
        stacks: &[&Value],
        shape: impl Fn(&Value) -> Option<String>,
    ) {
        let wrong: Vec<(String, &Value)> = stacks
            .iter()
            .filter_map(|s| shape(s).map(|why| (why, *s)))
            .collect();
        if wrong.is_empty() {
            return;
        }
        let shown: Vec<&Value> = wrong.iter().map(|(_, s)| *s).collect();
        self.failures.push(format!(
            "{what}: {} of {} stacks are wrong ({}):\n{}",
            wrong.len(),
            stacks.len(),
            wrong[0].0,
            stacks_text(&shown, SHOWN)
        ));
    }
}

/// What to show when a check fails: the stacks it looked at, or when there are none, the stacks
/// holding blocks of the leak's size (where the leak went), or else the largest stacks.
fn relevant(report: &Value, selected: &[&Value], block: u64) -> String {
    if !selected.is_empty() {
        return stacks_text(selected, SHOWN);
    }
    let blocks = stacks_of_blocks(report, block);
    if !blocks.is_empty() {
        return format!(
            "  none; the stacks holding blocks of {block} B are:\n{}",
            stacks_text(&blocks, SHOWN)
        );
    }
    let all: Vec<&Value> = report["stacks"].as_array().unwrap().iter().collect();
    format!(
        "  none, and no stack holds blocks of {block} B; the largest stacks:\n{}",
        stacks_text(&all, SHOWN)
    )
}

/// Within `tolerance` (a fraction) of `expected`.
fn near(found: u64, expected: u64, tolerance: f64) -> bool {
    (found as f64 - expected as f64).abs() <= expected as f64 * tolerance
}

/// What a stack with Python frames must look like whatever the leak: the allocation is made by
/// native code (frame 0), and no interpreter loop frame is left where Python frames now stand.
fn hybrid_shape(stack: &Value) -> Option<String> {
    let frames = stack["frames"].as_array().unwrap();
    if frames
        .first()
        .map(|f| f["kind"] != "native")
        .unwrap_or(true)
    {
        return Some("frame 0 is not native".to_string());
    }
    if frames
        .iter()
        .any(|f| f["function"] == "_PyEval_EvalFrameDefault")
    {
        return Some(
            "a _PyEval_EvalFrameDefault frame is left among the Python frames".to_string(),
        );
    }
    None
}

/// A traced run of the service: leaktracer's report, and the service's `/truth` once the
/// probes were attached and after the load.
struct Traced {
    report: Value,
    before: Value,
    after: Value,
}

/// Starts the service under `python`, attaches to it by pid, drives the load and returns the
/// report with the truth before and after. The truths are kept beside the report in `dir`.
fn trace_service(python: &Path, script: &Path, dir: &Path) -> Traced {
    let service = start_service(python, script);
    let pid = service.process.pid();
    warm_up(service.addr);

    let name = python
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "_");
    let json = dir.join(format!("{name}.json"));
    let mut tracer = Tracer::start([
        "trace",
        "-q",
        "--pid",
        &pid.to_string(),
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    let before = get(service.addr, "/truth");
    drive(service.addr);
    let after = get(service.addr, "/truth");
    tracer.interrupt();
    let run = tracer.finish();
    assert!(run.status.success(), "{}: {}", python.display(), run.stderr);
    drop(service);
    for (truth, which) in [(&before, "before"), (&after, "after")] {
        fs::write(
            dir.join(format!("{name}.truth-{which}.json")),
            truth.to_string(),
        )
        .unwrap();
    }
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "interrupted");
    assert_eq!(report["target"]["pids"], serde_json::json!([pid]));
    assert_eq!(
        after["file"],
        script.to_str().unwrap(),
        "co_filename of the script"
    );
    Traced {
        report,
        before,
        after,
    }
}

/// Checks one interpreter's report against the service's truth: a one-line summary and the
/// failures.
fn check_report(
    python: &Path,
    script: &Path,
    lines: &Lines,
    traced: &Traced,
) -> (String, Vec<String>) {
    let Traced {
        report,
        before,
        after,
    } = traced;
    let mut checks = Checks {
        failures: Vec::new(),
    };
    let version = after["python"].as_str().unwrap_or("?").to_string();
    let file = script.to_str().unwrap();
    let stacks: Vec<&Value> = report["stacks"].as_array().unwrap().iter().collect();

    // Every frame says what it is.
    let frames: Vec<&Value> = stacks
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap())
        .collect();
    let unkinded: Vec<&&Value> = frames
        .iter()
        .filter(|f| f["kind"] != "python" && f["kind"] != "native")
        .collect();
    checks.expect(unkinded.is_empty(), || {
        format!(
            "{} of {} frames have no \"kind\": \"python\" or \"native\", e.g. {}",
            unkinded.len(),
            frames.len(),
            unkinded[0]
        )
    });
    let with_python = stacks
        .iter()
        .filter(|s| innermost_python_frame(s).is_some())
        .count();
    if with_python == 0 {
        // Every check below would fail for this one reason: say it once, with where the leaks
        // are by their sizes alone.
        let by_size = |pointer: &str, size: u64| {
            let (bytes, allocations) = held_by(&stacks_of_blocks(report, size));
            format!(
                "{pointer} +{} B, blocks of {size} B: {bytes} B in {allocations}",
                grew(before, after, pointer)
            )
        };
        let summary = format!(
            "{version} ({}): no Python frames in {} stacks; {}; {}; {}; {}",
            python.display(),
            stacks.len(),
            by_size("/cache/bytes", CACHE_OBJECT_BYTES),
            by_size("/thread/bytes", THREAD_OBJECT_BYTES),
            by_size("/nogil/bytes", NOGIL_BLOCK_BYTES),
            by_size("/async/bytes", ASYNC_OBJECT_BYTES),
        );
        checks.failures.push(format!(
            "no stack has Python frames ({} stacks); the largest:\n{}",
            stacks.len(),
            stacks_text(&stacks, 3)
        ));
        return (summary, checks.failures);
    }

    // The cache: each new entry is one bytes object made at the LEAK:cache line, three Python
    // frames deep in a handler thread (expensive_search <- search <- Handler.do_GET).
    let cache_bytes = grew(before, after, "/cache/bytes");
    let cache_entries = grew(before, after, "/cache/entries");
    let cache = stacks_at_python_line(report, "expensive_search", lines.of("cache"));
    let (bytes, allocations) = held_by(&cache);
    checks.expect(
        near(bytes, cache_bytes, 0.10) && allocations >= cache_entries,
        || {
            format!(
                "cache: {cache_entries} entries of {cache_bytes} B added; the stacks whose innermost \
                 Python frame is expensive_search at line {} hold {bytes} B in {allocations} \
                 allocations:\n{}",
                lines.of("cache"),
                relevant(report, &cache, CACHE_OBJECT_BYTES)
            )
        },
    );
    checks.each_stack("cache", &cache, |s| {
        let names = python_names(s);
        if !in_order(&names, &["expensive_search", "search", "Handler.do_GET"]) {
            return Some("Python frames not expensive_search <- search <- Handler.do_GET".into());
        }
        if innermost_python_frame(s).unwrap()["file"] != file {
            return Some(format!("expensive_search's file is not {file}"));
        }
        if python_frame(s, "search").unwrap()["line"] != lines.search_call {
            return Some(format!("search is not at line {}", lines.search_call));
        }
        if python_frame(s, "Handler.do_GET").unwrap()["line"] != lines.do_get_search_call {
            return Some(format!(
                "Handler.do_GET is not at line {}",
                lines.do_get_search_call
            ));
        }
        hybrid_shape(s)
    });

    // Small objects: one Event per /event (no free list can recycle one), from pymalloc (or
    // malloc, under PYTHONMALLOC=malloc), at the LEAK:events line.
    let events_added = grew(before, after, "/events/count");
    let events = stacks_at_python_line(report, "record_event", lines.of("events"));
    let (event_bytes, event_allocations) = held_by(&events);
    checks.expect(event_allocations >= events_added, || {
        format!(
            "events: {events_added} added; the stacks whose innermost Python frame is record_event \
             at line {} hold {event_bytes} B in {event_allocations} allocations:\n{}",
            lines.of("events"),
            relevant(report, &events, 48)
        )
    });
    checks.each_stack("events", &events, |s| {
        if !in_order(&python_names(s), &["record_event", "Handler.do_GET"]) {
            return Some("Python frames not record_event <- Handler.do_GET".into());
        }
        hybrid_shape(s)
    });

    // Churn keeps nothing: no stack through the churn function holds a byte.
    let churn_requests = grew(before, after, "/churn/requests");
    let churned: Vec<&Value> = stacks
        .iter()
        .copied()
        .filter(|s| python_frame(s, "churn").is_some() && s["outstanding_bytes"] != 0)
        .collect();
    checks.expect(churned.is_empty(), || {
        format!(
            "churn: {churn_requests} requests keep nothing, yet stacks through churn hold {} B:\n{}",
            held_by(&churned).0,
            stacks_text(&churned, SHOWN)
        )
    });

    // The worker thread's own leak, at its line, on its own frames (Thread.run below it), none
    // of the main thread's or of the handler thread that handed it the job.
    let thread_bytes = grew(before, after, "/thread/bytes");
    let thread_objects = grew(before, after, "/thread/objects");
    let thread = stacks_at_python_line(report, "leak_worker", lines.of("thread"));
    let held_thread = held_by(&thread);
    checks.expect(held_thread == (thread_bytes, thread_objects), || {
        format!(
            "thread: {thread_objects} objects of {thread_bytes} B kept by leak_worker; the stacks \
             whose innermost Python frame is leak_worker at line {} hold {} B in {}:\n{}",
            lines.of("thread"),
            held_thread.0,
            held_thread.1,
            relevant(report, &thread, THREAD_OBJECT_BYTES)
        )
    });
    checks.each_stack("thread", &thread, |s| {
        let names = python_names(s);
        if !in_order(&names, &["leak_worker", "Thread.run"]) {
            return Some("Python frames not leak_worker <- Thread.run".into());
        }
        if let Some(other) = NOT_OTHER_THREADS.iter().find(|n| names.contains(n)) {
            return Some(format!(
                "another thread's frame {other} is on the worker's stack"
            ));
        }
        hybrid_shape(s)
    });

    // The GIL released (ctypes): exactly the blocks of 7777 B malloc'd, all at the LEAK:nogil
    // line, in the handler thread.
    let nogil_blocks = grew(before, after, "/nogil/blocks");
    assert_eq!(
        nogil_blocks,
        NOGIL_CALLS * NOGIL_BLOCKS_PER_CALL,
        "/truth nogil"
    );
    let nogil = stacks_of_blocks(report, NOGIL_BLOCK_BYTES);
    let (_, held_nogil) = held_by(&nogil);
    checks.expect(held_nogil == nogil_blocks, || {
        format!(
            "nogil: {nogil_blocks} blocks of {NOGIL_BLOCK_BYTES} B malloc'd with the GIL released; \
             the report holds {held_nogil}:\n{}",
            relevant(report, &nogil, NOGIL_BLOCK_BYTES)
        )
    });
    checks.each_stack("nogil", &nogil, |s| {
        let Some(inner) = innermost_python_frame(s) else {
            return Some("no Python frames".into());
        };
        if inner["function"] != "nogil" || inner["line"] != lines.of("nogil") {
            return Some(format!(
                "the innermost Python frame is not nogil at line {}",
                lines.of("nogil")
            ));
        }
        if !python_names(s).contains(&"Handler.do_GET") {
            return Some("no Handler.do_GET frame".into());
        }
        hybrid_shape(s)
    });

    // asyncio: the coroutine's objects (6033 B each) have handle_async at its line among their
    // Python frames, on the loop thread's stack (run_loop, Thread.run), not the submitter's.
    let async_bytes = grew(before, after, "/async/bytes");
    let async_objects = grew(before, after, "/async/objects");
    let coroutine = stacks_of_blocks(report, ASYNC_OBJECT_BYTES);
    let held_async = held_by(&coroutine);
    checks.expect(held_async == (async_bytes, async_objects), || {
        format!(
            "async: {async_objects} objects of {async_bytes} B kept by handle_async; the stacks \
             holding blocks of {ASYNC_OBJECT_BYTES} B hold {} B in {}:\n{}",
            held_async.0,
            held_async.1,
            relevant(report, &coroutine, ASYNC_OBJECT_BYTES)
        )
    });
    checks.each_stack("async", &coroutine, |s| {
        let at_line = python_frames(s)
            .iter()
            .any(|f| f["function"] == "handle_async" && f["line"] == lines.of("async"));
        if !at_line {
            return Some(format!(
                "no Python frame handle_async at line {}",
                lines.of("async")
            ));
        }
        let names = python_names(s);
        if !in_order(&names, &["handle_async", "run_loop", "Thread.run"]) {
            return Some("Python frames not handle_async <- ... <- run_loop <- Thread.run".into());
        }
        if let Some(other) = NOT_OTHER_THREADS.iter().find(|n| names.contains(n)) {
            return Some(format!(
                "another thread's frame {other} is on the loop's stack"
            ));
        }
        hybrid_shape(s)
    });

    let summary = format!(
        "{version} ({}): {with_python} of {} stacks with Python frames; cache +{cache_entries} \
         = {cache_bytes} B, at its line {bytes} B in {allocations}; events +{events_added}, at \
         its line {event_allocations} allocations; churn x{churn_requests}, {} B held; thread \
         +{thread_objects} = {thread_bytes} B, at its line {} B in {}; nogil +{nogil_blocks} \
         blocks, {held_nogil} seen; async +{async_objects} = {async_bytes} B, {} B in {} seen",
        python.display(),
        stacks.len(),
        held_by(&churned).0,
        held_thread.0,
        held_thread.1,
        held_async.0,
        held_async.1,
    );
    (summary, checks.failures)
}

#[test]
fn a_python_service_leaks_are_found_by_their_python_lines() {
    require_root();
    let dir = scratch_dir("python-service");
    let script = script();
    let lines = Lines::read(&script);
    let mut failures = Vec::new();
    for python in python_interpreters() {
        let traced = trace_service(&python, &script, &dir);
        let (summary, found) = check_report(&python, &script, &lines, &traced);
        eprintln!("python service: {summary}");
        failures.extend(
            found
                .into_iter()
                .map(|f| format!("{}: {f}", python.display())),
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}
