//! `cargo xtask bench` (its `fastapi` part, issue 27): a FastAPI service under peak traffic, as
//! the user hunting a leak in production sees it. `xtask/bench/fastapi_service.py` runs under
//! uvicorn (one worker, uvloop, httptools) from the venv [`setup::ensure_bench_venv`] makes;
//! `wrk -t1 -c8` drives each endpoint in turn, and the requests per second of each
//! configuration are set beside native's: leaktracer default and `--sample-bytes` attached by
//! pid to the running service, `PYTHONTRACEMALLOC=1` (a service started with it) and `memray
//! attach --aggregate`. The default run's report must put its top stack at the leaking line.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    bench::{collect_lines, start_leaktracer, stop, wait_for},
    setup,
    util::{self, step, workspace_root},
};

/// The section's name (`--only fastapi` picks it).
pub const NAME: &str = "FastAPI under wrk (uvicorn, one worker, uvloop, httptools)";
const ENDPOINTS: [&str; 3] = ["/orders", "/prices", "/health"];
/// wrk's run per endpoint, after a warm-up of its own.
const WRK_SECS: u64 = 8;
const WARMUP_SECS: u64 = 1;
/// The service file's marker of the leaking line.
const LEAK_MARK: &str = "# LEAK";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Native,
    Leaktracer,
    Sampled,
    Tracemalloc,
    Memray,
}

impl Setup {
    const ALL: [Setup; 5] = [
        Setup::Native,
        Setup::Leaktracer,
        Setup::Sampled,
        Setup::Tracemalloc,
        Setup::Memray,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::Native => "no tracer",
            Setup::Leaktracer => "leaktracer (default), `trace --pid`",
            Setup::Sampled => "leaktracer `--sample-bytes` (512K), `trace --pid`",
            Setup::Tracemalloc => "`PYTHONTRACEMALLOC=1` (in-process, from the start)",
            Setup::Memray => "`memray attach --aggregate` (injected with gdb)",
        }
    }
}

/// One configuration's row: requests per second per endpoint, or why it did not run.
struct Row {
    setup: Setup,
    rps: Result<Vec<f64>, String>,
    /// For the leaktracer rows: where the report's top stack is.
    top: Option<String>,
    /// Requests that failed, as wrk said.
    notes: Vec<String>,
}

