//! `cargo xtask bench`: how much a traced program slows down, side by side in one run.
//!
//! Each workload is started stopped (it waits for a line on stdin), the configuration attaches,
//! then the workload runs and times its own operations. Configurations alternate within each
//! repetition: native (nothing attached), floor (leaktracer's probes at its placement, programs
//! that return at once), the usual-placement floor (the same at symbol entries), leaktracer
//! (default), leaktracer sampled, and bcc's memleak-bpfcc (default options) when it can run.
//! Results: median and spread of ns per operation, slowdown vs native, the tracer's own CPU use
//! while the workload runs and its peak RSS, events dropped; then one run per workload with
//! `--program-stats` for the eBPF programs' own run time. Markdown and JSON under
//! target/bench/, the tables in BENCHMARKS.md.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    setup,
    util::{self, step, workspace_root},
};

const REPETITIONS: usize = 5;

/// The two workloads built without frame pointers: their difference in frames per stack and in
/// the return program's run time gives the cost of one unwound frame.
const NO_FP_CHURN: &str = "churn without frame pointers (-O2 -fomit-frame-pointer), 1 thread";
const DEEP: &str = "deep stacks: malloc+free 30 calls deep, no frame pointers";

struct Workload {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Native,
    Floor,
    UsualFloor,
    Leaktracer,
    FramePointers,
    Sampled,
    Memleak,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Native => "native",
            Config::Floor => "floor (leaktracer probes, empty programs)",
            Config::UsualFloor => "usual-placement floor (probes at symbol entry, empty programs)",
            Config::Leaktracer => "leaktracer default (CFI unwinding)",
            Config::FramePointers => "leaktracer --unwind fp",
            Config::Sampled => "leaktracer --sample-bytes (512K)",
            Config::Memleak => "bcc memleak-bpfcc -p PID",
        }
    }
}

/// One measured run.
#[derive(Clone, Default)]
struct Run {
    ns_per_op: f64,
    /// The tracer's CPU time while the workload ran, as a share of one core (percent).
    tracer_cpu_percent: f64,
    tracer_peak_rss_kib: u64,
    dropped: Option<u64>,
}

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let workloads = build_workloads(&out_dir)?;
    let memleak = prepare_memleak(&out_dir);
    if let Err(why) = &memleak {
        step(&format!("bcc memleak will not run: {why:#}"));
    }
    let mut configs = vec![
        Config::Native,
        Config::Floor,
        Config::UsualFloor,
        Config::Leaktracer,
        Config::FramePointers,
        Config::Sampled,
    ];
    if memleak.is_ok() {
        configs.push(Config::Memleak);
    }
    let headers = memleak.ok();
    let leaktracer = root.join("target/release/leaktracer");

    let mut results: Vec<(&Workload, Config, Vec<Run>)> = Vec::new();
    for workload in &workloads {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
        for repetition in 0..REPETITIONS {
            for (index, config) in configs.iter().enumerate() {
                step(&format!(
                    "{} / {} / repetition {}",
                    workload.name,
                    config.name(),
                    repetition + 1
                ));
                let run = measure(workload, *config, &leaktracer, headers.as_deref(), &out_dir)
                    .with_context(|| format!("{} under {}", workload.name, config.name()))?;
                runs[index].push(run);
            }
        }
        for (config, runs) in configs.iter().zip(runs) {
            results.push((workload, *config, runs));
        }
    }
    let mut profiles = Vec::new();
    for workload in &workloads {
        step(&format!("{} / eBPF program run times", workload.name));
        profiles.push((
            workload.name,
            profile_programs(workload, &leaktracer, &out_dir)?,
        ));
    }
    let mut markdown = render_markdown(&results);
    markdown.push_str(&render_profiles(&profiles));
    let json = render_json(&results);
    fs::write(out_dir.join("results.md"), &markdown)?;
    fs::write(out_dir.join("results.json"), json)?;
    let page = format!(
        "# Benchmarks\n\nMeasured by `cargo xtask bench` (as root) on {}; kernel {}.\n\
         Each workload waits until the configuration is attached, then times its own operations;\n\
         configurations alternate within each of {REPETITIONS} repetitions. Medians, with the range.\n\n{markdown}",
        describe_machine(),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    fs::write(root.join("BENCHMARKS.md"), page)?;
    println!("{markdown}");
    step("wrote target/bench/results.md, target/bench/results.json and BENCHMARKS.md");
    Ok(())
}

