//! `cargo xtask bench` (its `attach` part): how long attaching and detaching take for a cgroup
//! of 1, 10 and 50 small glibc processes, with `uprobe_multi` links and with one link per
//! probe (`LEAKTRACER_NO_UPROBE_MULTI=1`, what kernels before 6.6 get), issue 14.
//!
//! Each run starts N `xtask/bench/idle_worker.c` processes in a new cgroup v2 directory, runs
//! `leaktracer trace --cgroup DIR --duration 1s -q --json F`, times the whole run, and reads
//! the attach and detach times and link counts from the report's `attach` section.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    bench::median,
    util::{self, step, workspace_root},
};

const PROCESSES: [usize; 3] = [1, 10, 50];
/// Runs with multi links (fast); the per-probe runs take minutes at 50 processes, so one each.
const MULTI_REPETITIONS: usize = 3;
const TRACE_SECS: u64 = 1;
const HEADING: &str = "\n## Attach and detach at the scale of a container (issue 14)\n";

struct Attach {
    wall_secs: f64,
    attach_secs: f64,
    detach_secs: f64,
    links: u64,
    probes: u64,
    multi: bool,
}

/// A cgroup v2 directory with the workers in it; dropping it kills them and removes it.
struct Workers {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs the attach measurements and returns their markdown table.
pub fn run(leaktracer: &Path, out_dir: &Path) -> anyhow::Result<String> {
    let worker = out_dir.join("idle-worker");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-o"])
            .arg(&worker)
            .arg(workspace_root().join("xtask/bench/idle_worker.c")),
    )?;
    let Some(mount) = cgroup2_mount() else {
        // A whole run's other tables are still written.
        step("attach and detach: skipped: no cgroup2 mount in /proc/mounts");
        return Ok(format!(
            "{HEADING}\nSkipped: no cgroup2 mount in /proc/mounts (the workers are traced by cgroup).\n"
        ));
    };
    let mut rows = Vec::new();
    for count in PROCESSES {
        for multi in [true, false] {
            let repetitions = if multi { MULTI_REPETITIONS } else { 1 };
            let mut runs = Vec::new();
            for repetition in 0..repetitions {
                step(&format!(
                    "attach and detach, {count} processes, {} / repetition {}",
                    if multi {
                        "uprobe_multi"
                    } else {
                        "a link per probe"
                    },
                    repetition + 1
                ));
                runs.push(
                    trace_once(leaktracer, &worker, &mount, count, multi, out_dir)
                        .with_context(|| format!("{count} processes"))?,
                );
            }
            rows.push((count, runs));
        }
    }
    Ok(render(&rows))
}

fn cgroup2_mount() -> Option<PathBuf> {
    fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
}

fn start_workers(worker: &Path, mount: &Path, count: usize) -> anyhow::Result<Workers> {
    let dir = mount.join(format!("leaktracer-bench-attach-{}", std::process::id()));
    let _ = fs::remove_dir(&dir);
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut workers = Workers {
        dir,
        children: Vec::new(),
    };
    for _ in 0..count {
        // The shell moves itself into the cgroup, then becomes the worker.
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {}",
                workers.dir.display(),
                worker.display()
            ))
            .stdin(Stdio::null())
            .spawn()?;
        workers.children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in &workers.children {
        let exe = format!("/proc/{}/exe", child.id());
        while !fs::read_link(&exe).is_ok_and(|e| e == worker) {
            if Instant::now() > deadline {
                bail!("a worker did not start in 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(workers)
}

fn trace_once(
    leaktracer: &Path,
    worker: &Path,
    mount: &Path,
    count: usize,
    multi: bool,
    out_dir: &Path,
) -> anyhow::Result<Attach> {
    let workers = start_workers(worker, mount, count)?;
    let json = out_dir.join("attach.json");
    let _ = fs::remove_file(&json);
    let mut tracer = Command::new(leaktracer);
    tracer
        .args(["trace", "-q", "--cgroup"])
        .arg(&workers.dir)
        .args(["--duration", &format!("{TRACE_SECS}s"), "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !multi {
        tracer.env("LEAKTRACER_NO_UPROBE_MULTI", "1");
    }
    let start = Instant::now();
    let output = tracer.output()?;
    let wall_secs = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "leaktracer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&json)?)?;
    let listed = report["processes"].as_array().map_or(0, Vec::len);
    if listed != count {
        bail!("{listed} of {count} processes in the report");
    }
    drop(workers);
    let attach = &report["attach"];
    Ok(Attach {
        wall_secs,
        attach_secs: attach["attach_secs"].as_f64().unwrap_or(0.0),
        detach_secs: attach["detach_secs"].as_f64().unwrap_or(0.0),
        links: attach["links"].as_u64().unwrap_or(0),
        probes: attach["probes"].as_u64().unwrap_or(0),
        multi: attach["multi"] == true,
    })
}

fn render(rows: &[(usize, Vec<Attach>)]) -> String {
    let mut md = format!(
        "{HEADING}\n\
         N copies of `xtask/bench/idle_worker.c` (malloc+free of 64 B every 10 ms) in a new \
         cgroup v2 directory; `leaktracer trace --cgroup DIR --duration {TRACE_SECS}s -q --json F`, \
         timed whole (start to exit: load, attach, {TRACE_SECS} s of tracing, detach, report). \
         Attach and detach times are the report's `attach` section. `uprobe_multi`: medians of \
         {MULTI_REPETITIONS}; a link per probe (`LEAKTRACER_NO_UPROBE_MULTI=1`, kernels before \
         6.6): one run each.\n\n\
         | processes | links | probes | attach | detach | whole run |\n\
         |---|---|---|---|---|---|\n",
    );
    for (count, runs) in rows {
        let links = if runs[0].multi {
            "uprobe_multi"
        } else {
            "a link per probe"
        };
        md.push_str(&format!(
            "| {count} | {links}: {} | {} | {:.3} s | {:.3} s | {:.1} s |\n",
            runs[0].links,
            runs[0].probes,
            median(&mut runs.iter().map(|r| r.attach_secs).collect::<Vec<_>>()),
            median(&mut runs.iter().map(|r| r.detach_secs).collect::<Vec<_>>()),
            median(&mut runs.iter().map(|r| r.wall_secs).collect::<Vec<_>>()),
        ));
    }
    md
}
