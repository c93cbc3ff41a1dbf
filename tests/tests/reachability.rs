//! `leaktracer trace --reachability` against `tests/workloads/reach.c`, whose every site holds
//! blocks of known valgrind-memcheck classes, and valgrind's own live verdict on the same binary
//! at the same moment (docs/design/reachability.md §3, §6).
//!
//! reach.c's protocol: it allocates `site_pre_holder` (stage 1), prints "stage1" and waits for
//! "go"; then it runs every other site, starts three threads that park, prints "ready PID", and
//! serves "ping" ("pong" when its reachable structures are intact and malloc/free work) and
//! "exit".

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leaktracer_e2e::{valgrind::SiteClasses, *};
use serde_json::Value;

const NONE: SiteClasses = SiteClasses::NONE;

/// Ground truth: what each site of reach.c holds once it printed "ready", by valgrind memcheck's
/// definitions (heuristics off), as `(bytes, blocks)` per class.
const GROUND_TRUTH: [(&str, SiteClasses); 13] = [
    // Stage 1, pointer kept in the global `pre_holder`.
    (
        "site_pre_holder",
        SiteClasses {
            still_reachable: (72, 1),
            ..NONE
        },
    ),
    // The only pointer overwritten.
    (
        "site_dropped",
        SiteClasses {
            definitely_lost: (100, 1),
            ..NONE
        },
    ),
    // A 3-node list of 136-byte nodes, head dropped: the head is definitely lost, the two nodes
    // it leads to indirectly.
    (
        "site_list",
        SiteClasses {
            definitely_lost: (136, 1),
            indirectly_lost: (272, 2),
            ..NONE
        },
    ),
    // Two 168-byte blocks pointing at each other, nothing else at them: the clique's leader
    // (lower address) definitely, the other indirectly. Same sizes, so the bytes do not depend
    // on which one malloc placed lower.
    (
        "site_cycle",
        SiteClasses {
            definitely_lost: (168, 1),
            indirectly_lost: (168, 1),
            ..NONE
        },
    ),
    // In a global array.
    (
        "site_global_array",
        SiteClasses {
            still_reachable: (800, 4),
            ..NONE
        },
    ),
    // A 3-node list whose head is a global.
    (
        "site_global_list",
        SiteClasses {
            still_reachable: (696, 3),
            ..NONE
        },
    ),
    // In the main thread's `__thread` pointer.
    (
        "site_tls_main",
        SiteClasses {
            still_reachable: (264, 1),
            ..NONE
        },
    ),
    // In a parked thread's `__thread` pointer (malloc'ed on that thread: another arena).
    (
        "site_tls_thread",
        SiteClasses {
            still_reachable: (296, 1),
            ..NONE
        },
    ),
    // In a volatile local of a parked thread's stack.
    (
        "site_stack_local",
        SiteClasses {
            still_reachable: (328, 1),
            ..NONE
        },
    ),
    // Only `p + 16` kept, in a global.
    (
        "site_interior",
        SiteClasses {
            possibly_lost: (360, 1),
            ..NONE
        },
    ),
    // Its only pointer was stored in a block that was then freed (the 424-byte holder, not
    // outstanding; the stale pointer stays in the free chunk, at offset 32).
    (
        "site_freed_holder",
        SiteClasses {
            definitely_lost: (392, 1),
            ..NONE
        },
    ),
    // Pointed at from inside the stage-1 block (which attach mode never saw allocated).
    (
        "site_via_pre_holder",
        SiteClasses {
            still_reachable: (456, 1),
            ..NONE
        },
    ),
    // Its only copy is in %xmm8 of a thread parked in a raw pause syscall loop.
    (
        "site_vector_reg",
        SiteClasses {
            still_reachable: (488, 1),
            ..NONE
        },
    ),
];

/// valgrind 3.19's verdict on `site_vector_reg`, the one place it differs from the ground truth:
/// its leak search takes only the general-purpose registers of each thread as roots (checked
/// with vgdb on this workload: "488 bytes in 1 blocks are definitely lost"), so a pointer held
/// only in a vector register is a lost block to it. leaktracer scans the XSTATE area too.
const VALGRIND_VECTOR_REG: SiteClasses = SiteClasses {
    definitely_lost: (488, 1),
    ..NONE
};

