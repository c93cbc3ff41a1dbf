//! End-to-end: real eBPF probes on real processes, checked against leaks known to the byte.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use leaktracer_e2e::*;

/// The leak sites of `leaky sites --count N`: (frame-0 function, bytes, allocations).
fn expected_sites(count: u64) -> Vec<(&'static str, u64, u64)> {
    vec![
        ("leak_malloc", count * 128, count),
        ("leak_calloc", 50 * 16 * 32, 50),
        ("grow", 10 * 4096, 10),
        ("leak_posix_memalign", 20 * 1000, 20),
        ("leak_aligned_alloc", 30 * 512, 30),
        ("leak_mmap", 1 << 20, 1),
        ("trim_mmap_tail", 8192, 1),
        ("trim_mmap_head", 12288, 1),
        ("keep_after_failed_realloc", 100, 1),
    ]
}

/// Asserts every leak site exactly, and that nothing balanced shows up.
fn assert_leaky_sites(report: &serde_json::Value, count: u64) {
    let sites = expected_sites(count);
    assert_sites(report, &sites);
    for (function, _, _) in sites {
        let stack = stacks_at(report, function)[0];
        // A mapping's frame 0 is the C library's wrapper (plumbing) that made the system call.
        let frame = first_own_frame(stack);
        assert!(
            frame["file"].as_str().unwrap_or("").ends_with("leaky.c")
                && frame["line"].as_u64().unwrap_or(0) > 0,
            "{function}: frame 0 has file:line: {frame}"
        );
        assert!(
            frame["module"].as_str().unwrap().ends_with("/leaky"),
            "{function}: module {frame}"
        );
        let names: Vec<&str> = stack["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["function"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"main"),
            "{function}: the chain reaches main: {names:?}"
        );
    }
    // The realloc chain: only the final block (recorded under grow) is outstanding.
    assert_eq!(
        stacks_at(report, "grow")[0]["frames"][1]["function"],
        "leak_realloc_chain"
    );
    assert_sites(report, &[("leak_realloc_chain", 0, 0)]);
    // Balanced work never appears: churn threads, freed mmaps, realloc(p, 0), failed malloc.
    assert!(
        !mentions(report, "churn_worker"),
        "churn reported as outstanding"
    );
    assert!(
        !mentions(report, "balanced_sites"),
        "balanced sites reported"
    );
    let totals = &report["totals"];
    let sum: u64 = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outstanding_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(totals["outstanding_bytes"].as_u64().unwrap(), sum);
    assert_eq!(totals["dropped"], 0, "nothing dropped: {totals}");
    // The churn: 2 threads x 20000 malloc+realloc pairs, all seen and all freed.
    assert!(
        totals["allocations"].as_u64().unwrap() >= 80_000,
        "{totals}"
    );
    assert!(totals["frees"].as_u64().unwrap() >= 80_000, "{totals}");
}

