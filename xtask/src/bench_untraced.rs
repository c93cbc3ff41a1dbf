//! `cargo xtask bench` (its `untraced` part, issue 27): what a trace costs a process nobody
//! traces. `xtask/bench/read_loop.c` times 1-byte `read(2)`s from /dev/zero with no trace
//! running, then while `leaktracer trace --pid P` traces an idle other process
//! (`xtask/bench/idle_worker.c`); the two alternate in every repetition.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::bail;

use crate::{
    bench::{collect_lines, median, stop, wait_for},
    util::{self, step, workspace_root},
};

/// The section's name (`--only untraced` picks it).
pub const NAME: &str =
    "untraced process: 1-byte read(2) from /dev/zero while another pid is traced";
const REPETITIONS: usize = 5;
const CALLS: &str = "1000000";

/// One run of the read loop: ns per call, by the wall clock and by the thread's CPU time.
#[derive(Clone, Copy)]
struct Reads {
    wall: f64,
    cpu: f64,
}

/// An idle worker killed when dropped, whatever happens.
struct Idle(Child);

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the measurements and returns their markdown table.
pub fn run(leaktracer: &Path, out_dir: &Path) -> anyhow::Result<String> {
    let source = workspace_root().join("xtask/bench");
    let reader = out_dir.join("read-loop");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-o"])
            .arg(&reader)
            .arg(source.join("read_loop.c")),
    )?;
    let worker = out_dir.join("idle-worker");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-o"])
            .arg(&worker)
            .arg(source.join("idle_worker.c")),
    )?;
    let idle = Idle(Command::new(&worker).stdin(Stdio::null()).spawn()?);
    let pid = idle.0.id().to_string();
    let json = out_dir.join("untraced.json");
    let (mut quiet, mut traced) = (Vec::new(), Vec::new());
    // Runs during which some other leaktracer (another user's trace, a test) was running: its
    // machine-wide programs would tax the "no trace" runs too.
    let mut disturbed = 0;
    for repetition in 1..=REPETITIONS {
        step(&format!("{NAME} / no trace / repetition {repetition}"));
        disturbed += usize::from(other_tracers(None) > 0);
        quiet.push(read_loop(&reader)?);
        step(&format!(
            "{NAME} / leaktracer trace --pid {pid} / repetition {repetition}"
        ));
        let mut tracer = Command::new(leaktracer)
            .args(["trace", "--quiet", "--pid", &pid, "--json"])
            .arg(&json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let err = collect_lines(tracer.stderr.take().unwrap());
        let measured =
            wait_for(&err, "leaktracer: tracing ", Duration::from_secs(60)).and_then(|_| {
                disturbed += usize::from(other_tracers(Some(tracer.id())) > 0);
                read_loop(&reader)
            });
        stop(&mut tracer)?;
        traced.push(measured?);
    }
    let _ = std::fs::remove_file(&json);
    drop(idle);
    let mut md = render(&quiet, &traced);
    if disturbed > 0 {
        md.push_str(&format!(
            "\nAnother leaktracer was running during {disturbed} of the {} runs: these figures are not clean.\n",
            2 * REPETITIONS
        ));
    }
    Ok(md)
}

/// leaktracer processes running now, besides `ours`.
fn other_tracers(ours: Option<u32>) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != ours)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "leaktracer")
        })
        .count()
}

fn read_loop(reader: &Path) -> anyhow::Result<Reads> {
    let output = Command::new(reader).arg(CALLS).output()?;
    if !output.status.success() {
        bail!("{} failed ({})", reader.display(), output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text
        .split_whitespace()
        .skip_while(|f| *f != "ns_per_call")
        .skip(1)
        .map(str::parse::<f64>);
    let (Some(Ok(wall)), Some(Ok(cpu))) = (fields.next(), fields.next()) else {
        bail!("no \"ns_per_call WALL CPU\" in {text:?}");
    };
    Ok(Reads { wall, cpu })
}

/// Median and range of one measure over runs, as `median (low–high)`.
fn summary(runs: &[Reads], measure: fn(&Reads) -> f64) -> (f64, String) {
    let mut values: Vec<f64> = runs.iter().map(measure).collect();
    let med = median(&mut values);
    let text = format!(
        "{med:.1} ({:.1}–{:.1})",
        values.first().copied().unwrap_or(0.0),
        values.last().copied().unwrap_or(0.0)
    );
    (med, text)
}

fn render(quiet: &[Reads], traced: &[Reads]) -> String {
    let (quiet_cpu, quiet_cpu_text) = summary(quiet, |r| r.cpu);
    let (traced_cpu, traced_cpu_text) = summary(traced, |r| r.cpu);
    let (quiet_wall, quiet_wall_text) = summary(quiet, |r| r.wall);
    let (traced_wall, traced_wall_text) = summary(traced, |r| r.wall);
    format!(
        "\n### {NAME}\n\n\
         `xtask/bench/read_loop.c`: {CALLS} 1-byte `read(2)`s from /dev/zero, by a process no trace \
         is asked to follow; with nothing traced, then while `leaktracer trace --pid P` traces an idle \
         `xtask/bench/idle_worker.c` (measured after its \"tracing\" line), alternating, \
         {REPETITIONS} repetitions. ns per call, median (range): the thread's own CPU time \
         (`CLOCK_THREAD_CPUTIME_ID`, steady on a busy machine) and the wall clock.\n\n\
         | configuration | ns per read(2), CPU | ns per read(2), wall | ratio to no trace (CPU) |\n\
         |---|---|---|---|\n\
         | no trace | {quiet_cpu_text} | {quiet_wall_text} | 1.00× |\n\
         | leaktracer tracing another pid | {traced_cpu_text} | {traced_wall_text} | {:.2}× |\n\
         \nBy the wall clock: {:.2}× (issue 27 asks for at most 1.1×, aims for 1.02×).\n",
        ratio(traced_cpu, quiet_cpu),
        ratio(traced_wall, quiet_wall),
    )
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_of_the_medians() {
        let runs = |cpu: &[f64]| -> Vec<Reads> {
            cpu.iter()
                .map(|&cpu| Reads {
                    wall: cpu * 2.0,
                    cpu,
                })
                .collect()
        };
        let md = render(&runs(&[300.0, 280.0, 900.0]), &runs(&[600.0, 590.0, 610.0]));
        assert!(
            md.contains("| no trace | 300.0 (280.0–900.0) | 600.0 (560.0–1800.0) | 1.00× |"),
            "{md}"
        );
        assert!(
            md.contains("| 600.0 (590.0–610.0) | 1200.0 (1180.0–1220.0) | 2.00× |"),
            "{md}"
        );
        assert!(md.contains("By the wall clock: 2.00×"), "{md}");
    }
}
