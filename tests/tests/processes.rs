//! End-to-end: real allocators (static musl, jemalloc, tcmalloc, mimalloc), containers (mount +
//! pid namespaces with their own libc, in their own cgroup), cgroup-wide tracing with processes
//! that start later, and pre-fork servers with --follow-children.

use std::{
    fs,
    io::{BufRead, BufReader, Lines},
    os::unix::fs::MetadataExt,
    path::Path,
    process::{ChildStdout, Command, Stdio},
};

use leaktracer_e2e::*;
use serde_json::Value;

/// What `alloc_sites sites` leaks: (frame-0 function, bytes, allocations).
const SITES: &[(&str, u64, u64)] = &[
    ("leak_malloc", 40 * 128, 40),
    ("leak_calloc", 20 * 512, 20),
    ("leak_realloc", 10 * 1000, 10),
    ("leak_aligned", 10 * 2048, 10),
];

/// The leak sites of one process of a report, exactly.
fn assert_alloc_sites(report: &Value, pid: u32) {
    let of_pid = process_stacks(report, pid);
    assert_sites(&of_pid, SITES);
    assert!(
        stacks_at(&of_pid, "balanced").is_empty(),
        "balanced churn reported"
    );
}

/// The allocator leaktracer probed for `pid` is the very file the process maps.
fn assert_probed_what_is_mapped(report: &Value, pid: u32, mapped: (u64, u64)) {
    let entry = process_entry(report, pid);
    assert_eq!(
        (
            entry["allocator_dev"].as_u64().unwrap(),
            entry["allocator_inode"].as_u64().unwrap()
        ),
        mapped,
        "{entry}"
    );
}

fn spawn_with_lines(mut cmd: Command) -> (Workload, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (Workload(child), lines)
}

/// Traces `alloc_sites sites` by pid under an allocator, checks the leaks and which object was
/// probed.
fn allocator_case(name: &str, program: &Path, preload: Option<&str>, allocator_suffix: &str) {
    require_root();
    let dir = scratch_dir(name);
    let json = dir.join("leaks.json");
    let flag = dir.join("go");
    let mut cmd = Command::new(program);
    cmd.arg("sites").arg(&flag);
    if let Some(preload) = preload {
        cmd.env("LD_PRELOAD", preload);
    }
    let (workload, mut lines) = spawn_with_lines(cmd);
    let pid = workload.pid();
    let mut tracer = Tracer::start([
        "trace",
        "--pid",
        &pid.to_string(),
        "--json",
        json.to_str().unwrap(),
        "--verbose",
    ]);
    tracer.wait_attached();
    fs::write(&flag, "").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    let mapped = mapped_file(pid, allocator_suffix).expect("allocator mapped");
    tracer.interrupt();
    let run = tracer.finish();
    drop(workload);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_alloc_sites(&report, pid);
    let entry = process_entry(&report, pid);
    assert!(
        entry["allocator"]
            .as_str()
            .unwrap()
            .ends_with(allocator_suffix),
        "{entry}"
    );
    assert!(run.stdout.contains(&format!(
        "allocator {}",
        entry["allocator"].as_str().unwrap()
    )));
    assert_probed_what_is_mapped(&report, pid, mapped);
    assert_eq!(report["totals"]["dropped"], 0);
    // --verbose names where free's probe went (and what it skipped, when it moved).
    let free = run
        .stderr
        .lines()
        .find(|l| l.contains("uprobe") && l.contains("(free_enter)"))
        .unwrap_or_else(|| panic!("free's placement printed: {}", run.stderr));
    if allocator_suffix == "libc.so.6" {
        assert!(
            free.ends_with("after `test rdi,rdi` (the kernel would single-step it)"),
            "{free}"
        );
    }
}

#[test]
fn glibc_malloc() {
    allocator_case("alloc_glibc", &workload("alloc_sites"), None, "libc.so.6");
}

#[test]
fn static_musl_binary() {
    let program = musl_static_workload("alloc_sites");
    let name = program.file_name().unwrap().to_str().unwrap().to_string();
    allocator_case("alloc_musl", &program, None, &format!("/{name}"));
}

#[test]
fn jemalloc_preloaded() {
    allocator_case(
        "alloc_jemalloc",
        &workload("alloc_sites"),
        Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        "libjemalloc.so.2",
    );
}

