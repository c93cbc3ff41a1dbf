//! End-to-end: mappings made by the system calls themselves (each mapping call's own
//! tracepoint, or the raw `sys_enter`/`sys_exit` ones as the fallback), whoever makes them:
//! `syscall(SYS_mmap, ...)` rather than the C library's wrapper, in a glibc program, a static
//! musl one and a Go one.

use leaktracer_e2e::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The sites of `tests/workloads/mappings.c`: (function, bytes, mappings) outstanding at exit.
const SITES: &[(&str, u64, u64)] = &[
    ("map_five", 5 * MIB, 5),
    ("map_and_unmap_three", 0, 0),
    ("open_reserved", 2 * MIB, 1),
    ("move_mapping", 256 * KIB, 1),
    ("map_to_replace", 0, 0),
    ("replace_fixed", 128 * KIB, 1),
    ("map_file", 0, 0),
    ("grow_break", 64 * KIB, 1),
    ("map_where_a_file_was", 8 * KIB, 1),
    ("fixed_over_file", 8 * KIB, 1),
];

fn assert_mapping_sites(report: &serde_json::Value) {
    assert_sites(report, SITES);
    let ignored = &report["totals"]["ignored"];
    assert!(
        ignored["file_mappings"].as_u64().unwrap() >= 1,
        "the file mapping is counted as left out: {ignored}"
    );
    assert!(
        ignored["reserved_mappings"].as_u64().unwrap() >= 1,
        "the PROT_NONE reservation is counted: {ignored}"
    );
    // The site's stack goes on past the `syscall` wrapper (folded) to main.
    let names = real_frames(stacks_at(report, "map_five")[0]);
    assert!(names.contains(&"main"), "map_five reaches main: {names:?}");
}

#[test]
fn raw_syscall_mappings_are_exact_per_site() {
    require_root();
    let dir = scratch_dir("raw_syscall_mappings");
    let binary = workload("mappings");
    let (_, report) = trace_launched(&dir.join("m.json"), &[], &[binary.to_str().unwrap()]);
    assert_mapping_sites(&report);
}

/// The tracefs mounts this process sees (leaktracer must add none, even for a moment's use).
fn tracefs_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|line| line.split_whitespace().nth(2) == Some("tracefs"))
        .map(str::to_string)
        .collect()
}

/// Traces the mappings workload with `-v` and `env`, checking its exact sites; returns the
/// report's `attach.mapping_probes` and leaktracer's stderr.
fn trace_mappings_with(scratch: &str, env: &[(&str, &str)]) -> (String, String) {
    let dir = scratch_dir(scratch);
    let json = dir.join("m.json");
    let binary = workload("mappings");
    let args = [
        "trace",
        "-v",
        "--json",
        json.to_str().unwrap(),
        "--",
        binary.to_str().unwrap(),
    ];
    let done = Tracer::start_with_env(args, env).finish();
    assert!(done.status.success(), "{}", done.stderr);
    let report = read_json(&json);
    assert_mapping_sites(&report);
    let tier = report["attach"]["mapping_probes"]
        .as_str()
        .unwrap_or_else(|| panic!("attach.mapping_probes: {}", report["attach"]))
        .to_string();
    (tier, done.stderr)
}

/// Here (CONFIG_FTRACE_SYSCALLS, tracefs mountable) the mapping calls are traced at their own
/// tracepoints, which other system calls never run, and finding them mounts nothing that
/// stays; forced back to the raw `sys_enter`/`sys_exit` tracepoints, the same mappings are
/// recorded to the byte, and `-v` says which tier and why.
#[test]
fn mapping_calls_use_their_own_tracepoints_and_the_raw_fallback_records_the_same() {
    require_root();
    let mounts_before = tracefs_mounts();
    let (tier, stderr) = trace_mappings_with("mapping_probes_per_call", &[]);
    assert_eq!(tier, "syscall_tracepoints", "{stderr}");
    assert!(
        stderr.contains("mapping calls traced at their own tracepoints"),
        "{stderr}"
    );
    assert_eq!(
        tracefs_mounts(),
        mounts_before,
        "no tracefs mount left behind"
    );
    let (tier, stderr) = trace_mappings_with(
        "mapping_probes_raw",
        &[("LEAKTRACER_RAW_SYSCALL_TRACEPOINTS", "1")],
    );
    assert_eq!(tier, "raw_tracepoints", "{stderr}");
    assert!(
        stderr.contains(
            "mapping calls traced at the raw sys_enter/sys_exit tracepoints (every system call on the machine runs a program): LEAKTRACER_RAW_SYSCALL_TRACEPOINTS is set"
        ),
        "{stderr}"
    );
    assert_eq!(
        tracefs_mounts(),
        mounts_before,
        "no tracefs mount left behind"
    );
}

