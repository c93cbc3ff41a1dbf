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
//! target/bench/, the tables in BENCHMARKS.md (a run filtered with `--only` leaves that alone).
//!
//! Tables of their own: the reachability scan's pause ([`crate::bench_reach`]), attach and
//! detach times at 1, 10 and 50 processes ([`crate::bench_attach`]), a FastAPI service under
//! wrk ([`crate::bench_fastapi`]) and what a trace costs a process it does not trace
//! ([`crate::bench_untraced`]).
//!
//! The Python workload (issue 12) runs under one interpreter ([`setup::python`]) natively, under
//! leaktracer default, under `-X tracemalloc=25` and under `memray run`; its rows say
//! "skipped" when the interpreter or memray is missing. The same script under every interpreter
//! the tests cover (issue 26) makes one table of its own, a row per interpreter
//! ([`crate::bench_python`]).

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

/// The mapping churn workload's name (`--only mmap` picks it).
const MMAP_CHURN: &str = "mmap churn (mmap+touch+munmap of 64 KiB: half libc, half syscall(2))";

/// The Python workload's name (`--only python` picks it).
const PYTHON: &str = "Python: build and drop lists, dicts, strings, tuples (per loop iteration)";

/// What runs a workload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A C or C++ program built here.
    Compiled,
    /// A script run by the interpreter `program`.
    Python,
}

pub(crate) struct Workload {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) program: PathBuf,
    /// The root it runs in (with `chroot`), if not the host's; `args` name paths inside it.
    pub(crate) root: Option<PathBuf>,
    pub(crate) args: Vec<String>,
    pub(crate) repetitions: usize,
    /// The interpreter it stands for when it is a row of the table of every interpreter
    /// ([`crate::bench_python`]) rather than a table of its own.
    pub(crate) interpreter_row: Option<String>,
    /// A line printed under its table (the Python rows' interpreter); for a row of the table of
    /// every interpreter, the interpreter's version.
    pub(crate) note: Option<String>,
    /// The configurations it runs under, in order, each with why it cannot run (its row then
    /// says so instead of failing the bench).
    pub(crate) configs: Vec<(Config, Option<String>)>,
}

impl Workload {
    /// The command that starts it under `config`: the program itself, or for the in-process
    /// Python tracers the interpreter with their options before the script.
    fn command(&self, config: Config, out_dir: &Path) -> Command {
        let mut command = match &self.root {
            Some(root) => {
                let mut chroot = Command::new("chroot");
                chroot.arg(root).arg(&self.program);
                chroot
            }
            None => Command::new(&self.program),
        };
        match config {
            Config::Tracemalloc => {
                // 25 frames kept per allocation (as the row's name says).
                command.args(["-X", "tracemalloc=25"]);
            }
            Config::Memray => {
                command
                    .args(["-m", "memray", "run", "--quiet", "-o"])
                    .arg(memray_output(out_dir));
            }
            _ => {}
        }
        command.args(&self.args);
        command
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Config {
    Native,
    Floor,
    UsualFloor,
    Leaktracer,
    FramePointers,
    Sampled,
    Memleak,
    Tracemalloc,
    Memray,
}

impl Config {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Config::Native => "native",
            Config::Floor => "floor (leaktracer probes, empty programs)",
            Config::UsualFloor => "usual-placement floor (probes at symbol entry, empty programs)",
            Config::Leaktracer => "leaktracer default (CFI unwinding)",
            Config::FramePointers => "leaktracer --unwind fp",
            Config::Sampled => "leaktracer --sample-bytes (512K)",
            Config::Memleak => "bcc memleak-bpfcc -p PID",
            Config::Tracemalloc => "python -X tracemalloc=25",
            Config::Memray => "memray run --quiet -o FILE",
        }
    }

    /// Runs inside the target's process (no tracer process to measure).
    fn in_process(self) -> bool {
        matches!(self, Config::Tracemalloc | Config::Memray)
    }
}

/// One configuration's runs of one workload.
pub(crate) struct Row<'a> {
    pub(crate) workload: &'a Workload,
    pub(crate) config: Config,
    pub(crate) runs: Vec<Run>,
    /// Why it did not run.
    pub(crate) skipped: Option<String>,
}