/// A running service, ended (SIGTERM, then SIGKILL) when dropped.
struct Service {
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM first, so uvicorn shuts down cleanly.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs every configuration once, side by side, and returns the markdown section.
pub fn run(leaktracer: &Path, out_dir: &Path) -> anyhow::Result<String> {
    let python = setup::bench_venv().join("bin/python");
    let service = workspace_root().join("xtask/bench/fastapi_service.py");
    let leak_line = leak_line(&service)?;
    let missing = if !python.exists() {
        Some(format!(
            "no venv at {} (`setup::ensure_bench_venv` failed)",
            setup::bench_venv().display()
        ))
    } else if !util::on_path("wrk") {
        Some("wrk not installed".to_string())
    } else {
        None
    };
    if let Some(why) = missing {
        step(&format!("{NAME}: skipped: {why}"));
        return Ok(format!("\n### {NAME}\n\nSkipped: {why}.\n"));
    }
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let base = fs::read_to_string(setup::bench_venv().join("pyvenv.cfg"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("home = ").map(str::to_string))
        .unwrap_or_default();
    let started = Instant::now();
    let mut rows = Vec::new();
    for config in Setup::ALL {
        step(&format!("{NAME} / {}", config.name()));
        let skipped = (config == Setup::Memray && !util::on_path("gdb"))
            .then(|| "gdb not installed (memray attach injects with it)".to_string());
        let row = match skipped {
            Some(why) => Row {
                setup: config,
                rps: Err(format!("skipped: {why}")),
                top: None,
                notes: Vec::new(),
            },
            None => measure(config, &python, &service, leaktracer, out_dir, leak_line)
                .unwrap_or_else(|err| Row {
                    setup: config,
                    rps: Err(format!("failed: {err:#}")),
                    top: None,
                    notes: Vec::new(),
                }),
        };
        rows.push(row);
    }
    step(&format!(
        "{NAME}: {:.0} s for every configuration",
        started.elapsed().as_secs_f64()
    ));
    Ok(render(
        &rows,
        &format!("{version}, venv from {base}"),
        leak_line,
    ))
}

/// The line of the service file marked as the leak.
fn leak_line(service: &Path) -> anyhow::Result<u64> {
    let text = fs::read_to_string(service)?;
    let index = text
        .lines()
        .position(|l| l.contains(LEAK_MARK))
        .with_context(|| format!("no {LEAK_MARK:?} line in {}", service.display()))?;
    Ok(index as u64 + 1)
}

fn measure(
    config: Setup,
    python: &Path,
    service_file: &Path,
    leaktracer: &Path,
    out_dir: &Path,
    leak_line: u64,
) -> anyhow::Result<Row> {
    let service = start_service(python, service_file, config == Setup::Tracemalloc)?;
    let pid = service.child.id().to_string();
    let json = out_dir.join("fastapi.json");
    let _ = fs::remove_file(&json);
    let mut tracer: Option<(Child, Arc<Mutex<Vec<String>>>)> = match config {
        Setup::Leaktracer => Some(start_leaktracer(leaktracer, &pid, &json, &[])?),
        Setup::Sampled => Some(start_leaktracer(
            leaktracer,
            &pid,
            &json,
            &["--sample-bytes"],
        )?),
        Setup::Memray => {
            memray_attach(python, &pid, out_dir)?;
            None
        }
        Setup::Native | Setup::Tracemalloc => None,
    };
    let mut rps = Vec::new();
    let mut notes = Vec::new();
    for endpoint in ENDPOINTS {
        let url = format!("http://127.0.0.1:{}{endpoint}", service.port);
        wrk(&url, WARMUP_SECS)?;
        let run = wrk(&url, WRK_SECS)?;
        rps.push(run.rps);
        notes.extend(run.errors.iter().map(|e| format!("wrk on {endpoint}: {e}")));
    }
    let mut top = None;
    if let Some((mut child, _)) = tracer.take() {
        stop(&mut child)?;
        let report: serde_json::Value = serde_json::from_slice(
            &fs::read(&json).with_context(|| format!("leaktracer wrote no {}", json.display()))?,
        )?;
        // Sampled at one per 512K, a leak of this size is a sample or two: its place is shown,
        // not required.
        top = Some(top_stack(&report, leak_line, config == Setup::Leaktracer));
        let _ = fs::remove_file(&json);
    }
    drop(service);
    let _ = fs::remove_file(out_dir.join("memray-fastapi.bin"));
    Ok(Row {
        setup: config,
        rps: Ok(rps),
        top,
        notes,
    })
}

fn start_service(python: &Path, file: &Path, tracemalloc: bool) -> anyhow::Result<Service> {
    let mut command = Command::new(python);
    command
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if tracemalloc {
        command.env("PYTHONTRACEMALLOC", "1");
    }
    let mut child = command.spawn()?;
    let out = collect_lines(child.stdout.take().unwrap());
    let mut service = Service { child, port: 0 };
    let line = wait_for(&out, "port ", Duration::from_secs(60))?;
    service.port = line
        .trim_start_matches("port ")
        .trim()
        .parse()
        .with_context(|| format!("a port in {line:?}"))?;
    // Serving once /health answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !health(service.port) {
        if Instant::now() > deadline || service.child.try_wait()?.is_some() {
            bail!("the service did not answer /health within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(service)
}

/// GET /health answered with 200.
fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200")
}

/// `memray attach --aggregate` into the service; returns once memray says it is attached.
fn memray_attach(python: &Path, pid: &str, out_dir: &Path) -> anyhow::Result<()> {
    let memray = python.with_file_name("memray");
    let capture: PathBuf = out_dir.join("memray-fastapi.bin");
    let _ = fs::remove_file(&capture);
    let mut child = Command::new(&memray)
        .args(["attach", "--aggregate", "-f", "-o"])
        .arg(&capture)
        .arg(pid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = collect_lines(child.stderr.take().unwrap());
    // gdb stuck on the target must not hang the bench.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("memray attach did not return within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        // The reader thread may still be collecting the last lines.
        std::thread::sleep(Duration::from_millis(200));
        bail!(
            "memray attach failed ({status}): {}",
            err.lock().unwrap().join(" ")
        );
    }
    Ok(())
}

/// What one wrk run measured.
struct Wrk {
    rps: f64,
    /// wrk's own lines about failed requests (non-2xx answers, socket errors), if any.
    errors: Vec<String>,
}

/// `wrk -t1 -c8 -dNs URL`: its requests per second, and what failed.
fn wrk(url: &str, secs: u64) -> anyhow::Result<Wrk> {
    let output = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{secs}s"), url])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed ({}): {text}", output.status);
    }
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(|l| l.trim().to_string())
        .collect();
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    Ok(Wrk { rps, errors })
}

/// Where the report's largest stack is: its innermost Python frame, and whether that is the
/// service's leaking line (FAILED when it is not and `required`).
fn top_stack(report: &serde_json::Value, leak_line: u64, required: bool) -> String {
    let Some(stack) = report["stacks"].as_array().and_then(|stacks| {
        stacks
            .iter()
            .max_by_key(|s| s["outstanding_bytes"].as_u64().unwrap_or(0))
    }) else {
        return "FAILED: no stack in the report".into();
    };
    let bytes = stack["outstanding_bytes"].as_u64().unwrap_or(0);
    let frame = stack["frames"]
        .as_array()
        .and_then(|frames| frames.iter().find(|f| f["kind"] == "python"));
    let Some(frame) = frame else {
        return format!("FAILED: the top stack ({bytes} bytes) has no Python frame");
    };
    let file = frame["file"].as_str().unwrap_or("?");
    let line = frame["line"].as_u64().unwrap_or(0);
    let place = format!(
        "`{}` at {}:{line} ({bytes} bytes in {} blocks)",
        frame["function"].as_str().unwrap_or("?"),
        Path::new(file)
            .file_name()
            .map_or(file.into(), |n| n.to_string_lossy()),
        stack["outstanding_allocations"].as_u64().unwrap_or(0)
    );
    if file.ends_with("fastapi_service.py") && line == leak_line {
        format!("at the leaking line: {place}")
    } else if required {
        format!("FAILED: not at the leaking line (fastapi_service.py:{leak_line}): {place}")
    } else {
        format!(
            "not at the leaking line (fastapi_service.py:{leak_line}; not required when sampled): {place}"
        )
    }
}

fn render(rows: &[Row], interpreter: &str, leak_line: u64) -> String {
    let mut md = format!(
        "\n### {NAME}\n\n\
         `xtask/bench/fastapi_service.py` under {interpreter}: uvicorn, one worker, `--loop uvloop \
         --http httptools`, no access log. `wrk -t1 -c8 -d{WRK_SECS}s` per endpoint after a \
         {WARMUP_SECS} s warm-up, one run, configurations in turn, each on a fresh service; the \
         tracers attach to the running service (leaktracer measured after its \"tracing\" line). \
         /orders keeps a small string per request (the leak, line {leak_line}), /prices is served \
         from a 128-entry cache, /health does nothing. Requests per second.\n\n\
         | configuration | /orders | /prices | /health | share of native |\n|---|---|---|---|---|\n"
    );
    let native = rows
        .iter()
        .find(|r| r.setup == Setup::Native)
        .and_then(|r| r.rps.as_ref().ok());
    for row in rows {
        match &row.rps {
            Err(why) => md.push_str(&format!("| {} | {why} | - | - | - |\n", row.setup.name())),
            Ok(rps) => {
                let cells: Vec<String> = rps.iter().map(|r| format!("{r:.0}")).collect();
                let share = native.map_or("-".to_string(), |native| share(rps, native));
                md.push_str(&format!(
                    "| {} | {} | {share} |\n",
                    row.setup.name(),
                    cells.join(" | ")
                ));
            }
        }
    }
    for row in rows {
        if let Some(top) = &row.top {
            md.push_str(&format!("\n{}: top stack {top}.\n", row.setup.name()));
        }
        for note in &row.notes {
            md.push_str(&format!("\n{}: {note}.\n", row.setup.name()));
        }
    }
    md
}

/// The range of the per-endpoint shares of native throughput, e.g. `5–7%`.
fn share(rps: &[f64], native: &[f64]) -> String {
    let shares: Vec<f64> = rps
        .iter()
        .zip(native)
        .filter(|(_, n)| **n > 0.0)
        .map(|(r, n)| r / n * 100.0)
        .collect();
    let low = shares.iter().copied().fold(f64::INFINITY, f64::min);
    let high = shares.iter().copied().fold(0.0, f64::max);
    if shares.is_empty() {
        "-".into()
    } else if format!("{low:.0}") == format!("{high:.0}") {
        format!("{low:.0}%")
    } else {
        format!("{low:.0}–{high:.0}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leak_line_is_the_marked_one() {
        let service = workspace_root().join("xtask/bench/fastapi_service.py");
        let line = leak_line(&service).unwrap();
        let text = fs::read_to_string(&service).unwrap();
        let marked = text.lines().nth(line as usize - 1).unwrap();
        assert!(marked.contains("ORDERS.append(str(order))"), "{marked}");
    }

    #[test]
    fn shares_are_a_range_of_percent_of_native() {
        assert_eq!(
            share(&[204.0, 326.0, 350.0], &[2833.0, 4981.0, 6775.0]),
            "5–7%"
        );
        assert_eq!(
            share(&[100.0, 200.0, 300.0], &[1000.0, 2000.0, 3000.0]),
            "10%"
        );
    }

    #[test]
    fn a_row_per_configuration_beside_native() {
        let row = |setup, rps: Result<Vec<f64>, String>, notes: &[&str]| Row {
            setup,
            rps,
            top: None,
            notes: notes.iter().map(|n| n.to_string()).collect(),
        };
        let md = render(
            &[
                row(Setup::Native, Ok(vec![2833.0, 4981.0, 6775.0]), &[]),
                row(
                    Setup::Leaktracer,
                    Ok(vec![204.0, 326.0, 350.0]),
                    &["wrk on /orders: Socket errors: connect 0, read 0, write 0, timeout 3"],
                ),
                row(Setup::Memray, Err("skipped: gdb not installed".into()), &[]),
            ],
            "Python 3.12.1",
            29,
        );
        assert!(
            md.contains("| no tracer | 2833 | 4981 | 6775 | 100% |\n"),
            "{md}"
        );
        assert!(
            md.contains("| leaktracer (default), `trace --pid` | 204 | 326 | 350 | 5–7% |\n"),
            "{md}"
        );
        assert!(
            md.contains("| skipped: gdb not installed | - | - | - |\n"),
            "{md}"
        );
        assert!(md.contains("timeout 3."), "{md}");
    }

    #[test]
    fn the_top_stack_must_be_at_the_leaking_line() {
        let report = |line: u64| {
            serde_json::json!({"stacks": [
                {"outstanding_bytes": 10, "outstanding_allocations": 1, "frames": []},
                {"outstanding_bytes": 7000, "outstanding_allocations": 100, "frames": [
                    {"kind": "native", "function": "PyObject_Malloc"},
                    {"kind": "python", "function": "orders",
                     "file": "/x/xtask/bench/fastapi_service.py", "line": line}
                ]}
            ]})
        };
        assert_eq!(
            top_stack(&report(31), 31, true),
            "at the leaking line: `orders` at fastapi_service.py:31 (7000 bytes in 100 blocks)"
        );
        assert!(top_stack(&report(30), 31, true).starts_with("FAILED: not at the leaking line"));
        assert!(top_stack(&report(30), 31, false).starts_with("not at the leaking line"));
    }
}
