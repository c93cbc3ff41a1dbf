//! End-to-end: stopping a live target for a reachability scan never harms it — a tracer
//! SIGKILLed mid-scan leaves it running, threads created and exiting during the scan are all
//! stopped and let go, a target another tracer (strace) holds is scanned without stopping, and
//! a Python target is not scanned at all (said so).

use std::{
    fs,
    io::{BufRead, BufReader, Lines, Write},
    process::{ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use leaktracer_e2e::*;
use serde_json::Value;

/// `tests/workloads/reach_heap.c`: MIB of 4 KiB blocks, each held by a global array.
struct Heap {
    workload: Workload,
    lines: Lines<BufReader<ChildStdout>>,
    blocks: u64,
}

impl Heap {
    /// Starts it (its heap not built yet).
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(workload("reach_heap"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "started");
        Self {
            workload: Workload(child),
            lines,
            blocks: 0,
        }
    }

    fn pid(&self) -> u32 {
        self.workload.pid()
    }

    fn say(&mut self, line: &str) {
        let stdin = self.workload.0.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Builds the heap (traced, so every block is known) and waits until it is.
    fn build(&mut self) {
        self.say("go");
        let ready = self.lines.next().unwrap().unwrap();
        self.blocks = ready.strip_prefix("ready ").unwrap().parse().unwrap();
    }

    /// Asks it to check its blocks: it runs on, with every block intact.
    fn assert_runs_intact(&mut self) {
        self.say("ping");
        assert_eq!(
            self.lines.next().unwrap().unwrap(),
            format!("pong {}", self.blocks),
            "the target answers with all its blocks intact"
        );
    }
}

fn state_of(pid: u32) -> (char, u32) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    (
        field("State:").chars().next().unwrap(),
        field("TracerPid:").parse().unwrap(),
    )
}

/// Attaches `leaktracer trace --reachability FLAGS --pid` to `heap`, builds its heap while
/// traced, then ends the trace as Ctrl-C would (the scan comes next), and returns the tracer.
fn trace_heap(heap: &mut Heap, json: &std::path::Path, flags: &[&str]) -> Tracer {
    let pid = heap.pid().to_string();
    let mut args = vec!["trace", "-q", "-v", "--reachability", "--pid", &pid];
    args.extend(["--json", json.to_str().unwrap()]);
    args.extend(flags);
    let mut tracer = Tracer::start(&args);
    tracer.wait_attached();
    heap.build();
    tracer.interrupt();
    tracer
}

/// The heap's blocks and the array holding them (`build_heap`'s two stacks): every one
/// still reachable, exactly.
fn assert_all_held_blocks_reachable(report: &Value, blocks: u64) {
    let stacks = stacks_at(report, "build_heap");
    assert_eq!(stacks.len(), 2, "the blocks' stack and the array's");
    let sum = |class: &str, figure: &str| -> u64 {
        stacks
            .iter()
            .map(|s| s["reachability"][class][figure].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("still_reachable", "allocations"), blocks + 1);
    assert_eq!(sum("still_reachable", "bytes"), blocks * 4096 + blocks * 8);
    for lost in ["definitely_lost", "indirectly_lost", "possibly_lost"] {
        assert_eq!(sum(lost, "allocations"), 0, "{lost}: {}", stacks[0]);
    }
}

/// A tracer killed with SIGKILL while the target is stopped for its scan: the kernel detaches
/// and resumes the target (leaktracer never asks for PTRACE_O_EXITKILL), which runs on.
#[test]
fn a_tracer_killed_mid_scan_leaves_the_target_running() {
    require_root();
    let dir = scratch_dir("reach-kill");
    // 512 MiB takes about half a second to read: long enough to be caught stopped.
    let mut heap = Heap::start(&["512"]);
    let tracer = trace_heap(&mut heap, &dir.join("never.json"), &["--max-pause", "30s"]);
    let pid = heap.pid();
    let deadline = Instant::now() + Duration::from_secs(60);
    while state_of(pid).0 != 't' {
        assert!(
            Instant::now() < deadline,
            "the target was never seen stopped for its scan"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    // SAFETY: killing the tracer we started.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGKILL) };
    let done = tracer.finish();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&done.status),
        Some(libc::SIGKILL)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (state, tracer_pid) = state_of(pid);
        if state != 't' && tracer_pid == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target stayed stopped ({state}, TracerPid {tracer_pid})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    heap.assert_runs_intact();
    assert!(!dir.join("never.json").exists(), "no half report");
}

/// 64 threads being created and exiting all through the scan: every thread present is stopped
/// (the list is read again until no new one appears), each is let go, and the verdict on the
/// held blocks is exact.
#[test]
fn threads_coming_and_going_are_all_stopped_and_let_go() {
    require_root();
    let dir = scratch_dir("reach-threads");
    let json = dir.join("threads.json");
    let mut heap = Heap::start(&["16", "churn", "64"]);
    let tracer = trace_heap(&mut heap, &json, &["--max-pause", "2s"]);
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    let report = read_json(&json);
    let scan = &report["reachability"];
    assert_eq!(scan["complete"], true, "{scan}");
    assert_eq!(scan["mode"], "exact", "{scan}");
    // The main thread and the churner at least; short-lived ones caught mid-life besides.
    assert!(scan["threads"].as_u64().unwrap() >= 2, "{scan}");
    assert!(scan["pause_ms"].as_f64().unwrap() > 0.0);
    assert_all_held_blocks_reachable(&report, heap.blocks);
    assert_eq!(state_of(heap.pid()).1, 0, "no tracer left on the target");
    heap.assert_runs_intact();
}

/// A target strace already holds cannot be stopped by a second tracer: it is scanned while it
/// runs, the report says so (mode `unstopped`, naming strace), and strace keeps it.
#[test]
fn a_target_under_strace_is_scanned_without_stopping_and_said_so() {
    require_root();
    if !installed("strace") {
        eprintln!("SKIP: strace is not installed (apt-get install strace)");
        return;
    }
    let dir = scratch_dir("reach-strace");
    let json = dir.join("strace.json");
    let mut heap = Heap::start(&["8"]);
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-p",
            &heap.pid().to_string(),
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(heap.pid()).1 != strace.id() {
        assert!(Instant::now() < deadline, "strace never attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tracer = trace_heap(&mut heap, &json, &[]);
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    let report = read_json(&json);
    let scan = &report["reachability"];
    assert_eq!(scan["mode"], "unstopped", "{scan}");
    assert!(
        scan["notes"].to_string().contains("strace"),
        "the note names the other tracer: {scan}"
    );
    // Idle while scanned, so the picture is still exact for the held blocks.
    assert_all_held_blocks_reachable(&report, heap.blocks);
    assert!(done.stdout.contains("unstopped scan"), "{}", done.stdout);
    assert_eq!(state_of(heap.pid()).1, strace.id(), "strace still holds it");
    heap.assert_runs_intact();
    let _ = strace.kill();
    let _ = strace.wait();
}

/// `POST /api/reachability` with --serve and --reachability: a scan made there and then,
/// answered with the classes of every stack (the heap's blocks all still reachable), while the
/// trace goes on; the target runs on with its blocks intact.
#[test]
fn a_scan_asked_for_over_http_is_answered_while_the_trace_goes_on() {
    require_root();
    let dir = scratch_dir("reach-http");
    let json = dir.join("http.json");
    let addr = free_loopback_addr();
    let mut heap = Heap::start(&["8"]);
    let tracer = serve_heap(
        &mut heap,
        addr,
        &["--reachability", "--json", json.to_str().unwrap()],
    );
    let reply = post_scan(addr, &[]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.body;
    let answer: Value = serde_json::from_str(&body).unwrap();
    let scan = &answer["reachability"];
    assert_eq!(scan["complete"], true, "{scan}");
    assert_eq!(scan["mode"], "exact", "{scan}");
    let held: u64 = answer["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["function"] == "build_heap")
        .map(|s| {
            s["reachability"]["still_reachable"]["allocations"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(held, heap.blocks + 1, "the blocks and their array: {body}");
    heap.assert_runs_intact();
    // The trace went on, and its report keeps the scan's classes.
    tracer.interrupt();
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    let report = read_json(&json);
    assert_all_held_blocks_reachable(&report, heap.blocks);
}

/// Starts `leaktracer trace -q --pid HEAP --interval 1s --serve ADDR FLAGS...`, and builds the
/// heap once it traces.
fn serve_heap(heap: &mut Heap, addr: std::net::SocketAddr, flags: &[&str]) -> Tracer {
    let pid = heap.pid().to_string();
    let addr = addr.to_string();
    let mut args = vec![
        "trace",
        "-q",
        "--pid",
        &pid,
        "--interval",
        "1s",
        "--serve",
        &addr,
    ];
    args.extend(flags);
    let mut tracer = Tracer::start(&args);
    tracer.wait_attached();
    heap.build();
    tracer
}

/// `POST /api/reachability` with `headers`.
fn post_scan(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> Reply {
    http_request(
        addr,
        "POST",
        "/api/reachability",
        headers,
        Duration::from_secs(60),
    )
}

/// Counts the times a process is seen held by a tracer (its TracerPid turning nonzero), by
/// reading its status every 200 us: a scan of the 64 MiB heap holds it for tens of ms.
struct StopCounter {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counter: std::thread::JoinHandle<u32>,
}

impl StopCounter {
    fn watch(pid: u32) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let counter = std::thread::spawn(move || {
            let (mut stops, mut held) = (0, false);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = state_of(pid).1 != 0;
                stops += u32::from(now && !held);
                held = now;
                std::thread::sleep(Duration::from_micros(200));
            }
            stops
        });
        Self { done, counter }
    }

    /// The stops seen so far; the watch ends.
    fn stops(self) -> u32 {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.counter.join().unwrap()
    }
}

/// How many scans leaktracer said it made over HTTP.
fn http_scans_said(stderr: &str) -> usize {
    stderr
        .matches("scanning for pointers to the outstanding blocks (/api/reachability)")
        .count()
}

/// Without --reachability, `/api/reachability` stops nothing, whatever the method: GET and
/// HEAD are not for scans (405, naming POST), and POST says scans need --reachability (403).
#[test]
fn without_reachability_the_endpoint_stops_nothing() {
    require_root();
    let addr = free_loopback_addr();
    let mut heap = Heap::start(&["64"]);
    let tracer = serve_heap(&mut heap, addr, &[]);
    let watch = StopCounter::watch(heap.pid());
    let timeout = Duration::from_secs(60);
    for method in ["GET", "HEAD"] {
        let reply = http_request(addr, method, "/api/reachability", &[], timeout);
        assert_eq!(reply.status, 405, "{method}: {}", reply.body);
        assert_eq!(reply.header("allow"), Some("POST"), "{method}");
    }
    let reply = post_scan(addr, &[]);
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(
        reply.body.starts_with("leaktracer: scans are off: ")
            && reply.body.contains("start it with --reachability"),
        "{}",
        reply.body
    );
    assert_eq!(watch.stops(), 0, "the target was stopped");
    heap.assert_runs_intact();
    tracer.interrupt();
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(http_scans_said(&done.stderr), 0, "{}", done.stderr);
}

/// With --reachability, GET and HEAD still stop nothing, and 20 clients POSTing at once stop
/// the target once: requests that come during a scan, or within --max-pause x 10 after it
/// (2 s by default), are answered with that scan (HTTP `Age` on the ones it did not start).
#[test]
fn twenty_concurrent_scan_requests_stop_the_target_at_most_twice() {
    require_root();
    let addr = free_loopback_addr();
    let mut heap = Heap::start(&["64"]);
    // A cap the 64 MiB scan meets even beside the other tests of this file (at the default
    // 200 ms it came out incomplete there); the window of merged requests is then 20 s.
    let tracer = serve_heap(&mut heap, addr, &["--reachability", "--max-pause", "2s"]);
    let watch = StopCounter::watch(heap.pid());
    let timeout = Duration::from_secs(60);
    for method in ["GET", "HEAD"] {
        let reply = http_request(addr, method, "/api/reachability", &[], timeout);
        assert_eq!(reply.status, 405, "{method}: {}", reply.body);
    }
    let clients: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || post_scan(addr, &[])))
        .collect();
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let stops = watch.stops();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let answer: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(answer["reachability"]["complete"], true, "{}", reply.body);
    }
    assert!((1..=2).contains(&stops), "{stops} stops for 20 requests");
    let mut bodies: Vec<&str> = replies.iter().map(|r| r.body.as_str()).collect();
    bodies.sort();
    bodies.dedup();
    assert!(bodies.len() <= 2, "{} different scans", bodies.len());
    heap.assert_runs_intact();
    tracer.interrupt();
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    let said = http_scans_said(&done.stderr);
    assert!(
        (1..=2).contains(&said),
        "{said} scans said: {}",
        done.stderr
    );
}

/// A request that names another host (DNS rebinding: a page of evil.example.com whose name now
/// points here) is refused with 403 on every endpoint, and so is a scan POSTed from another
/// site's page (its Origin); neither stops the target. An IP address or `localhost`, on any
/// port (a tunnel's), is served.
#[test]
fn a_forged_host_or_another_site_s_post_is_refused() {
    require_root();
    let addr = free_loopback_addr();
    let mut heap = Heap::start(&["64"]);
    let tracer = serve_heap(&mut heap, addr, &["--reachability"]);
    let watch = StopCounter::watch(heap.pid());
    let timeout = Duration::from_secs(60);
    let forged = [("Host", "evil.example.com")];
    for path in ["/", "/metrics", "/api/snapshot", "/flamegraph.svg"] {
        let reply = http_request(addr, "GET", path, &forged, timeout);
        assert_eq!(reply.status, 403, "{path}: {}", reply.body);
        assert_eq!(
            reply.body,
            format!(
                "leaktracer: refused: Host `evil.example.com` is not an IP address or localhost; ask for http://{addr}/ (requests addressed to a DNS name are refused, against DNS rebinding)\n"
            )
        );
    }
    let with_port = format!("evil.example.com:{}", addr.port());
    for host in [with_port.as_str(), "evil.example.com"] {
        assert_eq!(post_scan(addr, &[("Host", host)]).status, 403, "{host}");
    }
    let reply = post_scan(addr, &[("Origin", "http://evil.example.com")]);
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("another site"), "{}", reply.body);
    assert_eq!(watch.stops(), 0, "the target was stopped");
    // As a browser names it, and through a tunnel whose port differs (ssh -L 8080:...).
    let localhost = format!("localhost:{}", addr.port());
    for host in [localhost.as_str(), "127.0.0.1:8080", "localhost:8080"] {
        let reply = http_request(addr, "GET", "/", &[("Host", host)], timeout);
        assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    }
    // The dashboard's own POST (its Origin is the server) is a scan.
    let origin = format!("http://{addr}");
    let reply = post_scan(addr, &[("Origin", &origin)]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    heap.assert_runs_intact();
    tracer.interrupt();
    assert!(tracer.finish().status.success());
}

/// A heap that cannot be read within the pause cap: the target is let go at the cap (give or
/// take one batch), the scan says it is incomplete and classes nothing, and the target runs on.
#[test]
fn a_heap_larger_than_the_pause_cap_is_let_go_at_the_cap() {
    require_root();
    let dir = scratch_dir("reach-cap");
    let json = dir.join("cap.json");
    let mut heap = Heap::start(&["512"]);
    let done = trace_heap(&mut heap, &json, &["--max-pause", "50ms"]).finish();
    assert!(done.status.success(), "{}", done.stderr);
    let scan = &read_json(&json)["reachability"];
    assert_eq!(scan["complete"], false, "{scan}");
    assert!(scan["notes"].to_string().contains("--max-pause"), "{scan}");
    assert_eq!(
        scan["still_reachable"]["allocations"], 0,
        "nothing classed: {scan}"
    );
    // 512 MiB takes about half a second to read here: the cap cut it well short of that.
    let pause = scan["pause_ms"].as_f64().unwrap();
    assert!(pause < 400.0, "paused {pause} ms with a 50 ms cap");
    assert!(done.stdout.contains("INCOMPLETE"), "{}", done.stdout);
    heap.assert_runs_intact();
}

/// Issue 24: the pause cap is a promise. A 1 GiB heap (about a second to read here) with a
/// 200 ms cap: every phase counts (stopping, the records, the heaps, letting go), and the
/// target is let go within the cap, not one batch after it (it was 249.7 ms).
#[test]
fn a_one_gib_heap_is_let_go_within_the_pause_cap() {
    require_root();
    let dir = scratch_dir("reach-cap-gib");
    let json = dir.join("cap.json");
    let mut heap = Heap::start(&["1024"]);
    let done = trace_heap(&mut heap, &json, &["--max-pause", "200ms"]).finish();
    assert!(done.status.success(), "{}", done.stderr);
    let scan = &read_json(&json)["reachability"];
    assert_eq!(scan["complete"], false, "{scan}");
    let pause = scan["pause_ms"].as_f64().unwrap();
    assert!(
        pause <= 210.0,
        "paused {pause} ms with a 200 ms cap: {scan}"
    );
    heap.assert_runs_intact();
}

/// Python objects stay reachable by design: a Python target is not scanned, and the report
/// says why.
#[test]
fn a_python_target_is_not_scanned_and_the_report_says_why() {
    require_root();
    let Some(python) = python_interpreters().into_iter().next() else {
        eprintln!("SKIP: no Python interpreter found (python3.11 from Debian, or pyenv's)");
        return;
    };
    let dir = scratch_dir("reach-python");
    let json = dir.join("python.json");
    let mut target = Command::new(&python)
        .args([
            "-c",
            "import time\nkeep = [bytearray(3001) for _ in range(100)]\ntime.sleep(60)",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let done = run_tracer([
        "trace",
        "-q",
        "--reachability",
        "--duration",
        "2s",
        "--pid",
        &target.id().to_string(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let _ = target.kill();
    let _ = target.wait();
    assert!(done.status.success(), "{}", done.stderr);
    let scan = &read_json(&json)["reachability"];
    assert_eq!(scan["mode"], "none", "{scan}");
    assert_eq!(scan["processes"][0]["mode"], "skipped");
    assert!(
        scan["notes"].to_string().contains("Python interpreter"),
        "{scan}"
    );
    assert!(
        done.stdout.contains("Python interpreter"),
        "{}",
        done.stdout
    );
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: i32) {
    // SAFETY: kill with a pid and a signal number.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Waits up to `within` for `pid` to reach `state` (a letter of /proc/PID/status).
fn wait_state(pid: u32, state: char, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while state_of(pid).0 != state {
        assert!(
            Instant::now() < deadline,
            "{what}: state {:?}",
            state_of(pid)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits up to `within` for the workload to exit, and returns its status.
fn wait_exit(workload: &mut Workload, within: Duration) -> std::process::ExitStatus {
    let pid = workload.pid();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = workload.0.try_wait().unwrap() {
            return status;
        }
        let state = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not exit within {within:?} of the tracer's death: {}",
            state.lines().take(3).collect::<Vec<_>>().join("; ")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A heap of MIB built before the trace, then `leaktracer trace -q --reachability --max-pause
/// MAX_PAUSE --pid` on it, attached.
fn trace_built_heap(mib: &str, max_pause: &str) -> (Heap, Tracer) {
    let mut heap = Heap::start(&[mib]);
    heap.build();
    let pid = heap.pid().to_string();
    let mut tracer = Tracer::start([
        "trace",
        "-q",
        "--reachability",
        "--max-pause",
        max_pause,
        "--pid",
        &pid,
    ]);
    tracer.wait_attached();
    (heap, tracer)
}

/// Issue 24: the kernel stops a target at exit() with --reachability, and only leaktracer's
/// next poll lets it go. A leaktracer SIGKILLed before that poll (here: stopped itself, so it
/// cannot poll) must not leave the target stopped: its resume guard continues it, and the
/// target finishes its exit normally.
#[test]
fn a_target_frozen_at_exit_runs_on_when_the_tracer_is_killed() {
    require_root();
    let (mut heap, tracer) = trace_built_heap("4", "5s");
    let pid = heap.pid();
    signal(tracer.pid(), libc::SIGSTOP);
    heap.say("exit");
    wait_state(
        pid,
        'T',
        Duration::from_secs(10),
        "the kernel stops it at exit()",
    );
    signal(tracer.pid(), libc::SIGKILL);
    let status = wait_exit(&mut heap.workload, Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "it finished its exit: {status}");
    let done = tracer.finish();
    assert!(
        done.stderr
            .contains(&format!("ended without resuming pid {pid}")),
        "the guard says what it did: {}",
        done.stderr
    );
}

/// The same, killed while it scans the target stopped at exit() (the reproducer of issue 24: a
/// large heap, a long pause cap): the kernel lets the ptrace go, the SIGSTOP's stop stays, and
/// the guard continues it.
#[test]
fn a_target_scanned_at_exit_runs_on_when_the_tracer_is_killed_mid_scan() {
    require_root();
    // 512 MiB takes about half a second to read: long enough to be caught in the scan.
    let (mut heap, tracer) = trace_built_heap("512", "30s");
    let pid = heap.pid();
    heap.say("exit");
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(pid).1 != tracer.pid() {
        assert!(
            Instant::now() < deadline,
            "the target was never seen scanned at exit: {:?}",
            state_of(pid)
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    signal(tracer.pid(), libc::SIGKILL);
    let status = wait_exit(&mut heap.workload, Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "it finished its exit: {status}");
}

/// A CPython target attached by pid is stopped by the kernel at Py_FinalizeEx (its code objects
/// are read before the teardown frees them). A leaktracer killed before it lets it go must not
/// leave it stopped: the script finishes and exits 0.
#[test]
fn a_python_target_frozen_at_finalize_runs_on_when_the_tracer_is_killed() {
    require_root();
    let Some(python) = python_interpreters().into_iter().next() else {
        eprintln!("SKIP: no Python interpreter found (python3.11 from Debian, or pyenv's)");
        return;
    };
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import sys\nkeep = [bytearray(3001) for _ in range(100)]\nprint('ready', flush=True)\nsys.stdin.readline()\nprint('bye', flush=True)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut target = Workload(child);
    let pid = target.pid();
    let mut tracer = Tracer::start(["trace", "-q", "--pid", &pid.to_string()]);
    tracer.wait_attached();
    signal(tracer.pid(), libc::SIGSTOP);
    target.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    target.0.stdin.as_mut().unwrap().flush().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "bye");
    wait_state(
        pid,
        'T',
        Duration::from_secs(10),
        "the kernel stops it at Py_FinalizeEx",
    );
    signal(tracer.pid(), libc::SIGKILL);
    let status = wait_exit(&mut target, Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "it finished its teardown: {status}");
}