impl Row<'_> {
    pub(crate) fn median_ns(&self) -> Option<f64> {
        (self.skipped.is_none() && !self.runs.is_empty())
            .then(|| median(&mut self.runs.iter().map(|r| r.ns_per_op).collect::<Vec<_>>()))
    }
}

/// One measured run.
#[derive(Clone, Default)]
pub(crate) struct Run {
    pub(crate) ns_per_op: f64,
    /// The tracer's CPU time while the workload ran, as a share of one core (percent).
    tracer_cpu_percent: f64,
    tracer_peak_rss_kib: u64,
    dropped: Option<u64>,
    /// leaktracer's notes about the target (`leaktracer: note: ...`), as it printed them.
    pub(crate) notes: Vec<String>,
}

/// Runs every workload, or with `only` those whose name contains it (case-insensitive).
pub fn run(only: Option<&str>) -> anyhow::Result<()> {
    let root = workspace_root();
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let mut workloads = build_workloads(&out_dir)?;
    workloads.push(python_workload());
    workloads.extend(crate::bench_python::workloads()?);
    // The reachability scans (their own table): in a whole run, or `--only reachability`.
    let reachability = only.is_none_or(|o| "reachability".contains(&o.to_lowercase()));
    // Attach and detach times at 1, 10 and 50 processes: in a whole run, or `--only attach`.
    let attach = only.is_none_or(|o| "attach".contains(&o.to_lowercase()));
    // The FastAPI service and the untraced process (issue 27): in a whole run, or when `only`
    // is in their names (`--only fastapi`, `--only untraced`).
    let picked = |name: &str| only.is_none_or(|o| name.to_lowercase().contains(&o.to_lowercase()));
    let fastapi = picked(crate::bench_fastapi::NAME);
    let untraced = picked(crate::bench_untraced::NAME);
    if let Some(only) = only {
        let needle = only.to_lowercase();
        workloads.retain(|w| w.name.to_lowercase().contains(&needle));
        if workloads.is_empty() && !reachability && !attach && !fastapi && !untraced {
            bail!(
                "no workload's name contains {only:?} (nor do \"reachability\", \"attach\", {:?} or {:?})",
                crate::bench_fastapi::NAME,
                crate::bench_untraced::NAME
            );
        }
    }
    let mut headers = None;
    if workloads.iter().any(|w| w.kind == Kind::Compiled) {
        match prepare_memleak(&out_dir) {
            Ok(dir) => headers = Some(dir),
            Err(why) => step(&format!("bcc memleak will not run: {why:#}")),
        }
    }
    let mut configs = vec![
        Config::Native,
        Config::Floor,
        Config::UsualFloor,
        Config::Leaktracer,
        Config::FramePointers,
        Config::Sampled,
    ];
    if headers.is_some() {
        configs.push(Config::Memleak);
    }
    for workload in workloads.iter_mut().filter(|w| w.kind == Kind::Compiled) {
        workload.configs = configs.iter().map(|c| (*c, None)).collect();
    }
    let leaktracer = root.join("target/release/leaktracer");

    let mut results: Vec<Row> = Vec::new();
    for workload in &workloads {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); workload.configs.len()];
        for repetition in 0..workload.repetitions {
            for (index, (config, skipped)) in workload.configs.iter().enumerate() {
                if skipped.is_some() {
                    continue;
                }
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
        for ((config, skipped), runs) in workload.configs.iter().zip(runs) {
            if let Some(why) = skipped {
                step(&format!(
                    "{} / {}: skipped: {why}",
                    workload.name,
                    config.name()
                ));
            }
            results.push(Row {
                workload,
                config: *config,
                runs,
                skipped: skipped.clone(),
            });
        }
    }
    let mut profiles = Vec::new();
    for workload in workloads.iter().filter(|w| w.interpreter_row.is_none()) {
        if !workload
            .configs
            .iter()
            .any(|(c, skipped)| *c == Config::Leaktracer && skipped.is_none())
        {
            continue;
        }
        step(&format!("{} / eBPF program run times", workload.name));
        profiles.push((
            workload.name.as_str(),
            profile_programs(workload, &leaktracer, &out_dir)?,
        ));
    }
    let mut markdown = render_markdown(&results);
    markdown.push_str(&crate::bench_python::render(&results));
    markdown.push_str(&render_profiles(&profiles));
    if reachability {
        markdown.push_str(&crate::bench_reach::run(&leaktracer, &out_dir)?);
    }
    if attach {
        markdown.push_str(&crate::bench_attach::run(&leaktracer, &out_dir)?);
    }
    if fastapi {
        markdown.push_str(&crate::bench_fastapi::run(&leaktracer, &out_dir)?);
    }
    if untraced {
        markdown.push_str(&crate::bench_untraced::run(&leaktracer, &out_dir)?);
    }
    let json = render_json(&results);
    fs::write(out_dir.join("results.md"), &markdown)?;
    fs::write(out_dir.join("results.json"), json)?;
    println!("{markdown}");
    if only.is_some() {
        // BENCHMARKS.md keeps the tables of a whole run.
        step(
            "wrote target/bench/results.md and target/bench/results.json (filtered run: BENCHMARKS.md left alone)",
        );
        return Ok(());
    }
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
    let mmap_churn = out_dir.join("mmap-churn");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&mmap_churn)
            .arg(source.join("mmap_churn.c")),
    )?;
    let containers = out_dir.join("containers");
    util::run(
        Command::new("g++")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&containers)
            .arg(source.join("containers.cpp")),
    )?;
    Ok(vec![
        compiled(
            "churn, 1 thread (malloc+free pairs, 16..4096 B)",
            churn.clone(),
            &["1", "200000"],
        ),
        compiled("churn, 2 threads", churn, &["2", "100000"]),
        compiled(NO_FP_CHURN, churn_nofp, &["1", "200000"]),
        compiled(DEEP, deep, &["30", "100000"]),
        // leaktracer sees mappings at the syscall tracepoints; bcc memleak (and leaktracer
        // before issue 14) by uprobes on the C library's mmap/munmap, which miss the raw half.
        compiled(MMAP_CHURN, mmap_churn, &["50000"]),
        compiled(
            "C++ map<string, vector<int>> build and drop (per insert)",
            containers,
            &["100"],
        ),
    ])
}

