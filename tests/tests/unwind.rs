//! End-to-end: stacks of code built without frame pointers, walked by the kernel through each
//! object's call-frame information, checked against the frame-pointer build of the same code,
//! against gdb's `bt` on a real Debian program, and to the byte.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use leaktracer_e2e::*;
use serde_json::Value;

/// `unwind_sites`'s leaks: (frame-0 function, bytes, allocations).
const SITES: [(&str, u64, u64); 4] = [
    ("leak_shallow", 30 * 200, 30),
    ("leak_deep", 20 * 300, 20),
    ("churn", 0, 0),
    ("leak_in_handler", 10 * 128, 10),
];

/// The real frames of the stack at `function` (frame 0), up to and including `main`.
fn chain_to_main<'a>(report: &'a Value, function: &str) -> Vec<&'a str> {
    let stacks = stacks_at(report, function);
    assert_eq!(stacks.len(), 1, "{function}: one stack: {stacks:#?}");
    let frames = real_frames(stacks[0]);
    let main = frames
        .iter()
        .position(|f| *f == "main")
        .unwrap_or_else(|| panic!("{function}: the stack reaches main: {frames:?}"));
    frames[..=main].to_vec()
}

/// The chain `leak_deep` is called through: 30 recursive `descend` frames.
fn deep_chain() -> Vec<&'static str> {
    let mut chain = vec!["leak_deep"];
    chain.extend(std::iter::repeat_n("descend", 30));
    chain.extend(["run_sites", "main"]);
    chain
}

/// Traces `binary` (launched) to its exit with `extra` flags; returns the JSON report.
fn trace_to_exit(dir: &Path, name: &str, binary: &Path, extra: &[&str]) -> Value {
    let json = dir.join(format!("{name}.json"));
    trace_launched(&json, extra, &[binary.to_str().unwrap()]).1
}