fn describe_machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} x {model}")
}

fn build_workloads(out_dir: &Path) -> anyhow::Result<Vec<Workload>> {
    let source = workspace_root().join("xtask/bench");
    let churn = out_dir.join("churn");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&churn)
            .arg(source.join("churn.c")),
    )?;
    // The same churn as the code operators run is built: -O2 without frame pointers.
    let churn_nofp = out_dir.join("churn-nofp");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-o"])
            .arg(&churn_nofp)
            .arg(source.join("churn.c")),
    )?;
    let deep = out_dir.join("deep");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
            .arg(&deep)
            .arg(source.join("deep.c")),
    )?;
    let containers = out_dir.join("containers");
    util::run(
        Command::new("g++")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&containers)
            .arg(source.join("containers.cpp")),
    )?;
    Ok(vec![
        Workload {
            name: "churn, 1 thread (malloc+free pairs, 16..4096 B)",
            program: churn.clone(),
            args: vec!["1".into(), "200000".into()],
        },
        Workload {
            name: "churn, 2 threads",
            program: churn,
            args: vec!["2".into(), "100000".into()],
        },
        Workload {
            name: NO_FP_CHURN,
            program: churn_nofp,
            args: vec!["1".into(), "200000".into()],
        },
        Workload {
            name: DEEP,
            program: deep,
            args: vec!["30".into(), "100000".into()],
        },
        Workload {
            name: "C++ map<string, vector<int>> build and drop (per insert)",
            program: containers,
            args: vec!["100".into()],
        },
    ])
}

/// bcc needs kernel headers; this kernel ships none, but Debian's 6.1 headers, unpacked and
/// merged (common + amd64), work. Returns the directory to pass as BCC_KERNEL_SOURCE.
fn prepare_memleak(out_dir: &Path) -> anyhow::Result<PathBuf> {
    setup::ensure_debian_tools(&[("memleak-bpfcc", "bpfcc-tools")])?;
    let merged = out_dir.join("kernel-headers");
    if merged.join("include/linux/kconfig.h").exists() {
        return Ok(merged);
    }
    let download = out_dir.join("kernel-headers-debs");
    fs::create_dir_all(&download)?;
    let search = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            "^linux-headers-6.1.0-[0-9]+-amd64$",
        ])
        .output()?;
    let mut names: Vec<String> = String::from_utf8_lossy(&search.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort_by_key(|n| {
        n.trim_start_matches("linux-headers-6.1.0-")
            .trim_end_matches("-amd64")
            .parse::<u32>()
            .unwrap_or(0)
    });
    let amd64 = names
        .pop()
        .context("no linux-headers-6.1 package in the Debian index")?;
    let common = amd64.replace("-amd64", "-common");
    util::run(
        Command::new("apt-get")
            .args(["download", &amd64, &common])
            .current_dir(&download),
    )?;
    let unpacked = download.join("root");
    for deb in fs::read_dir(&download)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
    }
    let src = unpacked.join("usr/src");
    let dir_of = |suffix: &str| -> anyhow::Result<PathBuf> {
        fs::read_dir(&src)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .with_context(|| format!("no *{suffix} in {}", src.display()))
    };
    fs::create_dir_all(&merged)?;
    util::run(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", dir_of("-common")?.display()))
            .arg(&merged),
    )?;
    util::run(
        Command::new("cp")
            .args(["-a", "--remove-destination"])
            .arg(format!("{}/.", dir_of("-amd64")?.display()))
            .arg(&merged),
    )?;
    Ok(merged)
}

