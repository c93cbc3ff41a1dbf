//! End-to-end: issue #24's careless and hostile targets. A comm or a file path holding escape
//! sequences never reaches the terminal raw; a command that daemonizes is followed with
//! --follow-children, and named when left behind without it; a child that exits keeps what it
//! was; a crashed command gets no time-to-limit; maps beyond a share of the machine's memory
//! are refused before anything starts; a process root cannot read names the real cause.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use leaktracer_e2e::*;
use serde_json::Value;

/// The comm a hostile target sets: clears the screen and retitles the terminal.
const HOSTILE_COMM: &str = "\x1b[2J\x1b]0;X\x07";
/// The same, as leaktracer prints it.
const HOSTILE_COMM_ESCAPED: &str = "\\x1b[2J\\x1b]0;X\\x07";

const WAIT: Duration = Duration::from_secs(30);

/// Makes the file `name` in `dir` (a workload waits for it).
fn touch(dir: &Path, name: &str) {
    fs::write(dir.join(name), "").unwrap();
}

/// The pid a workload wrote into `dir/name`.
fn pid_in(dir: &Path, name: &str) -> u32 {
    let path = dir.join(name);
    wait_for_file(&path, WAIT);
    fs::read_to_string(&path)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts that no control character but newlines reached `stream` (a terminal would obey an
/// ESC or a BEL).
fn assert_no_control_characters(name: &str, stream: &str) {
    let raw: Vec<(usize, &str)> = stream
        .lines()
        .enumerate()
        .filter(|(_, line)| line.chars().any(char::is_control))
        .collect();
    assert!(raw.is_empty(), "{name} has raw control characters: {raw:?}");
}

/// A process killed when the test ends, pass or fail (a daemon is no child of the test).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a plain pid and signal number.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// A target whose comm is an escape sequence, traced by pid into an output whose name holds a
/// newline: neither reaches stderr or stdout raw, each line stays whole, and the JSON keeps
/// the comm as it is.
#[test]
fn an_escape_in_a_comm_never_reaches_the_terminal_raw() {
    require_root();
    let dir = scratch_dir("hostile_comm");
    let json = dir.join("evil\nname.json");
    let workload = Workload(
        Command::new(workload("lifecycles"))
            .args(["named", HOSTILE_COMM])
            .arg(&dir)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = pid_in(&dir, "ready");
    assert_eq!(workload.pid(), pid);
    let mut tracer = Tracer::start([
        "trace".as_ref(),
        "--pid".as_ref(),
        pid.to_string().as_ref(),
        "-v".as_ref(),
        "--interval".as_ref(),
        "300ms".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
    ]);
    tracer.wait_traced(pid);
    touch(&dir, "traced");
    wait_for_file(&dir.join("done"), WAIT);
    // A few status lines.
    std::thread::sleep(Duration::from_secs(1));
    touch(&dir, "stop");
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    assert_no_control_characters("stderr", &done.stderr);
    assert_no_control_characters("stdout", &done.stdout);
    assert!(
        done.stderr
            .lines()
            .any(|l| l.starts_with("leaktracer: tracing ")
                && l.contains(&format!("pid {pid} ({HOSTILE_COMM_ESCAPED})"))),
        "{}",
        done.stderr
    );
    assert!(
        done.stdout.starts_with(&format!(
            "leaktracer: traced pid {pid} ({HOSTILE_COMM_ESCAPED}) for "
        )),
        "{}",
        done.stdout
    );
    // The output's name, on one line.
    let wrote = format!("leaktracer: wrote {}/evil\\x0aname.json", dir.display());
    assert!(
        done.stderr.lines().any(|l| l == wrote),
        "no line {wrote:?} in {}",
        done.stderr
    );
    let report = read_json(&json);
    assert_eq!(process_entry(&report, pid)["comm"], HOSTILE_COMM);
    assert_sites(&report, &[("named_leak", 10 * 100, 10)]);
}

/// A Python file whose path holds an escape sequence: its frames in the text report and the
/// status line show it escaped.
#[test]
fn an_escape_in_a_python_file_path_never_reaches_the_terminal_raw() {
    require_root();
    let Some(python) = python_interpreters().into_iter().next() else {
        panic!("no CPython 3.11-3.13 found (see tests/src/python.rs)");
    };
    let dir = scratch_dir("hostile_python_path").join("py\x1b[31mdir");
    fs::create_dir_all(&dir).unwrap();
    let script = dir.join("leak.py");
    fs::write(
        &script,
        "import time\n\
         cache = []\n\
         def remember(key):\n\
         \x20   cache.append(bytearray(3000))\n\
         for key in range(40):\n\
         \x20   remember(key)\n\
         \x20   time.sleep(0.05)\n",
    )
    .unwrap();
    let json = dir.join("leaks.json");
    let done = run_tracer([
        "trace".as_ref(),
        "--interval".as_ref(),
        "300ms".as_ref(),
        "--top".as_ref(),
        "100000".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        python.as_os_str(),
        script.as_os_str(),
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_no_control_characters("stderr", &done.stderr);
    assert_no_control_characters("stdout", &done.stdout);
    let shown = "py\\x1b[31mdir/leak.py:4 [python]";
    assert!(
        done.stdout.lines().any(|l| l.contains(shown)),
        "no frame at {shown:?} in {}",
        done.stdout
    );
    // The JSON keeps the path as it is.
    let report = read_json(&json);
    let raw = script.to_str().unwrap();
    assert!(
        report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["frames"].as_array().unwrap())
            .any(|f| f["file"] == raw),
        "no frame in {raw:?}"
    );
}

/// `trace --follow-children -- daemon`: the command double-forks and exits at once; the trace
/// follows the daemon it left until the daemon exits, with its leaks to the byte.
#[test]
fn a_daemonizing_command_is_followed_with_follow_children() {
    require_root();
    let dir = scratch_dir("hostile_daemon_followed");
    let json = dir.join("leaks.json");
    let program = workload("lifecycles");
    let mut tracer = Tracer::start([
        "trace".as_ref(),
        "-q".as_ref(),
        "--follow-children".as_ref(),
        "-d".as_ref(),
        "60s".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        program.as_os_str(),
        "daemon".as_ref(),
        dir.as_os_str(),
    ]);
    let daemon = pid_in(&dir, "daemon-pid");
    let _cleanup = KillOnDrop(daemon);
    tracer.wait_traced(daemon);
    touch(&dir, "traced");
    wait_for_file(&dir.join("done"), WAIT);
    touch(&dir, "stop");
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    let report = read_json(&json);
    // It ended when the daemon did, not when the command did.
    assert_eq!(report["end_reason"], "target exited", "{}", done.stderr);
    let entry = process_entry(&report, daemon);
    assert_eq!(entry["comm"], "lifecycles");
    assert_eq!(entry["exit"]["code"], 0, "{entry}");
    assert!(
        entry["allocator"].as_str().unwrap().contains("libc"),
        "{entry}"
    );
    assert_sites(
        &process_stacks(&report, daemon),
        &[("daemon_leak", 25 * 300, 25)],
    );
}

/// Without --follow-children the command's exit ends the trace, and the daemon it left running
/// is named, not traced.
#[test]
fn a_daemon_left_behind_without_follow_children_is_named() {
    require_root();
    let dir = scratch_dir("hostile_daemon_left");
    let json = dir.join("leaks.json");
    let program = workload("lifecycles");
    let done = run_tracer([
        "trace".as_ref(),
        "-q".as_ref(),
        "-d".as_ref(),
        "60s".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        program.as_os_str(),
        "daemon".as_ref(),
        dir.as_os_str(),
    ]);
    let daemon = pid_in(&dir, "daemon-pid");
    let _cleanup = KillOnDrop(daemon);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(is_alive(daemon), "the daemon is left running");
    let note = format!(
        "leaktracer: note: the command exited and left 1 process running, not traced: pid {daemon} (lifecycles); with --follow-children the trace follows them (a daemon too) until they exit"
    );
    assert!(
        done.stderr.lines().any(|l| l == note),
        "no line {note:?} in {}",
        done.stderr
    );
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "target exited");
    assert_eq!(report["processes"].as_array().unwrap().len(), 1);
}

/// Unmounts a mount point when the test ends, pass or fail (a workload's FUSE file system).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: umount2 with a valid path; failing (nothing mounted) is fine.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A followed child whose exit takes 3 s after its memory is released (still running, with no
/// executable, no maps and no command line, as during a large heap's teardown): it keeps its
/// command, comm and allocator in the report, and its probes are announced once.
#[test]
fn a_child_that_exits_keeps_what_it_was() {
    require_root();
    let dir = scratch_dir("hostile_exiting");
    let _unmount = Unmount(dir.join("mnt"));
    let json = dir.join("leaks.json");
    let program = workload("lifecycles");
    let mut tracer = Tracer::start([
        "trace".as_ref(),
        "-q".as_ref(),
        "-v".as_ref(),
        "--follow-children".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--".as_ref(),
        program.as_os_str(),
        "exiting".as_ref(),
        dir.as_os_str(),
    ]);
    let child = pid_in(&dir, "child-pid");
    tracer.wait_traced(child);
    touch(&dir, "traced");
    let done = tracer.finish();
    assert!(done.status.success(), "{}", done.stderr);
    let report = read_json(&json);
    let parent = report["processes"][0].clone();
    let entry = process_entry(&report, child);
    assert_eq!(entry["exit"]["code"], 0, "{entry}");
    assert_eq!(entry["comm"], "lifecycles", "{entry}");
    assert_eq!(
        entry["command"],
        serde_json::json!([program.to_str().unwrap(), "exiting", dir.to_str().unwrap()]),
        "{entry}"
    );
    // The parent's libc, as mapped (the launched command's path is the loader's prediction).
    assert_eq!(
        entry["allocator_inode"], parent["allocator_inode"],
        "{entry}"
    );
    assert!(
        entry["allocator"].as_str().unwrap().ends_with("/libc.so.6"),
        "{entry}"
    );
    assert_sites(
        &process_stacks(&report, child),
        &[("child_leak", 12 * 200, 12)],
    );
    // Each of its probes said once, when it was attached.
    let placements: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("leaktracer: pid {child}: ")) && l.contains(" at "))
        .collect();
    assert!(!placements.is_empty(), "{}", done.stderr);
    let mut unique = placements.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(placements.len(), unique.len(), "{}", done.stderr);
}

/// A command that leaks steadily, then dies of SIGSEGV: a dead process reaches no limit, so
/// no time to it is predicted; what it held at death is reported to the byte.
#[test]
fn a_crashed_command_gets_no_time_to_limit() {
    require_root();
    let dir = scratch_dir("hostile_crash");
    let json = dir.join("leaks.json");
    let program = workload("lifecycles");
    let (done, report) = trace_launched(
        &json,
        &["--interval", "300ms"],
        &[program.to_str().unwrap(), "crash", "60"],
    );
    assert_eq!(
        report["target_exit"]["signal"], "SIGSEGV",
        "{}",
        done.stderr
    );
    assert_sites(&report, &[("leak_until_crash", 60 << 16, 60)]);
    let verdict = &report["verdict"];
    // Growth was judged (enough samples), and the limit is still named.
    assert!(
        verdict["growth_bytes_per_sec"].as_f64().unwrap() > 0.0,
        "{verdict}"
    );
    assert!(
        verdict["memory_limit_bytes"].as_u64().is_some(),
        "{verdict}"
    );
    assert_eq!(verdict["seconds_to_limit"], Value::Null, "{verdict}");
    assert!(
        !verdict["summary"]
            .as_str()
            .unwrap()
            .contains("reached in about"),
        "{verdict}"
    );
    assert!(!done.stdout.contains("reached in about"), "{}", done.stdout);
}

/// Map sizes whose maps, full, would take more than a quarter of the machine's memory are
/// refused before anything is launched, naming what they would take and the flags; -v says
/// what the maps take for every trace.
#[test]
fn maps_beyond_a_quarter_of_memory_are_refused_before_anything_starts() {
    require_root();
    let dir = scratch_dir("hostile_large_maps");
    let launched = dir.join("launched");
    let touch_it = ["--", "touch", launched.to_str().unwrap()];
    for (flags, naming) in [
        (["--max-stacks", "20000000"], "STACKS"),
        (["--max-allocations", "2000000000"], "ALLOCS"),
    ] {
        let mut args = vec!["trace", "-q"];
        args.extend(flags);
        args.extend(touch_it);
        let done = run_tracer(&args);
        assert!(!done.status.success(), "{flags:?}: {}", done.stderr);
        let lines: Vec<&str> = done.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{flags:?}: {}", done.stderr);
        let line = lines[0];
        for needle in [
            "leaktracer: the kernel maps would take up to ",
            "more than a quarter of this machine's ",
            &format!("{naming} "),
            &format!("({} {})", flags[0], flags[1]),
            &format!("; lower {}, or pass --allow-large-maps", flags[0]),
        ] {
            assert!(line.contains(needle), "{needle:?} not in {line}");
        }
        assert!(!launched.exists(), "{flags:?}: the command was launched");
    }
    let done = run_tracer(["trace", "-q", "-v", "-d", "1s", "--", "true"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stderr
            .lines()
            .any(|l| l.starts_with("leaktracer: kernel maps: ")
                && l.contains(" as soon as they are created, up to ")
                && l.contains("(--max-stacks 65536)")),
        "{}",
        done.stderr
    );
}

/// A process whose maps root is refused (pid 1 here, a sandbox's init): leaktracer has
/// CAP_SYS_PTRACE, so the error does not ask for it but names the policy; without it, it
/// names the capability as missing.
#[test]
fn a_process_that_cannot_be_read_names_the_real_cause() {
    require_root();
    // Without CAP_SYS_PTRACE (everything else kept), another user's process.
    let sleeper = Workload(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sleep",
                "60",
            ])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let pid = sleeper.pid().to_string();
    let caps = "-sys_ptrace";
    let without = Command::new("setpriv")
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--bounding-set={caps}"))
        .arg(leaktracer())
        .args(["trace", "-q", "-d", "1s", "--pid", &pid])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(!without.status.success(), "{stderr}");
    // Its maps, or the objects they name (map_files), whichever the kernel refuses first.
    assert!(
        stderr.contains(&format!("pid {pid}"))
            && stderr.trim_end().ends_with(
                "(leaktracer lacks CAP_SYS_PTRACE, which reading another user's process takes: run it as root with sudo)"
            ),
        "{stderr}"
    );
    // With it: only a process that a policy keeps from root shows it (pid 1 of this sandbox).
    match fs::read_to_string("/proc/1/maps") {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let done = run_tracer(["trace", "-q", "-d", "1s", "--pid", "1"]);
            assert!(!done.status.success(), "{}", done.stderr);
            assert!(
                done.stderr.contains(
                    "cannot read the memory maps of pid 1: permission denied (leaktracer has CAP_SYS_PTRACE, so no capability is missing: a security policy keeps this process from it"
                ),
                "{}",
                done.stderr
            );
            assert!(!done.stderr.contains("run it as root"), "{}", done.stderr);
        }
        _ => eprintln!("skipped the CAP_SYS_PTRACE half: pid 1's maps are readable here"),
    }
}
