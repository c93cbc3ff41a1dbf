//! End-to-end: threads' stacks (`tests/workloads/thread_stacks.c`). Idle threads started beside
//! a leak reserve 8 MiB each but cost a few pages: they must not outrank the leak as the top
//! grower nor enter the verdict, and they are reported as thread stacks, live and cached, with
//! what is resident of them. A thread count that keeps growing is a leak, of threads.

use std::{
    process::{ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use leaktracer_e2e::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The stack glibc maps for each thread of the workload (its guard page aside).
const STACK_BYTES: u64 = 8 * MIB;
const LINE_WAIT: Duration = Duration::from_secs(10);

/// The workload, started with `args`, after its "ready": its stdin and its lines.
fn start_workload(args: &[&str]) -> (Workload, ChildStdin, Lines) {
    let mut child = Command::new(workload("thread_stacks"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = Lines::read(child.stdout.take().unwrap());
    assert_eq!(lines.next_line(LINE_WAIT), "ready");
    (Workload(child), stdin, lines)
}

/// Starts an idle thread and waits until it runs.
fn start_idle_thread(stdin: &mut ChildStdin, lines: &mut Lines, n: usize) {
    send_line(stdin, "t");
    assert_eq!(lines.next_line(LINE_WAIT), format!("thread {n}"));
}

/// Starts a thread that ends at once and joins it: glibc keeps its stack.
fn start_and_join_a_thread(stdin: &mut ChildStdin, lines: &mut Lines) {
    send_line(stdin, "j");
    assert_eq!(lines.next_line(LINE_WAIT), "joined");
}

/// Traces `pid` with a sample a second until `drive` returns, then a moment more.
fn trace_while(pid: u32, json: &std::path::Path, drive: impl FnOnce()) -> (Finished, Value) {
    let mut tracer = Tracer::start([
        "trace".as_ref(),
        "--pid".as_ref(),
        pid.to_string().as_ref(),
        "--interval".as_ref(),
        "1s".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    tracer.wait_attached();
    drive();
    tracer.interrupt();
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    (done, read_json(json))
}

/// The stacks the report classes as thread stacks.
fn thread_stack_stacks(report: &Value) -> Vec<&Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["mapping_kind"] == "thread_stack")
        .collect()
}

/// The bar: a leak of ~100 KB/s at `leak_step` while 8 idle threads start, one a second, then
/// a thread that is joined (glibc caches its stack). The leak is the top grower on every
/// status line and the one leaking stack of the verdict; the threads' stacks are one stack
/// of thread stacks at `spawn_thread`: 8 live, 1 cached, 9 x 8 MiB reserved, a few pages of
/// each resident, a plateau. The first idle thread reuses the stack of a thread joined before
/// it (glibc's cache): that stack is live again.
#[test]
fn idle_threads_do_not_outrank_a_leak() {
    require_root();
    let dir = scratch_dir("thread_stacks_idle");
    let (target, mut stdin, mut lines) = start_workload(&[]);
    let started = Instant::now();
    let (done, report) = trace_while(target.pid(), &dir.join("idle.json"), || {
        std::thread::sleep(Duration::from_millis(500));
        start_and_join_a_thread(&mut stdin, &mut lines);
        for n in 1..=8 {
            std::thread::sleep(Duration::from_secs(1));
            start_idle_thread(&mut stdin, &mut lines, n);
        }
        start_and_join_a_thread(&mut stdin, &mut lines);
        // The second half of the trace without new threads: the pool has filled.
        std::thread::sleep(Duration::from_secs(9));
    });
    eprintln!("traced for {:.1} s", started.elapsed().as_secs_f64());

    // Every status line that names a top grower names the leak, at its rate.
    let growers: Vec<&str> = done
        .stderr
        .lines()
        .filter_map(|l| l.split("top grower: ").nth(1))
        .filter(|grower| *grower != "none")
        .collect();
    assert!(growers.len() >= 10, "{}", done.stderr);
    for grower in &growers {
        assert!(grower.starts_with("leak_step +"), "{}", done.stderr);
    }

    let verdict = &report["verdict"];
    assert_eq!(verdict["leak"], true, "{verdict}");
    assert_eq!(verdict["leaking_stacks"], 1, "{verdict}");
    assert_eq!(verdict["leaking_threads"], 0, "{verdict}");
    let leak = stacks_at(&report, "leak_step");
    assert_eq!(leak.len(), 1);
    assert_eq!(leak[0]["growth"]["class"], "leak", "{}", leak[0]["growth"]);
    // Ranked by what they cost: the leak first.
    assert_eq!(
        first_own_frame(&report["stacks"][0])["function"],
        "leak_step"
    );

    let threads = thread_stack_stacks(&report);
    assert_eq!(threads.len(), 1, "one stack of thread stacks: {threads:#?}");
    let stacks = threads[0];
    let names = real_frames(stacks);
    assert!(
        names.iter().any(|f| f.contains("pthread_create"))
            && names.contains(&"spawn_thread")
            && names.contains(&"main"),
        "mapped in pthread_create, called by spawn_thread from main: {names:?}"
    );
    assert_eq!(
        (
            stacks["threads"].as_u64(),
            stacks["cached_stacks"].as_u64(),
            stacks["outstanding_allocations"].as_u64(),
            stacks["outstanding_bytes"].as_u64(),
        ),
        (Some(8), Some(1), Some(9), Some(9 * STACK_BYTES)),
        "{stacks}"
    );
    // The threads touched a few pages of each stack: more than one, far less than 8 MiB.
    let resident = stacks["resident_bytes"].as_u64().unwrap();
    assert!(
        (9 * 4096..=9 * 256 * 1024).contains(&resident),
        "resident {resident}"
    );
    let growth = &stacks["growth"];
    assert_eq!(growth["class"], "plateau", "{growth}");
    let last = stacks["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["threads"].as_u64(), last["resident_bytes"].as_u64()),
        (Some(8), Some(resident))
    );
    // The text says what they are.
    assert!(
        done.stdout.contains(&format!(
            "thread stacks: 8 live threads, 1 cached (of threads that ended, kept for reuse); {} resident of 72.00 MiB reserved",
            human(resident)
        )),
        "{}",
        done.stdout
    );
}

/// A thread started every 200 ms, each blocked for ever and never joined: the thread count
/// keeps growing, and the verdict calls it a leak of threads, with their number.
#[test]
fn a_growing_thread_count_is_a_leak_of_threads() {
    require_root();
    let dir = scratch_dir("thread_stacks_leak");
    let (target, mut stdin, mut lines) = start_workload(&["--no-leak"]);
    const THREADS: usize = 50;
    let (done, report) = trace_while(target.pid(), &dir.join("threads.json"), || {
        for n in 1..=THREADS {
            std::thread::sleep(Duration::from_millis(200));
            start_idle_thread(&mut stdin, &mut lines, n);
        }
    });

    let threads = thread_stack_stacks(&report);
    assert_eq!(threads.len(), 1, "{threads:#?}");
    let stacks = threads[0];
    assert_eq!(
        (
            stacks["threads"].as_u64(),
            stacks["cached_stacks"].as_u64(),
            stacks["outstanding_bytes"].as_u64()
        ),
        (
            Some(THREADS as u64),
            Some(0),
            Some(THREADS as u64 * STACK_BYTES)
        ),
        "{stacks}"
    );
    let growth = &stacks["growth"];
    assert_eq!(growth["class"], "leak", "{growth}");
    let rate = growth["threads_per_sec"].as_f64().unwrap();
    assert!((4.0..=5.5).contains(&rate), "{growth}");

    let verdict = &report["verdict"];
    assert_eq!(verdict["leak"], true, "{verdict}");
    assert_eq!(verdict["leaking_threads"], THREADS as u64, "{verdict}");
    let summary = verdict["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "a leak of threads: {THREADS} threads started at spawn_thread still running"
        )),
        "{summary}"
    );
    assert!(done.stdout.contains("verdict: LEAK: "), "{}", done.stdout);
}

/// Bytes as the text report shows them (`human_bytes`: B below 1 KiB, else two decimals of
/// KiB, MiB, GiB).
fn human(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    for unit in ["KiB", "MiB"] {
        if value < 1024.0 {
            return format!("{value:.2} {unit}");
        }
        value /= 1024.0;
    }
    format!("{value:.2} GiB")
}

/// A launched command that returns from main with 3 idle threads running: exit_group kills
/// them with it, and its picture is the one at its end: 3 live threads (killed with their
/// process, not ended before it) and the stack of the thread it joined, cached.
#[test]
fn threads_killed_with_their_process_were_alive_at_its_end() {
    require_root();
    let dir = scratch_dir("thread_stacks_exit");
    let json = dir.join("exit.json");
    let binary = workload("thread_stacks");
    let (mut tracer, mut stdin, mut lines) = Tracer::start_piped([
        "trace".as_ref(),
        "--interval".as_ref(),
        "1s".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        binary.as_os_str(),
        "--no-leak".as_ref(),
    ]);
    tracer.wait_attached();
    lines.wait_for("ready", LINE_WAIT);
    for n in 1..=3 {
        start_idle_thread(&mut stdin, &mut lines, n);
    }
    start_and_join_a_thread(&mut stdin, &mut lines);
    // A sample reads what is resident of the stacks while the process lives.
    std::thread::sleep(Duration::from_millis(2500));
    drop(stdin);
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "target exited");
    let threads = thread_stack_stacks(&report);
    assert_eq!(threads.len(), 1, "{threads:#?}");
    let stacks = threads[0];
    assert_eq!(
        (
            stacks["threads"].as_u64(),
            stacks["cached_stacks"].as_u64(),
            stacks["outstanding_bytes"].as_u64()
        ),
        (Some(3), Some(1), Some(4 * STACK_BYTES)),
        "{stacks}"
    );
    // As last read while it lived.
    let resident = stacks["resident_bytes"].as_u64().unwrap();
    assert!(
        (4 * 4096..=4 * 256 * 1024).contains(&resident),
        "resident {resident}"
    );
}