#[test]
fn tcmalloc_preloaded() {
    allocator_case(
        "alloc_tcmalloc",
        &workload("alloc_sites"),
        Some("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
        "libtcmalloc_minimal.so.4.5.10",
    );
}

#[test]
fn mimalloc_preloaded() {
    allocator_case(
        "alloc_mimalloc",
        &workload("alloc_sites"),
        Some("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
        "libmimalloc.so.2.0",
    );
}

/// A pre-fork server: the parent forks workers after the trace started; --follow-children
/// traces each worker, and each worker's leak is found with exact bytes under its own pid.
#[test]
fn prefork_workers_are_followed() {
    require_root();
    let dir = scratch_dir("prefork");
    let json = dir.join("leaks.json");
    let mut cmd = Command::new(workload("alloc_sites"));
    cmd.args(["fork", "3"]).arg(&dir);
    let (workload, mut lines) = spawn_with_lines(cmd);
    let parent = workload.pid();
    let mut tracer = Tracer::start([
        "trace",
        "--pid",
        &parent.to_string(),
        "--follow-children",
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    let mut workers = Vec::new();
    let mut done = 0;
    while done < 3 {
        let line = lines.next().unwrap().unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            ["worker", index, "pid", pid, "forked"] => {
                let (index, pid): (u64, u32) = (index.parse().unwrap(), pid.parse().unwrap());
                // Forked before the trace began, it is named in its first line instead.
                tracer.wait_traced(pid);
                fs::write(dir.join(format!("traced-{pid}")), "").unwrap();
                workers.push((index, pid));
            }
            ["worker", _, "pid", _, "done"] => done += 1,
            _ => {}
        }
    }
    tracer.interrupt();
    let run = tracer.finish();
    for (_, pid) in &workers {
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    drop(workload);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    for (index, pid) in workers {
        let of_worker = process_stacks(&report, pid);
        assert_eq!(
            stacks_at(&of_worker, "worker_leak").len(),
            1,
            "worker {index} pid {pid}: {}",
            report["stacks"]
        );
        assert_sites(
            &of_worker,
            &[("worker_leak", (10 + index) * 256, 10 + index)],
        );
        assert!(
            report["target"]["pids"]
                .as_array()
                .unwrap()
                .contains(&pid.into())
        );
    }
    // Stacks of different processes are never merged.
    let pids: Vec<u64> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.iter().all(|p| *p != 0));
}

/// `alloc_sites sites FLAG`, started by a shell that first moves itself into `cgroup`: it
/// leaks its sites once FLAG exists.
fn alloc_sites_in(cgroup: &Cgroup2Dir, flag: &Path) -> Command {
    let program = workload("alloc_sites");
    cgroup.enter_and_exec(&format!("{} sites {}", program.display(), flag.display()))
}

/// `leaktracer trace --cgroup CGROUP --json JSON`, attached to what is in the cgroup now.
fn trace_cgroup(cgroup: &Cgroup2Dir, json: &Path) -> Tracer {
    let mut tracer = Tracer::start([
        "trace",
        "--cgroup",
        cgroup.0.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    tracer
}

/// Once `tracer` says it attached to the `alloc_sites sites FLAG` process `workload`, lets it
/// leak (FLAG) and ends the trace; checks its sites exactly, and that the allocator probed is
/// the libc it maps. Returns the run and the report.
fn let_member_leak(
    mut tracer: Tracer,
    workload: Workload,
    mut lines: Lines<BufReader<ChildStdout>>,
    flag: &Path,
    json: &Path,
) -> (Finished, Value) {
    let pid = workload.pid();
    tracer.wait_stderr(&format!("attached to pid {pid} "));
    fs::write(flag, "").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    let mapped = mapped_file(pid, "libc.so.6").unwrap();
    tracer.interrupt();
    let run = tracer.finish();
    drop(workload);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(json);
    assert_alloc_sites(&report, pid);
    assert_probed_what_is_mapped(&report, pid, mapped);
    (run, report)
}

/// --cgroup traces a process that starts in the cgroup after the trace began.
#[test]
fn cgroup_process_started_during_the_trace() {
    require_root();
    let dir = scratch_dir("cgroup_late");
    let json = dir.join("leaks.json");
    let cgroup = Cgroup2Dir::create(&format!("leaktracer-e2e-late-{}", std::process::id()));
    let tracer = trace_cgroup(&cgroup, &json);
    let flag = dir.join("go");
    let (workload, lines) = spawn_with_lines(alloc_sites_in(&cgroup, &flag));
    let pid = workload.pid();
    let (run, report) = let_member_leak(tracer, workload, lines, &flag, &json);
    assert_eq!(report["target"]["cgroup"], cgroup.0.to_str().unwrap());
    assert!(
        run.stderr.contains(&format!("attached to pid {pid} ")),
        "{}",
        run.stderr
    );
}

/// Waits for the ptrace'd `pid`'s next stop (at an exec, before its first instruction).
fn wait_ptrace_stop(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid on our own child, with a valid status pointer.
    let waited = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert!(
        waited == pid as i32 && libc::WIFSTOPPED(status),
        "pid {pid} stopped at its exec: {status:#x}"
    );
}

/// A process of the cgroup caught between its exec and its dynamic loader (only the program and
/// the loader mapped, no libc yet) is not taken for a program without an allocator: it is
/// attached once its loader has mapped libc, and its sites are exact.
#[test]
fn cgroup_process_caught_before_its_loader_ran_gets_its_allocator() {
    use std::os::unix::process::CommandExt;
    require_root();
    let dir = scratch_dir("cgroup_mid_exec");
    let json = dir.join("leaks.json");
    let cgroup = Cgroup2Dir::create(&format!("leaktracer-e2e-mid-exec-{}", std::process::id()));
    let flag = dir.join("go");
    let mut command = alloc_sites_in(&cgroup, &flag);
    // The kernel stops a ptrace'd process at each exec, before the new image runs anything.
    // SAFETY: ptrace(PTRACE_TRACEME) is async-signal-safe and takes no pointers.
    unsafe {
        command.pre_exec(|| match libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let (workload, lines) = spawn_with_lines(command);
    let pid = workload.pid();
    // The shell's exec, then (once it joined the cgroup) the program's.
    wait_ptrace_stop(pid);
    // SAFETY: ptrace on our own stopped tracee, no pointers.
    unsafe { libc::ptrace(libc::PTRACE_CONT, pid as libc::pid_t, 0, 0) };
    wait_ptrace_stop(pid);
    assert!(
        mapped_file(pid, "libc.so.6").is_none(),
        "stopped before its loader ran"
    );
    let tracer = trace_cgroup(&cgroup, &json);
    // SAFETY: ptrace on our own stopped tracee, no pointers: it runs on, untraced.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid as libc::pid_t, 0, 0) };
    let_member_leak(tracer, workload, lines, &flag, &json);
}

/// Issue 14's scale bar: a cgroup of 20 glibc processes traced for `--duration 5s`, attached
/// with one `uprobe_multi` link per (process, object, program); every process is in the report
/// with its own sites exactly, and the probes are detached before it is written.
#[test]
fn cgroup_of_twenty_processes_attached_in_bulk() {
    let (report, pids) = trace_cgroup_of("bulk", 20, &[]);
    let attach = &report["attach"];
    assert_eq!(attach["multi"], true, "{attach}");
    let links = attach["links"].as_u64().unwrap();
    let probes = attach["probes"].as_u64().unwrap();
    // One link per program and object: the same number for each of the identical processes,
    // fewer than their probes (a program serves several entry points, the return probe all).
    assert_eq!(links % pids.len() as u64, 0, "{attach}");
    assert_eq!(probes % pids.len() as u64, 0, "{attach}");
    assert!(links < probes, "{attach}");
    assert!(attach["detach_secs"].as_f64().is_some(), "{attach}");
}

/// Without `uprobe_multi` (`LEAKTRACER_NO_UPROBE_MULTI=1`, as on kernels before 6.6) each probe
/// has its own link, and the report is the same.
#[test]
fn cgroup_traced_with_a_link_per_probe() {
    let (report, _) = trace_cgroup_of("per_probe", 3, &[("LEAKTRACER_NO_UPROBE_MULTI", "1")]);
    let attach = &report["attach"];
    assert_eq!(attach["multi"], false, "{attach}");
    assert_eq!(attach["links"], attach["probes"], "{attach}");
    assert!(attach["detach_secs"].as_f64().is_some(), "{attach}");
}

/// Starts `count` `alloc_sites sites` processes in a new cgroup, traces the cgroup for 5 s
/// (they leak once it is attached to all of them) and checks every one's sites; returns the
/// report and the pids.
fn trace_cgroup_of(name: &str, count: usize, env: &[(&str, &str)]) -> (Value, Vec<u32>) {
    require_root();
    let dir = scratch_dir(&format!("cgroup_{name}"));
    let json = dir.join("leaks.json");
    let flag = dir.join("go");
    let cgroup = Cgroup2Dir::create(&format!("leaktracer-e2e-{name}-{}", std::process::id()));
    let mut workloads: Vec<(Workload, Lines<BufReader<ChildStdout>>)> = (0..count)
        .map(|_| spawn_with_lines(alloc_sites_in(&cgroup, &flag)))
        .collect();
    let pids: Vec<u32> = workloads.iter().map(|(w, _)| w.pid()).collect();
    // Every one has moved itself into the cgroup and exec'd before the trace starts.
    for pid in &pids {
        wait_until(|| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("alloc_sites"))
        });
    }
    let mut tracer = Tracer::start_with_env(
        [
            "trace",
            "--cgroup",
            cgroup.0.to_str().unwrap(),
            "--duration",
            "5s",
            "--json",
            json.to_str().unwrap(),
        ],
        env,
    );
    // Attached at the start, all of them (the report names each below).
    tracer.wait_attached();
    fs::write(&flag, "").unwrap();
    for (_, lines) in &mut workloads {
        assert_eq!(lines.next().unwrap().unwrap(), "done");
    }
    // The trace ends at its --duration, with every process still running.
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "duration", "{}", run.stderr);
    let listed = report["processes"].as_array().unwrap().len();
    assert_eq!(listed, count, "{}", report["processes"]);
    for pid in &pids {
        assert_alloc_sites(&report, *pid);
    }
    drop(workloads);
    (report, pids)
}

/// Waits up to 10 s for `condition`.
fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("not true after 10 s");
}

/// A "container": new mount and pid namespaces, a root directory with its own copy of the
/// workload, libc and loader (other inodes than the host's), in its own cgroup v2 directory.
struct Container {
    _unshare: Workload,
    /// The workload's host pid (it is pid 1 inside).
    pid: u32,
    lines: Lines<BufReader<ChildStdout>>,
    cgroup: Cgroup2Dir,
    /// Device and inode of the container's libc copy.
    libc: (u64, u64),
    /// The file (`/go` inside) that lets the workload start leaking.
    flag: std::path::PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        // pid 1 of its namespace: only SIGKILL from outside ends it.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
    }
}

fn start_container(name: &str) -> Container {
    let root = scratch_dir(&format!("{name}-rootfs"));
    let copy = |from: &str, to: &str| {
        let target = root.join(to.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(from, &target).unwrap_or_else(|e| panic!("{from}: {e}"));
        target
    };
    let host_libc = fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    let libc_copy = copy(
        host_libc.to_str().unwrap(),
        "/lib/x86_64-linux-gnu/libc.so.6",
    );
    let loader = fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();
    copy(loader.to_str().unwrap(), "/lib64/ld-linux-x86-64.so.2");
    copy(workload("alloc_sites").to_str().unwrap(), "/alloc_sites");
    let meta = fs::metadata(&libc_copy).unwrap();
    let cgroup = Cgroup2Dir::create(&format!("leaktracer-e2e-{name}-{}", std::process::id()));
    let command = format!(
        "unshare --mount --pid --fork chroot {} /alloc_sites sites /go",
        root.display()
    );
    let (unshare, lines) = spawn_with_lines(cgroup.enter_and_exec(&command));
    let mut pid = None;
    for _ in 0..500 {
        // unshare's child becomes pid 1 of the new namespace, then execs chroot, then the workload.
        if let Some(child) = children_of(unshare.pid()).first()
            && fs::read_link(format!("/proc/{child}/exe")).is_ok_and(|e| e.ends_with("alloc_sites"))
        {
            pid = Some(*child);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Container {
        flag: root.join("go"),
        _unshare: unshare,
        pid: pid.expect("the container's workload started"),
        lines,
        cgroup,
        libc: (meta.dev(), meta.ino()),
    }
}

fn trace_container(name: &str, by_cgroup: bool) {
    require_root();
    let dir = scratch_dir(name);
    let json = dir.join("leaks.json");
    let mut container = start_container(name);
    let pid = container.pid;
    let target = if by_cgroup {
        vec![
            "--cgroup".to_string(),
            container.cgroup.0.display().to_string(),
        ]
    } else {
        vec!["--pid".to_string(), pid.to_string()]
    };
    let mut tracer = Tracer::start(
        ["trace".to_string()]
            .into_iter()
            .chain(target)
            .chain(["--json".to_string(), json.display().to_string()]),
    );
    tracer.wait_attached();
    tracer.wait_stderr(&format!("pid {pid} "));
    fs::write(&container.flag, "").unwrap();
    assert_eq!(container.lines.next().unwrap().unwrap(), "done");
    let mapped = mapped_file(pid, "/libc.so.6").unwrap();
    tracer.interrupt();
    let run = tracer.finish();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_alloc_sites(&report, pid);
    // The container's own libc was probed, not the host's file at the same path.
    let host_libc = fs::metadata("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    assert_ne!(container.libc, (host_libc.dev(), host_libc.ino()));
    assert_eq!(mapped, container.libc);
    assert_probed_what_is_mapped(&report, pid, container.libc);
    // Named both ways: host pid and its pid in the container.
    let entry = process_entry(&report, pid);
    assert_eq!(entry["nspid"], serde_json::json!([pid, 1]), "{entry}");
    // (Its path as the kernel prints it: from the host, a chroot shows the host's full path.)
    assert!(
        entry["allocator"]
            .as_str()
            .unwrap()
            .ends_with("/lib/x86_64-linux-gnu/libc.so.6"),
        "{entry}"
    );
    assert!(
        run.stdout
            .contains(&format!("pid {pid}, pid 1 in its namespace")),
        "{}",
        run.stdout
    );
    let cgroup_name = container
        .cgroup
        .0
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        entry["cgroup"].as_str().unwrap().ends_with(&cgroup_name),
        "{entry}"
    );
}

#[test]
fn container_traced_by_cgroup() {
    trace_container("container_cgroup", true);
}

#[test]
fn container_traced_by_pid() {
    trace_container("container_pid", false);
}

/// --container finds the cgroup from a container id prefix; ambiguity and absence are clear
/// one-line errors.
#[test]
fn container_id_resolves_to_its_cgroup() {
    require_root();
    let id = format!("{:0>16x}{:0>48x}", std::process::id(), 0xfeed_u64);
    let cgroup = Cgroup2Dir::create(&format!("docker-{id}.scope"));
    let dir = scratch_dir("container_id");
    let json = dir.join("leaks.json");
    // The workload waits until it is traced; it enters the container's cgroup before any
    // tracer starts (the exec-while-discovered case is cgroup_process_started_during_the_trace).
    let flag = dir.join("go");
    let mut cmd = Command::new(workload("alloc_sites"));
    cmd.arg("sites").arg(&flag);
    let (workload, mut lines) = spawn_with_lines(cmd);
    let pid = workload.pid();
    fs::write(cgroup.0.join("cgroup.procs"), pid.to_string()).unwrap();
    let mut tracer = Tracer::start([
        "trace",
        "--container",
        &id[..20],
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    fs::write(&flag, "").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    tracer.interrupt();
    let run = tracer.finish();
    drop(workload);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(report["target"]["cgroup"], cgroup.0.to_str().unwrap());
    assert_alloc_sites(&report, pid);

    let missing = run_tracer(["trace", "--container", "0123456789abcdef0123"]);
    assert!(!missing.status.success());
    assert_eq!(
        missing.stderr.trim().lines().count(),
        1,
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("no running container matches"),
        "{}",
        missing.stderr
    );
    let not_v2 = run_tracer(["trace", "--cgroup", "/tmp"]);
    assert!(!not_v2.status.success());
    assert!(
        not_v2.stderr.contains("is not a cgroup v2 directory"),
        "{}",
        not_v2.stderr
    );
}

/// `--sample-bytes` (default period, 512 KiB): a leak of many small blocks is estimated within
/// 10%, a leak of blocks larger than the period is exact, and the report says it is sampled.
#[test]
fn sampled_estimates_are_unbiased_and_large_blocks_exact() {
    require_root();
    let dir = scratch_dir("sampling");
    let json = dir.join("leaks.json");
    let flag = dir.join("go");
    let mut cmd = Command::new(workload("alloc_sites"));
    cmd.arg("sampling").arg(&flag);
    let (workload, mut lines) = spawn_with_lines(cmd);
    let pid = workload.pid();
    let mut tracer = Tracer::start([
        "trace",
        "--pid",
        &pid.to_string(),
        "--sample-bytes",
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    fs::write(&flag, "").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    tracer.interrupt();
    let run = tracer.finish();
    drop(workload);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(report["sample_bytes"], 512 * 1024);
    let small = stacks_at(&report, "leak_small_many");
    let estimate: u64 = small
        .iter()
        .map(|s| s["outstanding_bytes"].as_u64().unwrap())
        .sum();
    let truth = 100_000.0 * 4096.0;
    assert!(
        (estimate as f64 - truth).abs() / truth < 0.10,
        "estimate {estimate} vs {truth}"
    );
    assert_sites(&report, &[("leak_large", 20 << 20, 20)]);
    assert!(report["totals"]["ignored"]["unsampled"].as_u64().unwrap() > 90_000);
    assert!(run.stdout.contains("heap bytes and counts are estimates"));
}