/// Lines a child prints, collected as they come.
fn collect_lines(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

fn wait_for(
    lines: &Arc<Mutex<Vec<String>>>,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return Ok(line.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "no {needle:?} within {timeout:?}: {:?}",
                lines.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time (ns) a process's threads have run so far, from each thread's schedstat (exact,
/// where /proc/PID/stat counts in 10 ms ticks).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Peak RSS (KiB) of a running process.
fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Starts a workload, which waits for a line on stdin, and returns it with its output lines
/// once it says "ready".
fn start_workload(workload: &Workload) -> anyhow::Result<(Child, Arc<Mutex<Vec<String>>>)> {
    let mut target = Command::new(&workload.program)
        .args(&workload.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = collect_lines(target.stdout.take().unwrap());
    wait_for(&out, "ready", Duration::from_secs(10))?;
    Ok((target, out))
}

fn measure(
    workload: &Workload,
    config: Config,
    leaktracer: &Path,
    headers: Option<&Path>,
    out_dir: &Path,
) -> anyhow::Result<Run> {
    let (mut target, out) = start_workload(workload)?;
    let pid = target.id().to_string();
    let json = out_dir.join("run.json");
    let mut tracer: Option<(Child, Arc<Mutex<Vec<String>>>)> = match config {
        Config::Native => None,
        Config::Floor
        | Config::UsualFloor
        | Config::Leaktracer
        | Config::FramePointers
        | Config::Sampled => {
            let extra: &[&str] = match config {
                Config::Floor => &["--empty-programs"],
                Config::FramePointers => &["--unwind", "fp"],
                Config::UsualFloor => &["--empty-programs", "--probes-at-symbol-entry"],
                Config::Sampled => &["--sample-bytes"],
                _ => &[],
            };
            Some(start_leaktracer(leaktracer, &pid, &json, extra)?)
        }
        Config::Memleak => {
            let mut child = Command::new("memleak-bpfcc")
                .args(["-p", &pid])
                .env("BCC_KERNEL_SOURCE", headers.expect("headers prepared"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let out = collect_lines(child.stdout.take().unwrap());
            wait_for(&out, "Attaching to pid", Duration::from_secs(120))?;
            // memleak prints before its last probes are attached; give them a moment.
            std::thread::sleep(Duration::from_millis(500));
            Some((child, out))
        }
    };
    let _ = fs::remove_file(&json);
    let tracer_pid = tracer.as_ref().map(|(child, _)| child.id());
    let cpu_before = tracer_pid.map_or(0, cpu_ns);
    let started = Instant::now();
    target.stdin.as_mut().unwrap().write_all(b"go\n")?;
    let line = wait_for(&out, "ns_per_op", Duration::from_secs(600))?;
    let cpu_during = tracer_pid.map_or(0, cpu_ns).saturating_sub(cpu_before);
    let wall = started.elapsed().as_nanos().max(1) as f64;
    let ns_per_op: f64 = line
        .split_whitespace()
        .nth(1)
        .context("ns_per_op value")?
        .parse()?;
    let mut run = Run {
        ns_per_op,
        tracer_cpu_percent: cpu_during as f64 / wall * 100.0,
        ..Default::default()
    };
    if let Some((mut child, _)) = tracer.take() {
        run.tracer_peak_rss_kib = peak_rss_kib(child.id());
        interrupt(child.id());
        child.wait()?;
        if matches!(config, Config::Leaktracer | Config::Sampled)
            && let Ok(text) = fs::read_to_string(&json)
        {
            run.dropped = text
                .split("\"dropped\":")
                .nth(1)
                .and_then(|rest| rest.split([',', '\n']).next())
                .and_then(|n| n.trim().parse().ok());
        }
    }
    let _ = target.wait();
    Ok(run)
}

/// Starts `leaktracer trace --pid PID` and waits until it traces.
fn start_leaktracer(
    leaktracer: &Path,
    pid: &str,
    json: &Path,
    extra: &[&str],
) -> anyhow::Result<(Child, Arc<Mutex<Vec<String>>>)> {
    let mut child = Command::new(leaktracer)
        .args(["trace", "--quiet", "--pid", pid, "--json"])
        .arg(json)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = collect_lines(child.stderr.take().unwrap());
    wait_for(&err, "leaktracer: tracing ", Duration::from_secs(30))?;
    Ok((child, err))
}

/// One run of leaktracer default with `--program-stats`: each program's runs, mean run time and
/// verified instructions, as leaktracer prints them.
fn profile_programs(
    workload: &Workload,
    leaktracer: &Path,
    out_dir: &Path,
) -> anyhow::Result<Profile> {
    let (mut target, out) = start_workload(workload)?;
    let json = out_dir.join("profile.json");
    let (mut child, err) = start_leaktracer(
        leaktracer,
        &target.id().to_string(),
        &json,
        &["--program-stats"],
    )?;
    target.stdin.as_mut().unwrap().write_all(b"go\n")?;
    wait_for(&out, "ns_per_op", Duration::from_secs(600))?;
    interrupt(child.id());
    child.wait()?;
    let _ = target.wait();
    let frames = fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|report| {
            let walked = report["unwind"]["frames_walked"].as_f64()?;
            let stacks: f64 = report["unwind"]["stack_ends"]
                .as_object()?
                .values()
                .filter_map(serde_json::Value::as_f64)
                .sum();
            // Frame 0 comes from the registers; the walk adds the rest.
            (stacks > 0.0).then(|| 1.0 + walked / stacks)
        });
    let _ = fs::remove_file(&json);
    let lines = err.lock().unwrap();
    let call_return_ns = lines.iter().find_map(|l| {
        let rest = l.strip_prefix("leaktracer: program call_return: ")?;
        let (_, after_runs) = rest.split_once(" runs, ")?;
        after_runs.split(' ').next()?.parse::<f64>().ok()
    });
    Ok(Profile {
        lines: lines
            .iter()
            .filter_map(|l| l.strip_prefix("leaktracer: program "))
            .map(str::to_string)
            .collect(),
        frames_per_stack: frames,
        call_return_ns,
    })
}

/// One workload's `--program-stats` run.
struct Profile {
    lines: Vec<String>,
    /// Frames per recorded stack, frame 0 included.
    frames_per_stack: Option<f64>,
    /// The return program's (which walks the stack) ns per run.
    call_return_ns: Option<f64>,
}

fn render_profiles(profiles: &[(&str, Profile)]) -> String {
    let mut out = String::from(
        "\n### eBPF programs' own run time (one run each, `leaktracer trace --program-stats`)\n\n\
         Measured by the kernel (BPF run-time statistics, which add their own ~20-40 ns per run).\n",
    );
    for (workload, profile) in profiles {
        out.push_str(&format!("\n{workload}:\n\n"));
        for line in &profile.lines {
            out.push_str(&format!("- {line}\n"));
        }
        if let Some(frames) = profile.frames_per_stack {
            out.push_str(&format!("- frames per recorded stack: {frames:.1}\n"));
        }
    }
    let find = |name: &str| profiles.iter().find(|(w, _)| *w == name).map(|(_, p)| p);
    if let (Some(shallow), Some(deep)) = (find(NO_FP_CHURN), find(DEEP))
        && let (Some(f0), Some(f1), Some(t0), Some(t1)) = (
            shallow.frames_per_stack,
            deep.frames_per_stack,
            shallow.call_return_ns,
            deep.call_return_ns,
        )
        && f1 > f0
    {
        out.push_str(&format!(
            "\nCost per unwound frame (call_return's run time, deep stacks against no-frame-pointer churn): \
             ({t1:.0} - {t0:.0}) ns / ({f1:.1} - {f0:.1}) frames = {:.1} ns per frame\n",
            (t1 - t0) / (f1 - f0)
        ));
    }
    out
}

/// SIGINT, as Ctrl-C would send.
fn interrupt(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn render_markdown(results: &[(&Workload, Config, Vec<Run>)]) -> String {
    let mut out = String::new();
    let mut current = "";
    let mut native = 0.0;
    let mut floor = 0.0;
    let mut ours = 0.0;
    for (workload, config, runs) in results {
        if workload.name != current {
            if !current.is_empty() {
                out.push_str(&ratios(floor, ours, results, current));
            }
            current = workload.name;
            out.push_str(&format!(
                "\n### {current}\n\n| configuration | ns/op (median) | range | slowdown vs native | tracer CPU while running | tracer peak RSS | dropped |\n|---|---|---|---|---|---|---|\n"
            ));
        }
        let mut ns: Vec<f64> = runs.iter().map(|r| r.ns_per_op).collect();
        let med = median(&mut ns);
        match config {
            Config::Native => native = med,
            Config::Floor => floor = med,
            Config::Leaktracer => ours = med,
            Config::UsualFloor | Config::FramePointers | Config::Sampled | Config::Memleak => {}
        }
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.tracer_cpu_percent).collect();
        let mut rss: Vec<f64> = runs.iter().map(|r| r.tracer_peak_rss_kib as f64).collect();
        let dropped = runs.iter().filter_map(|r| r.dropped).max();
        out.push_str(&format!(
            "| {} | {:.1} | {:.1}–{:.1} | {:.1}× | {} | {} | {} |\n",
            config.name(),
            med,
            ns.first().unwrap_or(&0.0),
            ns.last().unwrap_or(&0.0),
            if native > 0.0 { med / native } else { 1.0 },
            if *config == Config::Native {
                "-".to_string()
            } else {
                format!("{:.1}% of a core", median(&mut cpu))
            },
            if *config == Config::Native {
                "-".to_string()
            } else {
                format!("{:.0} MiB", median(&mut rss) / 1024.0)
            },
            dropped.map_or("-".to_string(), |d| d.to_string()),
        ));
    }
    if !current.is_empty() {
        out.push_str(&ratios(floor, ours, results, current));
    }
    out
}

/// leaktracer over its floor, and against memleak, for one workload.
fn ratios(
    floor: f64,
    ours: f64,
    results: &[(&Workload, Config, Vec<Run>)],
    workload: &str,
) -> String {
    let memleak = results
        .iter()
        .find(|(w, c, _)| w.name == workload && *c == Config::Memleak)
        .map(|(_, _, runs)| median(&mut runs.iter().map(|r| r.ns_per_op).collect::<Vec<_>>()));
    let sampled = results
        .iter()
        .find(|(w, c, _)| w.name == workload && *c == Config::Sampled)
        .map(|(_, _, runs)| median(&mut runs.iter().map(|r| r.ns_per_op).collect::<Vec<_>>()));
    let usual_floor = results
        .iter()
        .find(|(w, c, _)| w.name == workload && *c == Config::UsualFloor)
        .map(|(_, _, runs)| median(&mut runs.iter().map(|r| r.ns_per_op).collect::<Vec<_>>()));
    let frame_pointers = results
        .iter()
        .find(|(w, c, _)| w.name == workload && *c == Config::FramePointers)
        .map(|(_, _, runs)| median(&mut runs.iter().map(|r| r.ns_per_op).collect::<Vec<_>>()));
    let mut line = format!("\nleaktracer / its floor: {:.2}×", ours / floor);
    if let Some(fp) = frame_pointers {
        line.push_str(&format!("; --unwind fp / floor: {:.2}×", fp / floor));
    }
    if let Some(sampled) = sampled {
        line.push_str(&format!("; sampled / floor: {:.2}×", sampled / floor));
    }
    if let Some(usual) = usual_floor {
        line.push_str(&format!(
            "; usual-placement floor / our floor: {:.2}×",
            usual / floor
        ));
    }
    if let Some(memleak) = memleak {
        line.push_str(&format!(
            "; leaktracer / bcc memleak: {:.2}×",
            ours / memleak
        ));
    }
    line.push('\n');
    line
}

fn render_json(results: &[(&Workload, Config, Vec<Run>)]) -> String {
    let entries: Vec<String> = results
        .iter()
        .map(|(workload, config, runs)| {
            let ns: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.ns_per_op)).collect();
            let cpu: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.2}", r.tracer_cpu_percent))
                .collect();
            let rss: Vec<String> = runs.iter().map(|r| r.tracer_peak_rss_kib.to_string()).collect();
            format!(
                "  {{\"workload\": {:?}, \"config\": {:?}, \"ns_per_op\": [{}], \"tracer_cpu_percent\": [{}], \"tracer_peak_rss_kib\": [{}]}}",
                workload.name,
                config.name(),
                ns.join(", "),
                cpu.join(", "),
                rss.join(", ")
            )
        })
        .collect();
    format!("[\n{}\n]\n", entries.join(",\n"))
}