/// reach.c's threads once it says "ready": main, the `__thread` one, the stack-local one and
/// the vector-register one.
const REACH_THREADS: u64 = 4;

/// Long enough for a slow machine; a hung workload still fails the test instead of hanging it.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// The ground truth with `site` replaced by `classes`.
fn truth_with(site: &str, classes: SiteClasses) -> Vec<(&'static str, SiteClasses)> {
    GROUND_TRUTH
        .iter()
        .map(|&(s, c)| (s, if s == site { classes } else { c }))
        .collect()
}

/// Fails, listing every difference, unless `found` holds exactly `expected` for each site and no
/// other `site_*` function holds anything.
fn assert_classes(
    who: &str,
    found: &BTreeMap<String, SiteClasses>,
    expected: &[(&str, SiteClasses)],
) {
    let mut wrong = Vec::new();
    for &(site, classes) in expected {
        let got = found.get(site).copied().unwrap_or(NONE);
        if got != classes {
            wrong.push(format!(
                "  {site}: expected {classes:?}\n  {site}: {who} says {got:?}"
            ));
        }
    }
    for (site, classes) in found {
        let known = expected.iter().any(|&(s, _)| s == site);
        if site.starts_with("site_") && !known && *classes != NONE {
            wrong.push(format!(
                "  {site}: not a site of reach.c, {who} says {classes:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{who} disagrees with the expected classes:\n{}\neverything {who} reported: {found:#?}",
        wrong.join("\n")
    );
}

/// valgrind's live leak search on reach.c at "ready" gives every site exactly its ground-truth
/// classes, but for the vector-register block (see [`VALGRIND_VECTOR_REG`]). This checks the
/// workload itself: that no stray copy of a lost pointer survives, and that each construct is
/// the class the design note says. Needs no tracer and no root.
#[test]
fn valgrind_agrees_with_the_expected_classes() {
    let Some(found) = valgrind::live_leak_check(&workload("reach")) else {
        eprintln!(
            "SKIPPED valgrind_agrees_with_the_expected_classes: valgrind or vgdb is not installed \
             (the line above names which)"
        );
        return;
    };
    assert_classes(
        "valgrind",
        &found,
        &truth_with("site_vector_reg", VALGRIND_VECTOR_REG),
    );
}

/// The site classes of a leaktracer report, summed per site over the stacks whose first own
/// frame is the site.
fn report_classes(report: &Value) -> BTreeMap<String, SiteClasses> {
    let mut sites: BTreeMap<String, SiteClasses> = BTreeMap::new();
    for stack in report["stacks"].as_array().unwrap() {
        let function = first_own_frame(stack)["function"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if function.starts_with("site_") {
            add_reachability(
                sites.entry(function).or_default(),
                &stack["reachability"],
                stack,
            );
        }
    }
    sites
}

/// Checks a `--reachability` report: each site's classes are exactly `expected`; every stack's
/// four classes add up to what it holds outstanding; the top level covers the whole report,
/// counts reach.c's threads, was complete and paused the target for a measured time.
fn assert_reachability_report(report: &Value, expected: &[(&str, SiteClasses)]) {
    assert_classes("leaktracer", &report_classes(report), expected);

    let mut total = NONE;
    for stack in report["stacks"].as_array().unwrap() {
        let mut own = NONE;
        add_reachability(&mut own, &stack["reachability"], stack);
        let classified = SiteClasses::CLASSES.iter().fold((0, 0), |(b, n), class| {
            let c = own.class_mut(class);
            (b + c.0, n + c.1)
        });
        assert_eq!(
            classified,
            (
                stack["outstanding_bytes"].as_u64().unwrap(),
                stack["outstanding_allocations"].as_u64().unwrap()
            ),
            "a complete scan puts each outstanding block of a stack in one class: {stack}"
        );
        add_reachability(&mut total, &stack["reachability"], stack);
    }

    let top = &report["reachability"];
    let mut summary = NONE;
    add_reachability(&mut summary, top, top);
    assert_eq!(
        summary, total,
        "the top-level classes are the sum over the stacks: {top}"
    );
    // glibc's heaps walked, every thread stopped: valgrind's verdict, not a conservative one.
    assert_eq!(top["mode"], "exact", "{top}");
    assert_eq!(top["complete"], true, "{top}");
    assert_eq!(top["threads"].as_u64(), Some(REACH_THREADS), "{top}");
    assert!(
        top["pause_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "reachability.pause_ms: {top}"
    );
    assert!(
        top["scanned_bytes"].as_u64().is_some_and(|b| b > 0),
        "reachability.scanned_bytes: {top}"
    );
}

/// Launch mode: leaktracer starts reach.c (which inherits leaktracer's stdin and stdout, so the
/// test talks to it through them), the test drives it to "ready" and ends the trace with SIGINT;
/// the scan runs then, with the target alive. Everything was traced from exec on, so the
/// stage-1 block is a tracked block like the others.
#[test]
fn launched_reach_classes_match_the_ground_truth() {
    let (report, pid) = launch_reach("reach_launch", |tracer, stdin, lines| {
        send_line(stdin, "ping");
        assert_eq!(lines.wait_for("pong", LINE_TIMEOUT), "pong");
        tracer.interrupt();
    });
    assert_eq!(report["end_reason"], "interrupted");
    assert_eq!(report["target"]["pids"], serde_json::json!([pid]));
    assert_reachability_report(&report, &GROUND_TRUTH);
}

/// Launches reach.c under `leaktracer trace --reachability`, drives it to "ready", lets `end`
/// end the trace, and returns the report with reach's pid.
fn launch_reach(
    scratch: &str,
    end: impl FnOnce(&Tracer, &mut std::process::ChildStdin, &mut Lines),
) -> (Value, u32) {
    require_root();
    let dir = scratch_dir(scratch);
    let json = dir.join("reach.json");
    let reach = workload("reach");
    let (tracer, mut stdin, mut lines) = Tracer::start_piped([
        "trace",
        "-q",
        "--reachability",
        "--json",
        json.to_str().unwrap(),
        "--",
        reach.to_str().unwrap(),
    ]);
    lines.wait_for("stage1", LINE_TIMEOUT);
    send_line(&mut stdin, "go");
    let pid = reach_ready_pid(&lines.wait_for("ready ", LINE_TIMEOUT));
    end(&tracer, &mut stdin, &mut lines);
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
    drop(stdin);
    (read_json(&json), pid)
}

/// Launch mode, as valgrind is used: the program runs to its end. The kernel stops it at
/// exit(), before any teardown, the scan runs there, it exits, and the report (the picture
/// from that moment) has every site in its class, with the scan marked as made at exit.
#[test]
fn launched_reach_scanned_at_its_exit_matches_the_ground_truth() {
    let (report, pid) = launch_reach("reach_exit", |_, stdin, _| send_line(stdin, "exit"));
    assert_eq!(report["end_reason"], "target exited");
    assert_eq!(
        report["target_exit"]["code"], 0,
        "it exited normally after its scan"
    );
    let process = &report["reachability"]["processes"][0];
    assert_eq!(process["pid"], pid);
    assert_eq!(process["at_exit"], true, "{process}");
    assert_reachability_report(&report, &GROUND_TRUTH);
}

/// Attach mode: reach.c runs its stage 1 before leaktracer attaches, so `site_pre_holder` is a
/// block leaktracer never saw allocated (an in-use chunk it must find in glibc's arena and
/// scan as a root: `site_via_pre_holder` is reachable only through it). The trace ends at
/// --duration with the scan, and the target runs on afterwards.
#[test]
fn attached_reach_classes_match_the_ground_truth_and_the_target_runs_on() {
    require_root();
    let dir = scratch_dir("reach_attach");
    let json = dir.join("reach.json");
    let mut child = Command::new(workload("reach"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = Lines::read(child.stdout.take().unwrap());
    let mut target = Workload(child);
    let pid = target.pid();
    assert_eq!(lines.next_line(LINE_TIMEOUT), "stage1");

    let mut tracer = Tracer::start([
        "trace",
        "-q",
        "--reachability",
        "--pid",
        &pid.to_string(),
        "--duration",
        "4s",
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    send_line(&mut stdin, "go");
    assert_eq!(reach_ready_pid(&lines.next_line(LINE_TIMEOUT)), pid);
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);

    // The scan stopped and resumed the target: it still answers, its structures intact.
    assert!(is_alive(pid));
    send_line(&mut stdin, "ping");
    assert_eq!(lines.next_line(LINE_TIMEOUT), "pong");
    send_line(&mut stdin, "exit");
    let deadline = Instant::now() + LINE_TIMEOUT;
    let status = loop {
        if let Some(status) = target.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "reach did not exit on \"exit\"");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    let report = read_json(&json);
    assert_eq!(report["end_reason"], "duration");
    assert_eq!(report["target"]["pids"], serde_json::json!([pid]));
    assert!(
        !mentions(&report, "site_pre_holder"),
        "the stage-1 block was allocated before the trace"
    );
    assert_reachability_report(&report, &truth_with("site_pre_holder", NONE));
}

/// The bar on a real program: Debian's redis-server storing keys grows steadily, but every
/// stored key is still referenced (through its dict, sds strings by their characters), so the
/// verdict calls it growth to bound, not a leak.
#[test]
fn redis_storing_keys_is_still_referenced_growth_not_a_leak() {
    require_root();
    let dir = scratch_dir("reach-redis");
    let Some((server, port)) = start_redis(&dir) else {
        return;
    };
    let json = dir.join("redis.json");
    let pid = server.pid().to_string();
    let mut tracer = Tracer::start([
        "trace",
        "-q",
        "--reachability",
        "--max-pause",
        "5s",
        "--pid",
        &pid,
        "--duration",
        "10s",
        "--interval",
        "1s",
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    // SETs of new keys for the whole trace (it is killed after): steady growth. One client,
    // so the keys stay within the default record capacity (one request at a time: tens of
    // thousands of keys a second at most, three records each; with 50 clients redis fills the
    // table in seconds and the records after are dropped, alloc_map_full).
    let mut client = Command::new("redis-benchmark")
        .args([
            "-c",
            "1",
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-n",
            "50000000",
            "-r",
            "100000000",
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = tracer.finish();
    let _ = client.kill();
    let _ = client.wait();
    assert!(done.status.success(), "{}", done.stderr);
    let report = read_json(&json);
    let scan = &report["reachability"];
    assert_eq!(scan["complete"], true, "{scan}");
    // Every key recorded (a full record table would flatten the growth).
    assert_eq!(report["totals"]["dropped"], 0, "{}", report["totals"]);
    // jemalloc's free memory cannot be told from its used memory: conservative, and said.
    assert_eq!(scan["mode"], "conservative", "{scan}");

    let keys = stacks_through(&report, "dbAdd");
    assert!(!keys.is_empty(), "no stack through dbAdd: {}", done.stdout);
    let mut reachable = 0;
    for stack in &keys {
        let classes = &stack["reachability"];
        for lost in ["definitely_lost", "indirectly_lost", "possibly_lost"] {
            assert_eq!(
                classes[lost]["bytes"], 0,
                "{lost} in a key's stack: {stack}"
            );
        }
        reachable += classes["still_reachable"]["bytes"].as_u64().unwrap();
    }
    assert!(
        reachable > 1 << 20,
        "the stored keys: {reachable} B still reachable"
    );
    let verdict = &report["verdict"];
    assert_eq!(verdict["leak"], false, "{verdict}");
    assert!(
        verdict["referenced_growth_stacks"].as_u64().unwrap() >= 1,
        "{verdict}"
    );
    assert!(
        verdict["summary"]
            .as_str()
            .unwrap()
            .contains("still referenced"),
        "{verdict}"
    );
    assert!(done.stdout.contains("still referenced"), "{}", done.stdout);
}