/// The text report of a recording, rendered by `leaktracer report`.
fn run_text(report: &Value) -> String {
    let path = std::env::temp_dir().join(format!("leaktracer-unwind-{}.json", std::process::id()));
    std::fs::write(&path, report.to_string()).unwrap();
    let done = run_unprivileged(["report", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(done.status.success(), "{}", done.stderr);
    done.stdout
}

/// How the report says its stacks ended.
fn stack_ends(report: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(report["unwind"]["stack_ends"].clone()).expect("unwind.stack_ends")
}

#[test]
fn c_at_o2_without_frame_pointers_gets_the_stacks_of_its_frame_pointer_build() {
    require_root();
    let dir = scratch_dir("unwind-c-o2");
    let without = workload_built("unwind_sites", "o2-nofp", &["-O2", "-fomit-frame-pointer"]);
    let with = workload_built("unwind_sites", "o2-fp", &["-O2", "-fno-omit-frame-pointer"]);
    let report = trace_to_exit(&dir, "nofp", &without, &[]);
    assert_sites(&report, &SITES);
    assert_eq!(
        chain_to_main(&report, "leak_shallow"),
        ["leak_shallow", "run_sites", "main"]
    );
    assert_eq!(chain_to_main(&report, "leak_deep"), deep_chain());
    // Past main too: through libc (no frame pointers either) to _start, the outermost frame.
    for (site, ..) in &SITES[..2] {
        let frames = real_frames(stacks_at(&report, site)[0]);
        assert_eq!(frames.last(), Some(&"_start"), "{site}: {frames:?}");
    }
    // By function, inclusive: each stack counted once however deep its recursion.
    let by_function = |name: &str| {
        report["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["function"] == name)
            .map(|f| {
                (
                    f["outstanding_bytes"].as_u64().unwrap(),
                    f["outstanding_allocations"].as_u64().unwrap(),
                )
            })
    };
    assert_eq!(by_function("descend"), Some((20 * 300, 20)));
    assert_eq!(by_function("run_sites"), Some((30 * 200 + 20 * 300, 50)));
    assert!(
        run_text(&report).contains("functions by outstanding bytes"),
        "the text report has the by-function view"
    );
    // A signal handler's stack: the handler, then the kernel's signal trampoline, where the walk
    // stops (its CFI is an expression the rows do not follow), counted.
    let handler = real_frames(stacks_at(&report, "leak_in_handler")[0]);
    assert_eq!(handler.len(), 2, "{handler:?}");
    // Every other recorded allocation's walk reached the outermost frame.
    let ends = stack_ends(&report);
    let allocations = report["totals"]["allocations"].as_u64().unwrap();
    assert!(allocations >= 30 + 20 + 1000 + 10, "{allocations}");
    assert_eq!(ends["no_rule"], 10, "{ends:?}");
    assert_eq!(ends["complete"], allocations - 10, "{ends:?}");

    // The frame-pointer build: the same stacks, whole, by the same walk...
    let fp_report = trace_to_exit(&dir, "fp", &with, &[]);
    assert_sites(&fp_report, &SITES);
    for (site, ..) in &SITES[..2] {
        assert_eq!(
            real_frames(stacks_at(&fp_report, site)[0]),
            real_frames(stacks_at(&report, site)[0]),
            "{site}: with and without frame pointers"
        );
    }
    // ...and by the independent frame-pointer walk, up to main (libc has no frame pointers).
    let walked = trace_to_exit(&dir, "fp-walk", &with, &["--unwind", "fp"]);
    assert_sites(&walked, &SITES);
    assert_eq!(chain_to_main(&walked, "leak_deep"), deep_chain());
    assert!(walked["unwind"].is_null(), "--unwind fp reports no tables");
    // The frame-pointer walk cannot do the other build: that is what the tables are for.
    let blind = trace_to_exit(&dir, "nofp-walk", &without, &["--unwind", "fp"]);
    assert_sites(&blind, &SITES);
    assert_ne!(
        real_frames(stacks_at(&blind, "leak_deep")[0]),
        real_frames(stacks_at(&report, "leak_deep")[0])
    );
}

#[test]
fn a_program_exec_d_by_a_wrapper_has_its_tables_before_it_runs() {
    require_root();
    let dir = scratch_dir("unwind-exec");
    let without = workload_built("unwind_sites", "o2-nofp", &["-O2", "-fomit-frame-pointer"]);
    // `sh -c 'exec PROGRAM'`: the launched command is the shell; the program replaces it.
    let script = format!("exec {}", without.display());
    let (_, report) = trace_launched(&dir.join("exec.json"), &[], &["sh", "-c", &script]);
    assert_sites(&report, &SITES);
    assert_eq!(chain_to_main(&report, "leak_deep"), deep_chain());
    // The new image stopped at its entry point until its tables were in: no allocation of
    // either image was walked by frame pointers.
    let ends = stack_ends(&report);
    assert_eq!(ends["frame_pointers"], 0, "{ends:?}");
    assert_eq!(
        report["execs"].as_array().map(Vec::len),
        Some(1),
        "{}",
        report["execs"]
    );
}

#[test]
fn a_library_loaded_with_dlopen_gets_its_tables() {
    require_root();
    let dir = scratch_dir("unwind-dlopen");
    let flags = ["-O2", "-fomit-frame-pointer"];
    let plugin = workload_built(
        "unwind_plugin",
        "so",
        &[&flags[..], &["-shared", "-fPIC"]].concat(),
    );
    let host = workload_built("unwind_dlopen", "o2-nofp", &flags);
    let (_, report) = trace_launched(
        &dir.join("dlopen.json"),
        &[],
        &[host.to_str().unwrap(), plugin.to_str().unwrap()],
    );
    assert_sites(&report, &[("plugin_store", 25 * 400, 25)]);
    let frames = real_frames(stacks_at(&report, "plugin_store")[0]);
    assert_eq!(
        frames[..4],
        ["plugin_store", "plugin_leak", "call_plugin", "main"],
        "{frames:?}"
    );
    assert_eq!(frames.last(), Some(&"_start"), "{frames:?}");
    assert_eq!(stack_ends(&report)["no_mapping"], 0);
}

#[test]
fn max_depth_cuts_stacks_and_counts_each_cut() {
    require_root();
    let dir = scratch_dir("unwind-max-depth");
    let without = workload_built("unwind_sites", "o2-nofp", &["-O2", "-fomit-frame-pointer"]);
    let report = trace_to_exit(&dir, "depth10", &without, &["--max-depth", "10"]);
    assert_sites(&report, &SITES);
    let mut cut = vec!["leak_deep"];
    cut.extend(std::iter::repeat_n("descend", 9));
    assert_eq!(real_frames(stacks_at(&report, "leak_deep")[0]), cut);
    // Only leak_deep's 20 allocations are deeper than 10 frames (and the handler's 10 end at
    // the signal trampoline).
    let ends = stack_ends(&report);
    assert_eq!(ends["depth_limit"], 20, "{ends:?}");
    let allocations = report["totals"]["allocations"].as_u64().unwrap();
    assert_eq!(ends["complete"], allocations - 20 - 10, "{ends:?}");

    for bad in ["0", "128"] {
        let done = run_unprivileged(["trace", "--max-depth", bad, "--", "true"]);
        assert!(!done.status.success());
        assert!(
            done.stderr
                .contains(&format!("--max-depth {bad}: must be from 1 to 127")),
            "{}",
            done.stderr
        );
    }
}

#[test]
fn rust_release_program_stacks_reach_main_through_their_callers() {
    require_root();
    let dir = scratch_dir("unwind-rust-release");
    let binary = rust_release_workload("rust_leak");
    let report = trace_to_exit(&dir, "rust", &binary, &[]);
    assert_eq!(
        outstanding_through(&report, "rust_leak::remember"),
        (50 * 1000, 50)
    );
    for stack in stacks_through(&report, "rust_leak::remember") {
        let frames = real_frames(stack);
        let at = |name: &str| {
            frames
                .iter()
                .position(|f| *f == name)
                .unwrap_or_else(|| panic!("{name} in {frames:?}"))
        };
        let chain = [
            at("rust_leak::remember"),
            at("rust_leak::handle_request"),
            at("rust_leak::serve_requests"),
            at("rust_leak::main"),
            at("main"),
        ];
        assert!(chain.is_sorted(), "callers in order: {frames:?}");
        assert_eq!(
            chain[1],
            chain[0] + 1,
            "handle_request calls remember: {frames:?}"
        );
        assert_eq!(frames.last(), Some(&"_start"), "{frames:?}");
    }
    let ends = stack_ends(&report);
    let allocations = report["totals"]["allocations"].as_u64().unwrap();
    assert_eq!(ends["complete"], allocations, "{ends:?}");
}

/// `redis-benchmark -t set`: 20000 SETs of up to 100000 distinct keys.
fn set_traffic(port: u16) {
    let status = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-n",
            "20000",
            "-r",
            "100000",
            "-q",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("redis-benchmark runs");
    assert!(status.success());
}

/// Traces redis (`--pid`) while SET traffic runs; returns the report.
fn trace_redis_under_sets(dir: &Path, server: &Workload, port: u16) -> Value {
    let json = dir.join("redis.json");
    let pid = server.pid().to_string();
    let mut tracer = Tracer::start([
        "trace",
        "--pid",
        &pid,
        "-d",
        "6s",
        "-q",
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    set_traffic(port);
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    read_json(&json)
}

#[test]
fn debian_redis_set_path_is_in_the_stacks_holding_most_bytes() {
    require_root();
    let dir = scratch_dir("unwind-redis");
    let Some((server, port)) = start_redis(&dir) else {
        return;
    };
    let report = trace_redis_under_sets(&dir, &server, port);
    let stacks = report["stacks"].as_array().unwrap();
    let total = report["totals"]["outstanding_bytes"].as_u64().unwrap();
    assert!(total > 500_000, "SETs kept memory: {total}");
    // The stacks holding the most bytes, up to half of all that is outstanding.
    let mut biggest: Vec<&Value> = stacks.iter().collect();
    biggest.sort_by_key(|s| std::cmp::Reverse(s["outstanding_bytes"].as_u64().unwrap()));
    let mut held = 0;
    let top: Vec<&Value> = biggest
        .into_iter()
        .take_while(|s| {
            let before = held;
            held += s["outstanding_bytes"].as_u64().unwrap();
            before < total / 2
        })
        .collect();
    let set_path = top.iter().find(|s| {
        let frames = real_frames(s);
        let at = |name: &str| frames.iter().position(|f| *f == name);
        matches!(
            (at("setCommand"), at("call"), at("processCommand"), at("main")),
            (Some(a), Some(b), Some(c), Some(d)) if a < b && b < c && c < d
        )
    });
    assert!(
        set_path.is_some(),
        "setCommand <- call <- processCommand <- ... <- main in the top stacks: {:#?}",
        top.iter().map(|s| real_frames(s)).collect::<Vec<_>>()
    );
    let ends = stack_ends(&report);
    let allocations = report["totals"]["allocations"].as_u64().unwrap();
    assert!(
        ends["complete"] as f64 >= 0.99 * allocations as f64,
        "{ends:?} of {allocations}"
    );
}

/// gdb's backtraces at `count` calls of `function` in the running process `pid` whose stack
/// passes through `through`, as function-name lists (innermost first; `??` for a function gdb
/// cannot name), while `during` runs.
fn gdb_backtraces(
    pid: u32,
    function: &str,
    through: &str,
    count: usize,
    during: impl FnOnce(),
) -> Vec<Vec<String>> {
    let script = format!(
        r#"
import gdb
seen = []
class Sample(gdb.Breakpoint):
    def stop(self):
        names = []
        frame = gdb.newest_frame()
        while frame is not None:
            names.append(frame.name() or "??")
            frame = frame.older()
        if "{through}" not in names:
            return False
        print("TRACE " + " ".join(names), flush=True)
        seen.append(names)
        return len(seen) >= {count}
gdb.execute("set pagination off")
gdb.execute("set confirm off")
Sample("{function}")
gdb.execute("continue")
gdb.execute("detach")
"#
    );
    let script_path = std::env::temp_dir().join(format!("leaktracer-gdb-{pid}.py"));
    std::fs::write(&script_path, script).unwrap();
    let gdb = Command::new("gdb")
        .args(["-q", "-nx", "-batch", "-p", &pid.to_string(), "-x"])
        .arg(&script_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gdb runs");
    std::thread::sleep(Duration::from_secs(2));
    during();
    let out = gdb.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&script_path);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("TRACE "))
        .map(|names| names.split(' ').map(str::to_string).collect())
        .collect()
}

#[test]
fn debian_redis_stacks_match_gdb_backtraces() {
    require_root();
    let dir = scratch_dir("unwind-gdb");
    if !Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIP: gdb is not installed (Debian: gdb)");
        return;
    }
    let Some((server, port)) = start_redis(&dir) else {
        return;
    };
    // Allocations that stay (the report lists what is outstanding): a new key's entry and its
    // name, made under dbAdd. gdb first, then leaktracer.
    let traces = gdb_backtraces(server.pid(), "zmalloc", "dbAdd", 40, || set_traffic(port));
    assert!(traces.len() >= 20, "gdb stopped at zmalloc: {traces:?}");
    let report = trace_redis_under_sets(&dir, &server, port);
    let ours: Vec<Vec<&str>> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(real_frames)
        .collect();
    // A function neither can name (a static function of a stripped binary): `??` for gdb,
    // `module+0xoffset` here.
    let same = |gdb: &str, us: &str| gdb == us || (gdb == "??" && us.contains("+0x"));
    let (mut matched, mut total) = (0, 0);
    for trace in &traces {
        let best = ours
            .iter()
            .map(|stack| {
                trace
                    .iter()
                    .zip(stack.iter())
                    .take_while(|(g, u)| same(g, u))
                    .count()
            })
            .max()
            .unwrap_or(0);
        matched += best;
        total += trace.len();
    }
    eprintln!(
        "{matched} of {total} frames of {} gdb backtraces matched",
        traces.len()
    );
    assert!(
        matched as f64 >= 0.95 * total as f64,
        "{matched} of {total} gdb frames matched; gdb: {traces:#?}"
    );
}
