//! How targets end: a process the OOM killer ends in a memory cgroup is reported as killed by
//! it, at the cgroup's limit, with the leaking site holding its memory at death; a `--pid`
//! target's own exit code is reported though leaktracer is not its parent.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use leaktracer_e2e::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// What `oom_leak` leaks per block, at `leak_chunk`.
const CHUNK: u64 = MIB;
const LIMIT: u64 = 64 * MIB;

/// The report's `target_exit` says the OOM killer ended the target at the cgroup's 64 MiB
/// limit; the leaking site holds, at death, what the limit allowed; the text says it plainly.
fn assert_oom_killed(report: &Value, text: &str, cgroup: &MemoryCgroup) {
    assert_eq!(cgroup.limit_bytes, LIMIT);
    assert_eq!(
        report["end_reason"], "target exited",
        "{}",
        report["end_reason"]
    );
    let exit = &report["target_exit"];
    assert_eq!(exit["oom_killed"], true, "{exit}");
    assert_eq!(exit["signal"], "SIGKILL", "{exit}");
    assert!(exit["code"].is_null(), "{exit}");
    assert_eq!(exit["limit_bytes"].as_u64(), Some(LIMIT), "{exit}");
    let source = exit["limit_source"].as_str().unwrap();
    assert!(
        source.contains(&cgroup.dir.display().to_string()),
        "{source}"
    );
    // The cgroup's own counter agrees (nothing else runs in it).
    assert_eq!(exit["cgroup_oom_kills"].as_u64(), Some(1), "{exit}");
    assert_eq!(cgroup.oom_kills(), 1);
    let killed_at = exit["oom_at_secs"].as_f64().unwrap();
    let exited_at = exit["exited_at_secs"].as_f64().unwrap();
    assert!(0.0 < killed_at && killed_at <= exited_at, "{exit}");

    // Every block but the last was filled before the next was asked for, each charging at
    // least its 1 MiB: n - 1 blocks fit under 64 MiB, so at most 64 blocks are outstanding;
    // the binary, libc and page tables take far less than 24 MiB of the limit.
    let (bytes, allocations) = outstanding_at(report, "leak_chunk");
    assert_eq!(bytes, allocations * CHUNK, "whole blocks only");
    assert!(
        (40 * MIB..=LIMIT).contains(&bytes),
        "leak_chunk holds {bytes} bytes at death"
    );
    let held = exit["outstanding_bytes"].as_u64().unwrap();
    assert!(held >= bytes && held < bytes + MIB, "{held} vs {bytes}");

    let verdict = &report["verdict"];
    assert_eq!(verdict["oom_killed"], true, "{verdict}");
    assert!(verdict["seconds_to_limit"].is_null(), "{verdict}");
    let summary = verdict["summary"].as_str().unwrap();
    assert!(summary.starts_with("OOM-KILLED: pid "), "{summary}");
    assert!(
        summary.contains("LEAK: 1 stack growing steadily"),
        "{summary}"
    );

    // The text report: the first line and the verdict say it, and leak_chunk leads.
    let said = format!(
        "killed by the OOM killer (SIGKILL, at {killed_at:.1} s) at the 64.00 MiB limit (cgroup "
    );
    let first = text
        .lines()
        .find(|l| l.starts_with("leaktracer: traced"))
        .unwrap();
    assert!(first.contains(&said), "{first}");
    assert!(
        first.contains(&format!(
            "holding {:.2} MiB outstanding",
            held as f64 / MIB as f64
        )),
        "{first}"
    );
    let verdict_line = text.lines().find(|l| l.starts_with("verdict: ")).unwrap();
    assert!(
        verdict_line.starts_with("verdict: OOM-KILLED: pid "),
        "{verdict_line}"
    );
    assert!(verdict_line.contains(&said), "{verdict_line}");
    let top = text
        .lines()
        .skip_while(|l| !l.starts_with("#1 "))
        .nth(2)
        .unwrap_or_default();
    assert!(top.trim_start().starts_with("leak_chunk at "), "{text}");
}

/// A launched command joins a cgroup limited to 64 MiB (no swap) and leaks 1 MiB blocks
/// there until the OOM killer ends it.
#[test]
fn launched_command_oom_killed_at_its_cgroup_limit() {
    require_root();
    let dir = scratch_dir("oom_launched");
    let json = dir.join("report.json");
    let cgroup = MemoryCgroup::create(&format!("leaktracer-e2e-oom-{}", std::process::id()), LIMIT);
    let leak = workload("oom_leak");
    let command = cgroup.enter_and_exec(&format!("{} leak 20", leak.display()));
    let run = run_tracer([
        "trace",
        "--interval",
        "250ms",
        "--json",
        json.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &command,
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_oom_killed(&report, &run.stdout, &cgroup);
    assert_eq!(
        report["target_exit"]["pid"], report["target"]["pids"][0],
        "{}",
        report["target_exit"]
    );
}

/// The same leak in a process leaktracer did not start (`--pid`): its end comes from the
/// kernel's exit record, not from waitpid.
#[test]
fn pid_target_oom_killed_at_its_cgroup_limit() {
    require_root();
    let dir = scratch_dir("oom_pid");
    let json = dir.join("report.json");
    let cgroup = MemoryCgroup::create(
        &format!("leaktracer-e2e-oompid-{}", std::process::id()),
        LIMIT,
    );
    let mut child = Command::new(workload("oom_leak"))
        .args(["--wait", "leak", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let workload = Workload(child);
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    cgroup.add(workload.pid());
    let mut tracer = Tracer::start([
        "trace",
        "--pid",
        &workload.pid().to_string(),
        "--interval",
        "250ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    send_line(&mut stdin, "go");
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(
        report["target_exit"]["pid"].as_u64(),
        Some(u64::from(workload.pid()))
    );
    assert_oom_killed(&report, &run.stdout, &cgroup);
    drop(workload);
}

/// A `--pid` target that calls exit(3): code 3, no signal, not the OOM killer's, and what it
/// leaked before.
#[test]
fn pid_target_exit_code_is_reported() {
    require_root();
    let dir = scratch_dir("exit_code_pid");
    let json = dir.join("report.json");
    let mut child = Command::new(workload("oom_leak"))
        .args(["--wait", "exit", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut workload = Workload(child);
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut tracer = Tracer::start([
        "trace",
        "--pid",
        &workload.pid().to_string(),
        "--json",
        json.to_str().unwrap(),
    ]);
    tracer.wait_attached();
    send_line(&mut stdin, "go");
    assert_eq!(workload.0.wait().unwrap().code(), Some(3));
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "target exited");
    let exit = &report["target_exit"];
    assert_eq!(
        exit["pid"].as_u64(),
        Some(u64::from(workload.pid())),
        "{exit}"
    );
    assert_eq!(exit["code"].as_i64(), Some(3), "{exit}");
    assert!(exit["signal"].is_null(), "{exit}");
    assert_eq!(exit["oom_killed"], false, "{exit}");
    assert!(exit["oom_at_secs"].is_null(), "{exit}");
    assert_eq!(outstanding_at(&report, "leak_chunk"), (4 * CHUNK, 4));
    assert_eq!(
        exit["outstanding_bytes"].as_u64(),
        Some(4 * CHUNK),
        "{exit}"
    );
    assert_eq!(report["verdict"]["oom_killed"], false);
    let first = run
        .stdout
        .lines()
        .find(|l| l.starts_with("leaktracer: traced"))
        .unwrap();
    assert!(first.ends_with("(target exited: exit code 3)"), "{first}");
}
