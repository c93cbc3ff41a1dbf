//! `cargo xtask bench` (its `reachability` part): how long a `--reachability` scan stops the
//! target, and how fast it reads, on heaps of 4 KiB blocks up to 1 GiB (issue 13).
//!
//! Each run starts `tests/workloads/reach_heap.c`, attaches `leaktracer trace --pid
//! --reachability --max-pause 30s`, builds the heap while traced (so every block is known),
//! ends the trace with SIGINT and reads the scan's figures from the JSON report.

use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    bench::median,
    util::{self, step, workspace_root},
};

const SIZES_MIB: [u64; 3] = [64, 256, 1024];
const REPETITIONS: usize = 3;

struct Scan {
    pause_ms: f64,
    scanned_bytes: u64,
    mark_ms: f64,
    blocks: u64,
    mode: String,
}

/// Runs the scans and returns their markdown table.
pub fn run(leaktracer: &Path, out_dir: &Path) -> anyhow::Result<String> {
    let heap = out_dir.join("reach_heap");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-pthread", "-o"])
            .arg(&heap)
            .arg(workspace_root().join("tests/workloads/reach_heap.c")),
    )?;
    let mut rows = Vec::new();
    for mib in SIZES_MIB {
        let mut scans = Vec::new();
        for repetition in 0..REPETITIONS {
            step(&format!(
                "reachability scan of {mib} MiB of 4 KiB blocks / repetition {}",
                repetition + 1
            ));
            scans.push(scan_once(leaktracer, &heap, mib, out_dir)?);
        }
        rows.push((mib, scans));
    }
    Ok(render(&rows))
}

fn scan_once(leaktracer: &Path, heap: &Path, mib: u64, out_dir: &Path) -> anyhow::Result<Scan> {
    let mut target = Command::new(heap)
        .arg(mib.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = super::bench::collect_lines(target.stdout.take().unwrap());
    super::bench::wait_for(&out, "started", Duration::from_secs(10))?;
    let json = out_dir.join("reach.json");
    let _ = fs::remove_file(&json);
    let mut tracer = Command::new(leaktracer)
        .args([
            "trace",
            "-q",
            "--reachability",
            "--max-pause",
            "30s",
            "--pid",
        ])
        .arg(target.id().to_string())
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = super::bench::collect_lines(tracer.stderr.take().unwrap());
    super::bench::wait_for(&err, "leaktracer: tracing", Duration::from_secs(60))?;
    target.stdin.as_mut().unwrap().write_all(b"go\n")?;
    super::bench::wait_for(&out, "ready", Duration::from_secs(120))?;
    super::bench::interrupt(tracer.id());
    let status = tracer.wait()?;
    target.stdin.as_mut().unwrap().write_all(b"ping\n")?;
    let pong = super::bench::wait_for(&out, "pong", Duration::from_secs(30));
    let _ = target.kill();
    let _ = target.wait();
    if !status.success() {
        bail!("leaktracer failed: {:?}", err.lock().unwrap());
    }
    pong.context("the target did not answer after its scan")?;
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&json)?)?;
    let scan = &report["reachability"];
    if scan["complete"] != true {
        bail!("the scan was incomplete: {scan}");
    }
    let process = &scan["processes"][0];
    Ok(Scan {
        pause_ms: scan["pause_ms"].as_f64().unwrap_or(0.0),
        scanned_bytes: scan["scanned_bytes"].as_u64().unwrap_or(0),
        mark_ms: process["mark_ms"].as_f64().unwrap_or(0.0),
        blocks: process["blocks"].as_u64().unwrap_or(0),
        mode: scan["mode"].as_str().unwrap_or("").to_string(),
    })
}

fn render(rows: &[(u64, Vec<Scan>)]) -> String {
    let mut md = String::from(
        "\n## Reachability scan (`--reachability`): pause and scan speed\n\n\
         `tests/workloads/reach_heap.c MIB`: MIB of 4 KiB blocks, each held by a global array, built \
         while traced; the trace ends with SIGINT and the scan stops the target (every thread, \
         ptrace), walks glibc's heaps, reads its writable memory, and lets it go; the mark runs \
         after. Command: `leaktracer trace --pid PID --reachability --max-pause 30s --json F` \
         (the default cap is 200 ms). Medians of 3.\n\n\
         | heap | blocks | mode | pause | scanned | scanned per second of pause | mark (target running) | within the default 200 ms cap |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (mib, scans) in rows {
        let pause = median(&mut scans.iter().map(|s| s.pause_ms).collect::<Vec<_>>());
        let mark = median(&mut scans.iter().map(|s| s.mark_ms).collect::<Vec<_>>());
        let scanned = median(
            &mut scans
                .iter()
                .map(|s| s.scanned_bytes as f64)
                .collect::<Vec<_>>(),
        );
        let rate = scanned / (pause / 1e3) / f64::from(1u32 << 30);
        md.push_str(&format!(
            "| {mib} MiB | {} | {} | {pause:.0} ms | {:.0} MiB | {rate:.2} GiB/s | {mark:.0} ms | {} |\n",
            scans[0].blocks,
            scans[0].mode,
            scanned / f64::from(1u32 << 20),
            if pause <= 200.0 { "yes" } else { "no: raise --max-pause" }
        ));
    }
    md
}