/// Builds and traces a program that has no allocator to probe, checking the report says so;
/// None (said) when `tool` (from Debian's `package`) is missing.
fn trace_without_allocator(
    scratch: &str,
    (tool, package): (&str, &str),
    build: impl FnOnce() -> std::path::PathBuf,
) -> Option<(Finished, serde_json::Value)> {
    require_root();
    if !installed(tool) {
        eprintln!("skipped: {tool} (Debian's {package}) is not installed");
        return None;
    }
    let dir = scratch_dir(scratch);
    let binary = build();
    let (done, report) = trace_launched(&dir.join("m.json"), &[], &[binary.to_str().unwrap()]);
    let process = &report["processes"][0];
    assert!(
        process["allocator"].as_str().unwrap().starts_with("none"),
        "no allocator: {process}"
    );
    Some((done, report))
}

/// A static musl program has no allocator to probe (this one never calls malloc) and its libc
/// has no unwind tables (musl is built without them), so its stacks stop in `syscall`: what is
/// checked is that every mapping is seen, exactly, with no allocator probe at all.
#[test]
fn a_static_musl_program_s_mappings_are_seen() {
    let Some((done, report)) =
        trace_without_allocator("static_musl_mappings", ("musl-gcc", "musl-tools"), || {
            musl_static_workload("mappings")
        })
    else {
        return;
    };
    let (bytes, mappings) = SITES
        .iter()
        .fold((0, 0), |(b, n), (_, bytes, count)| (b + bytes, n + count));
    let totals = &report["totals"];
    assert_eq!(
        (
            totals["outstanding_bytes"].as_u64().unwrap(),
            totals["outstanding_allocations"].as_u64().unwrap()
        ),
        (bytes, mappings),
        "{}",
        done.stderr
    );
}

/// A Go program has no C library at all: its mappings are seen from the system calls, and its
/// stacks are walked through the `.debug_frame` Go's linker writes (it has no `.eh_frame`).
#[test]
fn a_go_program_s_mappings_are_exact_per_site() {
    let Some((done, report)) = trace_without_allocator("go_mappings", ("go", "golang-go"), || {
        go_workload("go_mappings")
    }) else {
        return;
    };
    assert!(done.stdout.contains("mapped 45"), "{}", done.stdout);
    assert_sites(
        &report,
        &[
            ("main.mapFive", 5 * MIB, 5),
            ("main.mapAndUnmapThree", 0, 0),
        ],
    );
    let names = real_frames(stacks_at(&report, "main.mapFive")[0]);
    assert!(
        names.contains(&"syscall.mmap") && names.contains(&"main.main"),
        "walked from the system call to main: {names:?}"
    );
    // The heap the runtime maps for growHeap's 40 MiB is outstanding too, and every stack ends
    // in code (a walk past the outermost frame reads no bogus last address).
    let totals = &report["totals"];
    assert!(
        totals["outstanding_bytes"].as_u64().unwrap() >= 45 * MIB,
        "{totals}"
    );
    for stack in report["stacks"].as_array().unwrap() {
        let frames = stack["frames"].as_array().unwrap();
        let last = frames.last().unwrap();
        assert_ne!(last["module"], "[unknown]", "{stack}");
        assert!(frames.len() > 1, "walked past the system call: {stack}");
    }
}