/// A C or C++ workload; its configurations are set once bcc memleak is known to run or not.
fn compiled(name: &str, program: PathBuf, args: &[&str]) -> Workload {
    Workload {
        name: name.to_string(),
        kind: Kind::Compiled,
        program,
        root: None,
        args: args.iter().map(|a| a.to_string()).collect(),
        repetitions: REPETITIONS,
        interpreter_row: None,
        note: None,
        configs: Vec::new(),
    }
}

/// The Python workload under [`setup::python`]'s interpreter: native, leaktracer default,
/// tracemalloc and memray, each skipped (saying what is missing) when it cannot run.
fn python_workload() -> Workload {
    let script = workspace_root().join("xtask/bench/alloc.py");
    let python = setup::python();
    let missing = python.is_none().then(|| {
        format!(
            "no Python interpreter (pyenv's CPython 3.12 or {})",
            setup::FALLBACK_PYTHON
        )
    });
    let memray_missing = missing.clone().or_else(|| {
        let python = python.as_ref()?;
        let importable = util::succeeds(Command::new(&python.path).args(["-c", "import memray"]));
        (!importable).then(|| format!("memray (not importable by {})", python.path.display()))
    });
    match &python {
        Some(python) => step(&format!(
            "Python rows: {} (Python {})",
            python.path.display(),
            python.version
        )),
        None => step(&format!(
            "Python rows: skipped: {}",
            missing.as_deref().unwrap_or_default()
        )),
    }
    Workload {
        name: PYTHON.to_string(),
        kind: Kind::Python,
        program: python.as_ref().map(|p| p.path.clone()).unwrap_or_default(),
        root: None,
        args: vec![script.display().to_string(), "250000".into()],
        repetitions: REPETITIONS,
        interpreter_row: None,
        note: python.map(|p| {
            format!(
                "Interpreter: `{}` (Python {}).",
                p.path.display(),
                p.version
            )
        }),
        configs: vec![
            (Config::Native, missing.clone()),
            (Config::Floor, missing.clone()),
            (Config::Leaktracer, missing.clone()),
            (Config::Tracemalloc, missing),
            (Config::Memray, memray_missing),
        ],
    }
}