/// An exec releases the whole old image without a free: what it held is retired with it (no
/// false leak), the new image is traced afresh and exactly, and the report says it exec'd.
#[test]
fn exec_retires_the_old_image_and_traces_the_new_one() {
    require_root();
    let dir = scratch_dir("exec_retires");
    let leaky = workload("leaky");
    let json = dir.join("leaks.json");
    let run = run_tracer([
        "trace".as_ref(),
        "--duration".as_ref(),
        "120s".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        leaky.as_os_str(),
        "exec-self".as_ref(),
        "7".as_ref(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert!(
        !mentions(&report, "leak_before_exec"),
        "the old image's blocks are still outstanding: {}",
        run.stdout
    );
    assert_leaky_sites(&report, 7);
    let execs = report["execs"].as_array().expect("execs listed");
    assert_eq!(execs.len(), 1, "{execs:?}");
    let exec = &execs[0];
    assert_eq!(exec["pid"], report["target"]["pids"][0]);
    assert!(
        exec["retired_allocations"].as_u64().unwrap() >= 100,
        "{exec}"
    );
    assert!(
        exec["retired_bytes"].as_u64().unwrap() >= 100 * 64,
        "{exec}"
    );
    assert_eq!(report["target_exit"]["code"], 0);
    assert!(run.stdout.contains("exec: pid "), "{}", run.stdout);
    assert!(run.stderr.contains("exec'd"), "{}", run.stderr);
}

#[test]
fn launched_command_leak_sites_are_exact() {
    require_root();
    let dir = scratch_dir("launch_sites");
    let leaky = workload("leaky");
    let json = dir.join("leaks.json");
    let svg = dir.join("leaks.svg");
    let folded = dir.join("leaks.folded");
    // The command exits by itself long before --duration: the trace ends with it.
    let run = run_tracer([
        "trace".as_ref(),
        "--duration".as_ref(),
        "120s".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--flamegraph".as_ref(),
        svg.as_os_str(),
        "--folded".as_ref(),
        folded.as_os_str(),
        "--".as_ref(),
        leaky.as_os_str(),
        "sites".as_ref(),
        "--count".as_ref(),
        "7".as_ref(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_leaky_sites(&report, 7);
    assert_eq!(report["end_reason"], "target exited");
    let pid = report["target"]["pids"][0].as_u64().unwrap();
    assert_eq!(
        report["target"]["command"],
        serde_json::json!([leaky.to_str().unwrap(), "sites", "--count", "7"])
    );
    assert!(
        report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["pid"] == pid)
    );
    // Text report: totals first, then the top stacks with their frames.
    assert!(run.stdout.contains("outstanding:"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("  1.00 MiB (1048576 bytes) in 1 allocations"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("leak_mmap at "), "{}", run.stdout);
    // Flamegraph and folded stacks carry the same bytes.
    let svg_text = fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<svg") && svg_text.contains("leak_posix_memalign"));
    let folded_text = fs::read_to_string(&folded).unwrap();
    assert!(
        folded_text
            .lines()
            .any(|l| l.ends_with(";leak_calloc 25600")
                && l.starts_with("_start;__libc_start_main_impl;__libc_start_call_main;main;")),
        "{folded_text}"
    );
}

#[test]
fn a_launched_program_replaced_on_disk_as_it_starts_is_still_traced_whole() {
    require_root();
    let dir = scratch_dir("launch_replaced");
    // A deploy or a rebuild renames a new copy over the program while leaktracer launches it:
    // the path resolved before the fork names another file by the exec. Its entry stop (maps
    // read, symbols opened) must be on the file the kernel runs, or a quick program exits
    // unsymbolized, each stack one `[unknown]` frame.
    let program = dir.join("leaky");
    fs::copy(workload("leaky"), &program).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let replacer = {
        let (dir, program, done) = (dir.clone(), program.clone(), done.clone());
        std::thread::spawn(move || {
            let temp = dir.join(".leaky.new");
            let mut replaced = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                fs::copy(&program, &temp).unwrap();
                fs::rename(&temp, &program).unwrap();
                replaced += 1;
            }
            replaced
        })
    };
    let json = dir.join("leaks.json");
    let run = run_tracer([
        "trace".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        program.as_os_str(),
        "sites".as_ref(),
        "--count".as_ref(),
        "7".as_ref(),
    ]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let replaced = replacer.join().unwrap();
    assert!(replaced > 0, "the program was replaced while it started");
    assert!(run.status.success(), "{}", run.stderr);
    assert_leaky_sites(&read_json(&json), 7);
}

#[test]
fn top_limits_the_text_report() {
    require_root();
    let leaky = workload("leaky");
    let run = run_tracer([
        "trace".as_ref(),
        "--top".as_ref(),
        "2".as_ref(),
        "--".as_ref(),
        leaky.as_os_str(),
        "sites".as_ref(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("\n#2  "), "{}", run.stdout);
    assert!(!run.stdout.contains("\n#3  "), "{}", run.stdout);
}

#[test]
fn attach_to_running_process_ignores_what_came_before() {
    require_root();
    let dir = scratch_dir("attach");
    let json = dir.join("leaks.json");
    let mut target = Command::new(workload("leaky"))
        .arg("attach")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id();
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    let (malloc_addr, free_addr) = entry_addresses(&lines.next().unwrap().unwrap());
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let original = (byte_at(pid, malloc_addr), code_at(pid, free_addr));
    assert!(!original.1.contains(&0xcc));

    let mut tracer = Tracer::start([
        "trace",
        "--pid",
        &pid.to_string(),
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    assert_eq!(
        byte_at(pid, malloc_addr),
        0xcc,
        "malloc probed (int3) while tracing"
    );
    assert!(
        code_at(pid, free_addr).contains(&0xcc),
        "free probed (int3) while tracing"
    );
    target.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    tracer.interrupt();
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);

    // Probes are gone: the target's code is back to its own bytes, and it still runs.
    assert_eq!(
        (byte_at(pid, malloc_addr), code_at(pid, free_addr)),
        original
    );
    assert!(is_alive(pid));
    drop(target.stdin.take());
    target.wait().unwrap();

    let report = read_json(&json);
    assert_eq!(report["end_reason"], "interrupted");
    assert_eq!(report["target"]["pids"], serde_json::json!([pid]));
    assert_sites(&report, &[("after_attach", 40 * 64, 40)]);
    assert!(
        !mentions(&report, "before_attach"),
        "allocations from before attach are unknown"
    );
    assert!(!mentions(&report, "churn_worker"));
    let totals = &report["totals"];
    assert!(
        totals["ignored"]["unknown_frees"].as_u64().unwrap() >= 100,
        "{totals}"
    );
    assert_eq!(totals["dropped"], 0);
}

#[test]
fn other_processes_are_not_probed() {
    require_root();
    // Two copies of the workload: one traced, one not. Only the traced one gets breakpoints.
    let spawn = || {
        let mut child = Command::new(workload("leaky"))
            .arg("attach")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (malloc_addr, _) = entry_addresses(&lines.next().unwrap().unwrap());
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        (child, malloc_addr)
    };
    let (mut traced, traced_malloc) = spawn();
    let (mut other, other_malloc) = spawn();
    let mut tracer = Tracer::start(["trace", "--pid", &traced.id().to_string()]);
    tracer.wait_attached();
    assert_eq!(byte_at(traced.id(), traced_malloc), 0xcc);
    assert_ne!(
        byte_at(other.id(), other_malloc),
        0xcc,
        "an untraced process was probed"
    );
    tracer.interrupt();
    assert!(tracer.finish().status.success());
    for child in [&mut traced, &mut other] {
        drop(child.stdin.take());
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn ctrl_c_in_launch_mode_writes_every_file_and_stops_the_command() {
    require_root();
    let dir = scratch_dir("ctrl_c");
    let json = dir.join("leaks.json");
    let svg = dir.join("leaks.svg");
    let folded = dir.join("leaks.folded");
    let ready = dir.join("ready");
    let leaky = workload("leaky");
    let tracer = Tracer::start([
        "trace".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--flamegraph".as_ref(),
        svg.as_os_str(),
        "--folded".as_ref(),
        folded.as_os_str(),
        "--".as_ref(),
        leaky.as_os_str(),
        "sites".as_ref(),
        "--hold".as_ref(),
        "--ready".as_ref(),
        ready.as_os_str(),
    ]);
    wait_for_file(&ready, Duration::from_secs(60));
    tracer.interrupt();
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "interrupted");
    assert_leaky_sites(&report, 100);
    let pid = report["target"]["pids"][0].as_u64().unwrap() as u32;
    assert!(
        !is_alive(pid),
        "the launched command is stopped when the trace ends"
    );
    assert!(fs::read_to_string(&svg).unwrap().contains("leak_malloc"));
    assert!(
        fs::read_to_string(&folded)
            .unwrap()
            .contains(";leak_malloc 12800")
    );
}

#[test]
fn idle_trace_ends_at_duration_with_a_valid_empty_flamegraph() {
    require_root();
    let dir = scratch_dir("idle");
    let json = dir.join("leaks.json");
    let svg = dir.join("leaks.svg");
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let run = run_tracer([
        "trace",
        "--pid",
        &sleeper.id().to_string(),
        "--duration",
        "1s",
        "--json",
        json.to_str().unwrap(),
        "--flamegraph",
        svg.to_str().unwrap(),
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "duration");
    assert_eq!(report["stacks"], serde_json::json!([]));
    assert_eq!(report["totals"]["outstanding_bytes"], 0);
    let duration = report["duration_secs"].as_f64().unwrap();
    assert!((1.0..5.0).contains(&duration), "{duration}");
    let svg_text = fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<?xml") && svg_text.trim_end().ends_with("</svg>"));
    assert!(svg_text.contains("no outstanding allocations"));
    assert!(
        run.stdout.contains("no outstanding allocations"),
        "{}",
        run.stdout
    );
}

#[test]
fn bad_input_fails_in_one_line_and_keeps_earlier_output() {
    require_root();
    let dir = scratch_dir("bad_input");
    let json = dir.join("leaks.json");
    fs::write(&json, "{\"earlier\": true}\n").unwrap();

    // No such pid (pid_max is at most 2^22).
    let run = run_tracer([
        "trace",
        "--pid",
        "4194999",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("no process with pid 4194999"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(&json).unwrap(), "{\"earlier\": true}\n");

    // A command that does not exist.
    let run = run_tracer(["trace", "--", "/nonexistent/program"]);
    assert!(!run.status.success());
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot run `/nonexistent/program`"),
        "{}",
        run.stderr
    );

    // Neither a pid nor a command.
    let run = run_tracer(["trace"]);
    assert!(!run.status.success());
    assert!(run.stderr.contains("--pid"), "{}", run.stderr);

    // Not root: the same binary without privileges.
    if Command::new("setpriv").arg("--version").output().is_ok() {
        let out = run_unprivileged(["trace", "--pid", "1"]);
        assert!(!out.status.success());
        let stderr = out.stderr;
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("needs root"), "{stderr}");
    }
}

#[test]
fn cxx_new_is_attributed_to_its_caller_with_demangled_names() {
    require_root();
    let dir = scratch_dir("cxx");
    let json = dir.join("leaks.json");
    let program = workload("cxx_leak");
    let run = run_tracer([
        "trace".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        program.as_os_str(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    // libstdc++'s operator new calls the probed malloc, so it is not probed itself: the
    // unwinder walks through it, the report marks it plumbing, and the first own frame is the
    // code that said `new`.
    assert_sites(
        &report,
        &[
            ("shop::add_node(int)", 50 * 200, 50),
            ("shop::make_array(int)", 50 * 100, 50),
        ],
    );
    assert!(
        !mentions(&report, "shop::balanced(int)"),
        "balanced C++ work reported"
    );
    for function in ["shop::add_node(int)", "shop::make_array(int)"] {
        for stack in stacks_at(&report, function) {
            let frames = stack["frames"].as_array().unwrap();
            assert!(
                frames[0]["function"]
                    .as_str()
                    .unwrap()
                    .starts_with("operator new"),
                "{function}: frame 0 is operator new: {frames:?}"
            );
            assert_eq!(frames[0]["plumbing"], true, "{frames:?}");
        }
    }
    let probed = &report["processes"][0]["probed_objects"];
    assert!(
        !probed.to_string().contains("libstdc++"),
        "operator new is not probed: {probed}"
    );
    // One allocation each: no nested call inside operator new to discount.
    assert_eq!(report["totals"]["ignored"]["nested_calls"], 0);
}

/// Traces `leaky sites` launched with `--max-allocations N`: the run and its JSON report.
fn trace_sites_with_max_allocations(test: &str, n: &str) -> (Finished, serde_json::Value) {
    let json = scratch_dir(test).join("leaks.json");
    let leaky = workload("leaky");
    let run = run_tracer([
        "trace".as_ref(),
        "--max-allocations".as_ref(),
        n.as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        leaky.as_os_str(),
        "sites".as_ref(),
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    (run, read_json(&json))
}

#[test]
fn full_maps_are_counted_and_reported_not_silent() {
    require_root();
    let (run, report) = trace_sites_with_max_allocations("full_maps", "50");
    let totals = &report["totals"];
    let full = totals["dropped_by_cause"]["alloc_map_full"]
        .as_u64()
        .unwrap();
    assert!(full > 0, "{totals}");
    assert!(totals["dropped"].as_u64().unwrap() >= full);
    // At most 50 heap blocks, plus the few direct mappings (kept in their own map).
    assert!(
        totals["outstanding_allocations"].as_u64().unwrap() <= 50 + 8,
        "{totals}"
    );
    assert!(
        run.stderr.contains("raise --max-allocations"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("dropped: "), "{}", run.stdout);
    assert!(run.stdout.contains("alloc_map_full"), "{}", run.stdout);
    // No leak found among what was recorded is no all-clear: the verdict says it is incomplete.
    let verdict = &report["verdict"];
    assert_eq!(verdict["leak"], false, "{verdict}");
    assert_eq!(verdict["unrecorded_allocations"], full, "{verdict}");
    let incomplete = format!(
        "INCOMPLETE: {full} allocations were not recorded (the record table was full: raise --max-allocations)"
    );
    assert!(
        verdict["summary"]
            .as_str()
            .unwrap()
            .starts_with(&incomplete),
        "{verdict}"
    );
    assert!(
        run.stdout.contains(&format!("verdict: {incomplete}")),
        "{}",
        run.stdout
    );
}

/// Heap records beyond the record table's windows go to the overflow map and are exact there
/// too: `--max-allocations 400` gives a 256-slot table (8-slot windows) and 144 overflow
/// entries, and the ~220 leaked blocks of `leaky sites` (plus the churn in flight) fill the
/// table's windows well past the point where records overflow.
#[test]
fn records_overflowing_the_table_are_exact() {
    require_root();
    let (_, report) = trace_sites_with_max_allocations("table_overflow", "400");
    assert_eq!(report["totals"]["dropped"], 0, "{}", report["totals"]);
    assert_leaky_sites(&report, 100);
}