/// Where `memray run` writes its capture (removed after each run).
fn memray_output(out_dir: &Path) -> PathBuf {
    out_dir.join("memray.bin")
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
pub(crate) fn collect_lines(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

pub(crate) fn wait_for(
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

/// Starts a workload under `config`, which waits for a line on stdin, and returns it with its
/// output lines once it says "ready".
fn start_workload(
    workload: &Workload,
    config: Config,
    out_dir: &Path,
) -> anyhow::Result<(Child, Arc<Mutex<Vec<String>>>)> {
    if config == Config::Memray {
        // memray will not overwrite an earlier capture.
        let _ = fs::remove_file(memray_output(out_dir));
    }
    let mut target = workload
        .command(config, out_dir)
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
    let (mut target, out) = start_workload(workload, config, out_dir)?;
    let pid = target.id().to_string();
    let json = out_dir.join("run.json");
    let mut tracer: Option<(Child, Arc<Mutex<Vec<String>>>)> = match config {
        Config::Native | Config::Tracemalloc | Config::Memray => None,
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
    if let Some((mut child, err)) = tracer.take() {
        run.tracer_peak_rss_kib = peak_rss_kib(child.id());
        stop(&mut child)?;
        run.notes = err
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("leaktracer: note: "))
            .cloned()
            .collect();
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
    if config == Config::Memray {
        let _ = fs::remove_file(memray_output(out_dir));
    }
    Ok(run)
}

/// Starts `leaktracer trace --pid PID` and waits until it traces.
pub(crate) fn start_leaktracer(
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
    let (mut target, out) = start_workload(workload, Config::Leaktracer, out_dir)?;
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
    if profiles.is_empty() {
        // A filtered run without a profiled workload (`--only attach`, `--only fastapi`...).
        return String::new();
    }
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
pub(crate) fn interrupt(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}

/// Ends a tracer as Ctrl-C would; one that does not end within 10 s is killed (a Python tool
/// started with SIGINT ignored, as a background job of a script is, never sees Ctrl-C).
pub(crate) fn stop(child: &mut Child) -> anyhow::Result<()> {
    interrupt(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            step(&format!("pid {} ignored SIGINT: killed", child.id()));
            child.kill()?;
            child.wait()?;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The median of `values`, which it leaves sorted (the range is their first and last).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn render_markdown(results: &[Row]) -> String {
    let mut out = String::new();
    let mut current = "";
    let mut native = 0.0;
    // The rows of the table of every interpreter are rendered by bench_python.
    for row in results
        .iter()
        .filter(|r| r.workload.interpreter_row.is_none())
    {
        let workload = row.workload;
        if workload.name != current {
            if !current.is_empty() {
                out.push_str(&ratios(results, current));
            }
            current = &workload.name;
            out.push_str(&format!("\n### {current}\n\n"));
            if let Some(note) = &workload.note {
                out.push_str(&format!("{note}\n\n"));
            }
            out.push_str(
                "| configuration | ns/op (median) | range | slowdown vs native | tracer CPU while running | tracer peak RSS | dropped |\n|---|---|---|---|---|---|---|\n",
            );
        }
        let config = row.config;
        if let Some(why) = &row.skipped {
            out.push_str(&format!(
                "| {} | skipped: {why} | - | - | - | - | - |\n",
                config.name()
            ));
            continue;
        }
        let mut ns: Vec<f64> = row.runs.iter().map(|r| r.ns_per_op).collect();
        let med = median(&mut ns);
        if config == Config::Native {
            native = med;
        }
        let mut cpu: Vec<f64> = row.runs.iter().map(|r| r.tracer_cpu_percent).collect();
        let mut rss: Vec<f64> = row
            .runs
            .iter()
            .map(|r| r.tracer_peak_rss_kib as f64)
            .collect();
        let dropped = row.runs.iter().filter_map(|r| r.dropped).max();
        let tracer_column = |value: String| {
            if config == Config::Native {
                "-".to_string()
            } else if config.in_process() {
                "in process".to_string()
            } else {
                value
            }
        };
        out.push_str(&format!(
            "| {} | {:.1} | {:.1}–{:.1} | {:.1}× | {} | {} | {} |\n",
            config.name(),
            med,
            ns.first().unwrap_or(&0.0),
            ns.last().unwrap_or(&0.0),
            if native > 0.0 { med / native } else { 1.0 },
            tracer_column(format!("{:.1}% of a core", median(&mut cpu))),
            tracer_column(format!("{:.0} MiB", median(&mut rss) / 1024.0)),
            dropped.map_or("-".to_string(), |d| d.to_string()),
        ));
    }
    if !current.is_empty() {
        out.push_str(&ratios(results, current));
    }
    out
}

/// leaktracer over its floor, and against memleak, tracemalloc and memray, for one workload
/// (what it ran under).
fn ratios(results: &[Row], workload: &str) -> String {
    let median_of = |config: Config| {
        results
            .iter()
            .find(|r| r.workload.name == workload && r.config == config)
            .and_then(Row::median_ns)
    };
    let Some(ours) = median_of(Config::Leaktracer) else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(floor) = median_of(Config::Floor) {
        parts.push(format!("leaktracer / its floor: {:.2}×", ours / floor));
        if let Some(fp) = median_of(Config::FramePointers) {
            parts.push(format!("--unwind fp / floor: {:.2}×", fp / floor));
        }
        if let Some(sampled) = median_of(Config::Sampled) {
            parts.push(format!("sampled / floor: {:.2}×", sampled / floor));
        }
        if let Some(usual) = median_of(Config::UsualFloor) {
            parts.push(format!(
                "usual-placement floor / our floor: {:.2}×",
                usual / floor
            ));
        }
    }
    if let Some(memleak) = median_of(Config::Memleak) {
        parts.push(format!("leaktracer / bcc memleak: {:.2}×", ours / memleak));
    }
    if let Some(tracemalloc) = median_of(Config::Tracemalloc) {
        // Both slowdowns are over the same native run, so their ratio is that of the times.
        parts.push(format!(
            "leaktracer's slowdown / tracemalloc's: {:.2}× (issue 12 aims for at most 2×)",
            ours / tracemalloc
        ));
        if let Some(floor) = median_of(Config::Floor) {
            // What the probes' traps alone cost, against tracemalloc's whole work.
            parts.push(format!(
                "the floor's slowdown / tracemalloc's: {:.2}×",
                floor / tracemalloc
            ));
        }
    }
    if let Some(memray) = median_of(Config::Memray) {
        parts.push(format!("leaktracer / memray: {:.2}×", ours / memray));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!("\n{}\n", parts.join("; "))
}

fn render_json(results: &[Row]) -> String {
    let entries: Vec<String> = results
        .iter()
        .map(|row| {
            if let Some(why) = &row.skipped {
                return format!(
                    "  {{\"workload\": {:?}, \"config\": {:?}, \"skipped\": {:?}}}",
                    row.workload.name,
                    row.config.name(),
                    why
                );
            }
            let ns: Vec<String> = row.runs.iter().map(|r| format!("{:.2}", r.ns_per_op)).collect();
            let cpu: Vec<String> = row
                .runs
                .iter()
                .map(|r| format!("{:.2}", r.tracer_cpu_percent))
                .collect();
            let rss: Vec<String> = row.runs.iter().map(|r| r.tracer_peak_rss_kib.to_string()).collect();
            format!(
                "  {{\"workload\": {:?}, \"config\": {:?}, \"ns_per_op\": [{}], \"tracer_cpu_percent\": [{}], \"tracer_peak_rss_kib\": [{}]}}",
                row.workload.name,
                row.config.name(),
                ns.join(", "),
                cpu.join(", "),
                rss.join(", ")
            )
        })
        .collect();
    format!("[\n{}\n]\n", entries.join(",\n"))
}
