//! End-to-end: the hardening of issue #15. Outputs are checked before any work and never
//! written through devices, FIFOs, directories or links; no input panics; signals end a trace
//! with its report and never leave a launched command behind; values out of range are refused
//! naming their flag; failures are named by their real cause.

use std::{
    fs,
    io::Read,
    os::unix::fs::{FileTypeExt, MetadataExt, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use leaktracer_e2e::*;

/// Runs `leaktracer ARGS` in `cwd`, killed (and the test failed) after `timeout`.
fn run_bounded<S: AsRef<std::ffi::OsStr>>(
    cwd: Option<&Path>,
    wrapper: &[&str],
    args: &[S],
    timeout: Duration,
) -> Finished {
    let mut cmd = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut cmd = Command::new(program);
            cmd.args(wrapper_args).arg(leaktracer());
            cmd
        }
        None => Command::new(leaktracer()),
    };
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("leaktracer starts");
    let pipe = |mut reader: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = reader.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().unwrap()));
    let stderr = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "leaktracer {:?} did not finish in {timeout:?}: {}",
                args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `run_bounded` in the current directory, without a wrapper.
fn lt<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> Finished {
    run_bounded(None, &[], args, timeout)
}

/// A process to trace by pid: `sleep 60`, killed when the test ends.
fn sleeper() -> Workload {
    Workload(Command::new("sleep").arg("60").spawn().unwrap())
}

/// Asserts a run was refused in one line of stderr that contains every one of `needles`, and
/// that it never started tracing.
fn assert_refused(run: &Finished, needles: &[&str]) {
    assert!(
        !run.status.success(),
        "accepted ({}): {}",
        run.status,
        run.stderr
    );
    assert_ne!(run.status.code(), Some(101), "panicked: {}", run.stderr);
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "one line: {}",
        run.stderr
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} not in: {}",
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("tracing "),
        "the trace started: {}",
        run.stderr
    );
}

/// A recording written by a real trace (`leaky sites --count 7`), made once per test run and
/// copied into each test's directory as `name`.
fn recording(dir: &Path, name: &str) -> PathBuf {
    static RECORDING: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = RECORDING.get_or_init(|| {
        let json = scratch_dir("hardening_recording").join("leaks.json");
        let leaky = workload("leaky");
        let run = lt(
            &[
                "trace".as_ref(),
                "-q".as_ref(),
                "--json".as_ref(),
                json.as_os_str(),
                "--".as_ref(),
                leaky.as_os_str(),
                "sites".as_ref(),
                "--count".as_ref(),
                "7".as_ref(),
            ],
            Duration::from_secs(60),
        );
        assert!(run.status.success(), "{}", run.stderr);
        fs::read(&json).unwrap()
    });
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn mknod_char(path: &Path, major: u32, minor: u32) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let made = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(made, 0, "mknod {}", path.display());
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

/// A device, a FIFO, a directory and a symbolic link (to a file holding "precious") in `dir`,
/// and a check that each is still exactly what it was.
struct SpecialFiles {
    device: PathBuf,
    fifo: PathBuf,
    directory: PathBuf,
    link: PathBuf,
    victim: PathBuf,
}

impl SpecialFiles {
    fn create(dir: &Path) -> Self {
        // A copy of /dev/null (char 1:3) in the scratch directory: a writer that replaced a
        // device with a file (as the old rename did) must not break the machine's /dev/null.
        let device = dir.join("null-device");
        mknod_char(&device, 1, 3);
        let fifo = dir.join("fifo");
        mkfifo(&fifo);
        let directory = dir.join("directory");
        fs::create_dir(&directory).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, "precious").unwrap();
        let link = dir.join("link");
        symlink(&victim, &link).unwrap();
        Self {
            device,
            fifo,
            directory,
            link,
            victim,
        }
    }

    fn all(&self) -> [&Path; 4] {
        [&self.device, &self.fifo, &self.directory, &self.link]
    }

    fn assert_untouched(&self, after: &str) {
        let device = fs::symlink_metadata(&self.device).unwrap();
        assert!(
            device.file_type().is_char_device() && device.rdev() == libc::makedev(1, 3),
            "{after}: the device is no longer a device"
        );
        assert!(
            fs::symlink_metadata(&self.fifo)
                .unwrap()
                .file_type()
                .is_fifo(),
            "{after}: the FIFO is no longer a FIFO"
        );
        assert!(
            fs::symlink_metadata(&self.directory)
                .unwrap()
                .file_type()
                .is_dir(),
            "{after}: the directory is gone"
        );
        assert_eq!(
            fs::read_dir(&self.directory).unwrap().count(),
            0,
            "{after}: something was written into the directory"
        );
        assert!(
            fs::symlink_metadata(&self.link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{after}: the link was replaced"
        );
        assert_eq!(fs::read_link(&self.link).unwrap(), self.victim);
        assert_eq!(
            fs::read_to_string(&self.victim).unwrap(),
            "precious",
            "{after}: written through the link"
        );
        let dir = self.victim.parent().unwrap();
        let extra: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                ![
                    "null-device",
                    "fifo",
                    "directory",
                    "victim",
                    "link",
                    "r.json",
                ]
                .contains(&n.as_str())
            })
            .collect();
        assert!(extra.is_empty(), "{after}: files left behind: {extra:?}");
    }
}

fn what(path: &Path) -> &'static str {
    let kind = fs::symlink_metadata(path).unwrap().file_type();
    if kind.is_symlink() {
        "is a symbolic link"
    } else if kind.is_char_device() {
        "a device, not a regular file"
    } else if kind.is_fifo() {
        "a FIFO, not a regular file"
    } else {
        "a directory, not a regular file"
    }
}

#[test]
fn devices_fifos_directories_and_links_are_refused_and_left_as_they_were() {
    require_root();
    let dir = scratch_dir("hardening_special");
    let special = SpecialFiles::create(&dir);
    let target = sleeper();
    let pid = target.pid().to_string();
    for flag in ["--json", "--folded", "--flamegraph", "--html", "--pprof"] {
        for path in special.all() {
            let path_text = path.to_str().unwrap();
            let run = lt(
                &["trace", "--pid", &pid, "-d", "1s", flag, path_text],
                Duration::from_secs(10),
            );
            assert_refused(&run, &[&format!("{flag} {path_text}"), what(path)]);
            special.assert_untouched(&format!("trace {flag} {path_text}"));
        }
    }
    // `report` and `diff` check their outputs the same way, before reading anything.
    let rec = recording(&dir, "r.json");
    let rec_text = rec.to_str().unwrap();
    for flag in ["--folded", "--flamegraph", "--html", "--pprof"] {
        for path in special.all() {
            let path_text = path.to_str().unwrap();
            let run = lt(
                &["report", rec_text, flag, path_text],
                Duration::from_secs(10),
            );
            assert_refused(&run, &[&format!("{flag} {path_text}"), what(path)]);
            special.assert_untouched(&format!("report {flag} {path_text}"));
        }
    }
    for path in special.all() {
        let path_text = path.to_str().unwrap();
        let run = lt(
            &["diff", rec_text, rec_text, "--flamegraph", path_text],
            Duration::from_secs(10),
        );
        assert_refused(&run, &[&format!("--flamegraph {path_text}"), what(path)]);
        special.assert_untouched(&format!("diff --flamegraph {path_text}"));
    }
}

/// A read-only tmpfs mounted for one test, unmounted after it.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn mount(dir: &Path) -> Result<Self, String> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if out.status.success() {
            Ok(Self(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn missing_directory_and_read_only_file_system_fail_before_the_trace() {
    require_root();
    let dir = scratch_dir("hardening_unwritable");
    let target = sleeper();
    let pid = target.pid().to_string();
    // A trace of 10 s that cannot write its file must fail at once, not after 10 s.
    let missing = dir.join("missing/leaks.json");
    let started = Instant::now();
    let run = lt(
        &[
            "trace",
            "--pid",
            &pid,
            "-d",
            "10s",
            "--json",
            missing.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_refused(
        &run,
        &[
            &format!("--json {}", missing.display()),
            &format!("cannot write in {}", dir.join("missing").display()),
            "No such file or directory",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not fail fast"
    );
    assert!(!dir.join("missing").exists());

    let ro_dir = dir.join("ro");
    match ReadOnlyMount::mount(&ro_dir) {
        Err(why) => eprintln!("skipped the read-only case: cannot mount a read-only tmpfs: {why}"),
        Ok(_mount) => {
            let svg = ro_dir.join("leaks.svg");
            let started = Instant::now();
            let run = lt(
                &[
                    "trace",
                    "--pid",
                    &pid,
                    "-d",
                    "10s",
                    "--flamegraph",
                    svg.to_str().unwrap(),
                ],
                Duration::from_secs(20),
            );
            assert_refused(
                &run,
                &[
                    &format!("--flamegraph {}", svg.display()),
                    "Read-only file system",
                ],
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "did not fail fast"
            );
        }
    }
}

#[test]
fn two_outputs_naming_one_file_are_refused() {
    require_root();
    let dir = scratch_dir("hardening_overlap");
    let target = sleeper();
    let pid = target.pid().to_string();
    let x = dir.join("x");
    let x_text = x.to_str().unwrap();
    let dotted = format!("{}/./x", dir.display());
    for (second, other) in [("--flamegraph", x_text), ("--html", dotted.as_str())] {
        let run = lt(
            &[
                "trace", "--pid", &pid, "-d", "1s", "--json", x_text, second, other,
            ],
            Duration::from_secs(10),
        );
        assert_refused(&run, &[&format!("--json and {second} both name {other}")]);
        assert!(!x.exists(), "{second} {other}: written anyway");
    }
    // A hard link is the same file under another name.
    fs::write(&x, "earlier").unwrap();
    let hard = dir.join("hard");
    fs::hard_link(&x, &hard).unwrap();
    let run = lt(
        &[
            "trace",
            "--pid",
            &pid,
            "-d",
            "1s",
            "--json",
            x_text,
            "--pprof",
            hard.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_refused(
        &run,
        &[&format!("--json and --pprof both name {}", hard.display())],
    );
    assert_eq!(fs::read_to_string(&x).unwrap(), "earlier");
    assert_eq!(
        fs::metadata(&x).unwrap().ino(),
        fs::metadata(&hard).unwrap().ino()
    );
}

#[test]
fn report_and_diff_never_overwrite_the_recording_they_read() {
    require_root();
    let dir = scratch_dir("hardening_input");
    let rec = recording(&dir, "r.json");
    let other = recording(&dir, "other.json");
    let original = fs::read(&rec).unwrap();
    let hard = dir.join("hard.json");
    fs::hard_link(&rec, &hard).unwrap();
    let rec_text = rec.to_str().unwrap();
    for (args, named) in [
        (
            vec!["report", rec_text, "--flamegraph", rec_text],
            rec.clone(),
        ),
        (
            vec!["report", "r.json", "--html", "./r.json"],
            PathBuf::from("./r.json"),
        ),
        (
            vec!["report", rec_text, "--folded", hard.to_str().unwrap()],
            hard.clone(),
        ),
        (
            vec![
                "diff",
                other.to_str().unwrap(),
                rec_text,
                "--flamegraph",
                rec_text,
            ],
            rec.clone(),
        ),
    ] {
        let run = run_bounded(Some(&dir), &[], &args, Duration::from_secs(10));
        let flag = args[args.len() - 2];
        assert_refused(
            &run,
            &[&format!(
                "{flag} {} is the recording being read",
                named.display()
            )],
        );
        assert_eq!(
            fs::read(&rec).unwrap(),
            original,
            "{args:?} changed the recording"
        );
    }
}

#[test]
fn dash_sends_one_output_to_stdout_and_the_text_report_to_stderr() {
    require_root();
    let dir = scratch_dir("hardening_stdout");
    let target = sleeper();
    let run = run_bounded(
        Some(&dir),
        &[],
        &[
            "trace",
            "-q",
            "--pid",
            &target.pid().to_string(),
            "-d",
            "1s",
            "--json",
            "-",
        ],
        Duration::from_secs(20),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON report ({e}): {}", run.stdout));
    assert_eq!(report["end_reason"], "duration");
    assert_eq!(report["target"]["pids"], serde_json::json!([target.pid()]));
    assert!(
        run.stderr.contains(&format!(
            "leaktracer: traced pid {} (sleep) for ",
            target.pid()
        )) && run.stderr.contains("\noutstanding: "),
        "the text report goes to stderr: {}",
        run.stderr
    );
    assert!(!dir.join("-").exists(), "a file named `-` was written");

    // `report` the same way: its folded stacks on stdout are those it writes to a file.
    let rec = recording(&dir, "r.json");
    let folded = dir.join("r.folded");
    let to_file = run_bounded(
        Some(&dir),
        &[],
        &["report", "r.json", "--folded", "r.folded"],
        Duration::from_secs(10),
    );
    assert!(to_file.status.success(), "{}", to_file.stderr);
    let to_stdout = run_bounded(
        Some(&dir),
        &[],
        &["report", rec.to_str().unwrap(), "--folded", "-"],
        Duration::from_secs(10),
    );
    assert!(to_stdout.status.success(), "{}", to_stdout.stderr);
    assert_eq!(to_stdout.stdout, fs::read_to_string(&folded).unwrap());
    assert!(
        to_stdout.stdout.contains(";leak_malloc 896\n"),
        "{}",
        to_stdout.stdout
    );
    assert_eq!(
        to_stdout.stderr, to_file.stdout,
        "the text report moves to stderr, unchanged"
    );
    assert!(!dir.join("-").exists(), "a file named `-` was written");
}

/// Starts `leaky sites --hold` under a tracer writing `outputs`, and waits until its leaks are
/// made (the sites are then exactly those of `leaky sites`).
fn trace_holding_leaky(dir: &Path, outputs: &[(&str, &Path)]) -> Tracer {
    let ready = dir.join("ready");
    let leaky = workload("leaky");
    let mut args: Vec<&std::ffi::OsStr> = vec!["trace".as_ref(), "-q".as_ref()];
    for (flag, path) in outputs {
        args.push(flag.as_ref());
        args.push(path.as_os_str());
    }
    args.extend([
        "--".as_ref(),
        leaky.as_os_str(),
        "sites".as_ref(),
        "--hold".as_ref(),
        "--ready".as_ref(),
        ready.as_os_str(),
    ]);
    let tracer = Tracer::start(args);
    wait_for_file(&ready, Duration::from_secs(30));
    tracer
}

#[test]
fn an_output_failing_at_the_end_does_not_stop_the_others() {
    require_root();
    let dir = scratch_dir("hardening_partial");
    let json = dir.join("leaks.json");
    let gone = dir.join("gone");
    fs::create_dir(&gone).unwrap();
    let folded = gone.join("leaks.folded");
    let svg = dir.join("leaks.svg");
    let tracer = trace_holding_leaky(
        &dir,
        &[
            ("--json", &json),
            ("--folded", &folded),
            ("--flamegraph", &svg),
        ],
    );
    // The directory was there when the trace started; it is gone when the trace ends.
    fs::remove_dir(&gone).unwrap();
    tracer.interrupt();
    let run = tracer.finish();
    assert!(
        !run.status.success(),
        "a lost output is a failure: {}",
        run.stderr
    );
    assert_ne!(run.status.code(), Some(101), "{}", run.stderr);
    let error = run
        .stderr
        .lines()
        .find(|l| l.contains("--folded"))
        .unwrap_or_else(|| panic!("the error names --folded: {}", run.stderr));
    assert!(
        error.contains(&format!("--folded {}", folded.display()))
            && error.contains("No such file or directory"),
        "{error}"
    );
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "interrupted");
    assert_sites(&report, &[("leak_malloc", 100 * 128, 100)]);
    assert!(fs::read_to_string(&svg).unwrap().contains("leak_malloc"));
    assert!(
        run.stdout.contains("\noutstanding: ") && run.stdout.contains("leak_malloc at "),
        "the text report is still printed: {}",
        run.stdout
    );
}

#[test]
fn temporary_files_are_never_written_through_a_planted_link() {
    require_root();
    let dir = scratch_dir("hardening_tmp_link");
    let json = dir.join("leaks.json");
    let svg = dir.join("leaks.svg");
    let victim = dir.join("victim");
    fs::write(&victim, "precious").unwrap();
    let tracer = trace_holding_leaky(&dir, &[("--json", &json), ("--flamegraph", &svg)]);
    // Where the old writer put its temporary files: predictable, and opened through links.
    let planted: Vec<PathBuf> = ["leaks.json", "leaks.svg"]
        .iter()
        .map(|name| dir.join(format!(".{name}.tmp-{}", tracer.pid())))
        .collect();
    for link in &planted {
        symlink(&victim, link).unwrap();
    }
    tracer.interrupt();
    let run = tracer.finish();
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    for link in &planted {
        assert_eq!(fs::read_link(link).unwrap(), victim, "{}", link.display());
    }
    assert_sites(&read_json(&json), &[("leak_malloc", 100 * 128, 100)]);
    assert!(fs::read_to_string(&svg).unwrap().contains("leak_malloc"));
    // Nothing else is left beside the outputs: the random temporaries were renamed away.
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = vec![
        "leaks.json".to_string(),
        "leaks.svg".to_string(),
        "ready".to_string(),
        "victim".to_string(),
    ];
    expected.extend(
        planted
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned()),
    );
    expected.sort();
    assert_eq!(names, expected);
}

/// Replacing an output keeps its permissions and owner: a user's 0600 file stays theirs and
/// private, not root's and readable by all.
#[test]
fn a_replaced_output_keeps_its_mode_and_owner() {
    require_root();
    let dir = scratch_dir("hardening_keep_mode");
    let rec = recording(&dir, "base.json");
    let html = dir.join("private.html");
    fs::write(&html, "old").unwrap();
    fs::set_permissions(&html, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let nobody = 65534;
    std::os::unix::fs::chown(&html, Some(nobody), Some(nobody)).unwrap();
    let run = lt(
        &[
            "report",
            rec.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let meta = fs::metadata(&html).unwrap();
    assert!(fs::read_to_string(&html).unwrap().contains("leak_malloc"));
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (nobody, nobody));
}

/// Legal file names of up to 255 bytes are written (the temporary file beside one keeps
/// within NAME_MAX); a file of the kernel's (`/proc/sys/...`, which stat calls regular) is
/// refused as not a regular file, not as missing.
#[test]
fn long_names_are_written_and_kernel_files_refused_as_such() {
    require_root();
    let dir = scratch_dir("hardening_long_names");
    let rec = recording(&dir, "base.json");
    for length in [245, 250, 255] {
        let name = "n".repeat(length - ".html".len()) + ".html";
        let run = run_bounded(
            Some(&dir),
            &[],
            &["report", "base.json", "--html", &name],
            Duration::from_secs(20),
        );
        assert!(run.status.success(), "{length}: {}", run.stderr);
        assert!(
            fs::read_to_string(dir.join(&name))
                .unwrap()
                .contains("leak_malloc")
        );
    }
    for knob in ["/proc/sys/vm/drop_caches", "/proc/sys/vm/leaktracer.folded"] {
        let run = lt(
            &["report", rec.to_str().unwrap(), "--folded", knob],
            Duration::from_secs(20),
        );
        assert_refused(
            &run,
            &[&format!(
                "--folded {knob}: a procfs file (a kernel interface), not a regular file"
            )],
        );
        assert!(!run.stderr.contains("No such file"), "{}", run.stderr);
    }
}

/// A command without its execute bit is named as not executable, not as missing.
#[test]
fn a_command_without_its_execute_bit_is_said_to_be_not_executable() {
    require_root();
    let dir = scratch_dir("hardening_no_exec_bit");
    fs::write(dir.join("file"), "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(
        dir.join("file"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let run = run_bounded(
        Some(&dir),
        &[],
        &["trace", "-d", "1s", "--", "./file"],
        Duration::from_secs(20),
    );
    assert_refused(
        &run,
        &[
            "cannot run `./file`: ./file is not executable (it has no execute permission): make it executable (chmod +x)",
        ],
    );
    assert!(!run.stderr.contains("not found"), "{}", run.stderr);
}

/// A recording over 2 GiB is refused from its size, before it is read (a sparse 3 GB file):
/// leaktracer's peak memory stays small (reading it first took 2.1 GB).
#[test]
#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4, which also gives its peak RSS"
)]
fn an_oversized_recording_is_refused_from_its_size() {
    require_root();
    let dir = scratch_dir("hardening_huge_recording");
    let huge = dir.join("huge.json");
    fs::File::create(&huge)
        .unwrap()
        .set_len(3_000_000_000)
        .unwrap();
    let mut child = Command::new(leaktracer())
        .args(["report", huge.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for the child we spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with valid pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    assert_eq!(libc::WEXITSTATUS(status), 1, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "leaktracer: {} is larger than 2 GiB: not a recording leaktracer writes",
            huge.display()
        )
    );
    let peak_mib = usage.ru_maxrss / 1024;
    assert!(peak_mib < 100, "peak RSS {peak_mib} MiB");
}

/// `diff` of a stack that held u64::MAX bytes and now holds a few: a shrink of that much, never
/// a wrapped growth; and the differential flamegraph is written.
#[test]
fn diff_of_byte_counts_near_u64_max_never_wraps() {
    require_root();
    let dir = scratch_dir("hardening_diff_wrap");
    let old = recording(&dir, "old.json");
    let new = recording(&dir, "new.json");
    let mut crafted: serde_json::Value = serde_json::from_slice(&fs::read(&old).unwrap()).unwrap();
    let stacks = crafted["stacks"].as_array_mut().unwrap();
    let (index, _) = stacks
        .iter()
        .enumerate()
        .find(|(_, s)| s.to_string().contains("leak_malloc"))
        .expect("a leak_malloc stack");
    stacks[index]["outstanding_bytes"] = u64::MAX.into();
    fs::write(&old, serde_json::to_vec(&crafted).unwrap()).unwrap();
    let svg = dir.join("diff.svg");
    let run = lt(
        &[
            "diff",
            old.to_str().unwrap(),
            new.to_str().unwrap(),
            "--top",
            "100",
            "--flamegraph",
            svg.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let row = run
        .stdout
        .lines()
        .find(|l| l.contains("leak_malloc"))
        .unwrap_or_else(|| panic!("a leak_malloc row: {}", run.stdout));
    assert!(
        row.trim_start().starts_with("-16777216.00 TiB"),
        "{row}\n{}",
        run.stdout
    );
    assert!(fs::read_to_string(&svg).unwrap().contains("<svg"));
}

#[test]
fn durations_beyond_reason_are_refused_by_the_parser() {
    require_root();
    for (flag, value) in [
        ("--duration", "18446744073709551615s"),
        ("-d", "18446744073709551615s"),
        ("--min-age", "1e300"),
        ("--interval", "1e300"),
    ] {
        let run = lt(
            &["trace", "--pid", "1", flag, value],
            Duration::from_secs(10),
        );
        assert_eq!(run.status.code(), Some(2), "{flag} {value}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("invalid value '{value}' for '"))
                && run.stderr.contains("is longer than ten years"),
            "{flag} {value}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
}

#[test]
fn following_a_rapid_forker_never_panics() {
    require_root();
    let dir = scratch_dir("hardening_forker");
    let forker = workload("forker");
    // Three runs of 1 s: each takes ~5 s, as the kernel detaches ~0.1 s per probe per process.
    for attempt in 1..=3 {
        let json = dir.join(format!("run{attempt}.json"));
        let run = lt(
            &[
                "trace".as_ref(),
                "-q".as_ref(),
                "--follow-children".as_ref(),
                "--json".as_ref(),
                json.as_os_str(),
                "--".as_ref(),
                forker.as_os_str(),
                "1".as_ref(),
            ],
            Duration::from_secs(30),
        );
        assert!(
            !run.stderr.contains("panicked"),
            "run {attempt}: {}",
            run.stderr
        );
        assert!(run.status.success(), "run {attempt}: {}", run.stderr);
        let report = read_json(&json);
        assert_eq!(report["end_reason"], "target exited", "run {attempt}");
        assert_eq!(report["target_exit"]["code"], 0, "run {attempt}");
    }
}

#[test]
fn sighup_ends_the_trace_with_its_report() {
    require_root();
    let dir = scratch_dir("hardening_sighup");
    let json = dir.join("leaks.json");
    let svg = dir.join("leaks.svg");
    let tracer = trace_holding_leaky(&dir, &[("--json", &json), ("--flamegraph", &svg)]);
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGHUP) };
    let run = tracer.finish();
    assert!(run.status.success(), "{} {}", run.status, run.stderr);
    let report = read_json(&json);
    assert_eq!(report["end_reason"], "interrupted");
    assert_sites(
        &report,
        &[
            ("leak_malloc", 100 * 128, 100),
            ("leak_calloc", 50 * 512, 50),
        ],
    );
    assert!(fs::read_to_string(&svg).unwrap().contains("leak_malloc"));
    let pid = report["target"]["pids"][0].as_u64().unwrap() as u32;
    assert!(!is_alive(pid), "the launched command is stopped");
}

/// Processes whose command line holds `sleep 4242.5`: the launched command, or the tracer's
/// forked child before its exec (its command line is still the tracer's).
fn sleep_4242_processes() -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0].ends_with(b"sleep") && w[1] == b"4242.5")
        })
        .collect()
}

#[test]
fn a_launched_command_dies_with_a_killed_tracer() {
    require_root();
    let cases: Vec<Option<u64>> = vec![Some(0), Some(5), Some(20), Some(50), Some(100), None];
    for kill_after in cases {
        let mut tracer = Tracer::start(["trace", "-q", "--", "sleep", "4242.5"]);
        match kill_after {
            Some(ms) => std::thread::sleep(Duration::from_millis(ms)),
            None => tracer.wait_attached(),
        }
        unsafe { libc::kill(tracer.pid() as i32, libc::SIGKILL) };
        let _ = tracer.finish();
        let when = match kill_after {
            Some(ms) => format!("SIGKILL after {ms} ms"),
            None => "SIGKILL while tracing".to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut left = sleep_4242_processes();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left = sleep_4242_processes();
        }
        let states: Vec<String> = left
            .iter()
            .map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
            .collect();
        for pid in &left {
            // Never leave them behind, even when the test fails.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        assert!(
            left.is_empty(),
            "{when}: the launched command outlived its tracer: {states:?}"
        );
    }
}

#[test]
fn the_launched_command_s_end_is_reported() {
    require_root();
    let dir = scratch_dir("hardening_target_exit");
    for (script, code, signal, text) in [
        (
            "exit 3",
            serde_json::json!(3),
            serde_json::Value::Null,
            "exit code 3",
        ),
        (
            "ulimit -c 0; kill -SEGV $$",
            serde_json::Value::Null,
            serde_json::json!("SIGSEGV"),
            "killed by SIGSEGV",
        ),
    ] {
        let json = dir.join("leaks.json");
        let run = lt(
            &[
                "trace",
                "-q",
                "--json",
                json.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                script,
            ],
            Duration::from_secs(30),
        );
        assert!(run.status.success(), "{script}: {}", run.stderr);
        let report = read_json(&json);
        assert_eq!(report["end_reason"], "target exited");
        let pid = report["target"]["pids"][0].clone();
        let exit = &report["target_exit"];
        let keys = ["pid", "code", "signal", "core_dumped", "oom_killed"];
        assert_eq!(
            serde_json::json!(keys.map(|key| exit[key].clone())),
            serde_json::json!([pid, code, signal, false, false]),
            "{script}: {exit}"
        );
        let first = run.stdout.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("leaktracer: traced pid {pid} (sh) for "))
                && first.ends_with(&format!("(target exited: {text})")),
            "{script}: {first}"
        );
    }
    // In pid mode nothing was launched: the key is there, and null.
    let json = dir.join("pid.json");
    let target = sleeper();
    let run = lt(
        &[
            "trace",
            "-q",
            "--pid",
            &target.pid().to_string(),
            "-d",
            "1s",
            "--json",
            json.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let report = read_json(&json);
    assert_eq!(
        report.get("target_exit"),
        Some(&serde_json::Value::Null),
        "{report}"
    );
    assert!(
        run.stdout.lines().next().unwrap().ends_with("(duration)"),
        "{}",
        run.stdout
    );
}

#[test]
fn values_out_of_range_are_refused_naming_their_flag() {
    require_root();
    let target = sleeper();
    let pid = target.pid().to_string();
    for (flag, value, says) in [
        ("--steady-ratio", "NaN", "must be a number from 0 to 1"),
        ("--steady-ratio", "5", "must be a number from 0 to 1"),
        ("--steady-ratio", "inf", "must be a number from 0 to 1"),
        ("--slowdown-ratio", "1.5", "must be a number from 0 to 1"),
        ("--sample-bytes", "0", "must be at least 1 byte"),
        (
            "--max-stacks",
            "0",
            "the kernel must keep at least one stack",
        ),
    ] {
        let run = lt(
            &["trace", "--pid", &pid, "-d", "1s", flag, value],
            Duration::from_secs(10),
        );
        assert_refused(&run, &[&format!("{flag} {value}: {says}")]);
    }
}

/// The cgroup2 mount point, from /proc/mounts.
fn cgroup2_mount() -> Option<PathBuf> {
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
}

#[test]
fn a_file_inside_cgroupfs_is_refused_as_such() {
    require_root();
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup2 mount in /proc/mounts");
        return;
    };
    let procs = mount.join("cgroup.procs");
    let run = lt(
        &["trace", "--cgroup", procs.to_str().unwrap(), "-d", "1s"],
        Duration::from_secs(10),
    );
    assert_refused(
        &run,
        &[&format!(
            "{} is a file inside a cgroup, not a cgroup: give its directory ({})",
            procs.display(),
            mount.display()
        )],
    );
}

#[test]
fn report_of_a_device_or_fifo_fails_at_once() {
    require_root();
    let dir = scratch_dir("hardening_report_device");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    for input in [Path::new("/dev/zero"), fifo.as_path()] {
        let started = Instant::now();
        let run = lt(&["report", input.to_str().unwrap()], Duration::from_secs(5));
        assert_refused(
            &run,
            &[&format!("{} is not a regular file", input.display())],
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{}",
            input.display()
        );
    }
}

#[test]
fn an_oversized_kernel_map_names_max_allocations() {
    require_root();
    let target = sleeper();
    let pid = target.pid().to_string();
    // A billion entries: more than the kernel creates a hash map with (E2BIG), or more than
    // the memory cgroup allows. Should a kernel create it, four billion is refused. (Past
    // leaktracer's own estimate, which refuses them first: see hostile_targets.rs.)
    for entries in ["1000000000", "4000000000"] {
        let run = lt(
            &[
                "trace",
                "-q",
                "--pid",
                &pid,
                "-d",
                "1s",
                "--allow-large-maps",
                "--max-allocations",
                entries,
            ],
            Duration::from_secs(60),
        );
        if run.status.success() {
            eprintln!("--max-allocations {entries}: this kernel created the map; trying more");
            continue;
        }
        assert_refused(
            &run,
            &["cannot create the kernel map ", "lower --max-allocations"],
        );
        assert!(!run.stderr.contains("kernel 5.8"), "{}", run.stderr);
        return;
    }
    panic!("--max-allocations 4000000000 was accepted");
}

#[test]
fn serve_on_an_address_of_another_machine_says_so() {
    require_root();
    // TEST-NET-1: never an address of this machine, so binding fails here and sends nothing.
    if std::net::TcpListener::bind("192.0.2.1:0").is_ok() {
        eprintln!("skipped: 192.0.2.1 is configured on this machine");
        return;
    }
    let target = sleeper();
    let run = lt(
        &[
            "trace",
            "--pid",
            &target.pid().to_string(),
            "-d",
            "1s",
            "--serve",
            "192.0.2.1:9000",
        ],
        Duration::from_secs(20),
    );
    assert_refused(
        &run,
        &[
            "cannot listen on 192.0.2.1:9000 (--serve)",
            "192.0.2.1 is not an address of this machine",
        ],
    );
}

fn have_setpriv() -> bool {
    let found = Command::new("setpriv").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped: setpriv (util-linux) is missing");
    }
    found
}

#[test]
fn with_cap_bpf_and_cap_perfmon_only_a_trace_works_or_names_what_is_missing() {
    require_root();
    if !have_setpriv() {
        return;
    }
    let dir = scratch_dir("hardening_caps");
    let json = dir.join("leaks.json");
    let leaky = workload("leaky");
    let caps = "-all,+bpf,+perfmon";
    let inh = format!("--inh-caps={caps}");
    let ambient = format!("--ambient-caps={caps}");
    let bounding = format!("--bounding-set={caps}");
    let run = run_bounded(
        None,
        &["setpriv", &inh, &ambient, &bounding],
        &[
            "trace".as_ref(),
            "-q".as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
            "--".as_ref(),
            leaky.as_os_str(),
            "sites".as_ref(),
            "--count".as_ref(),
            "7".as_ref(),
        ],
        Duration::from_secs(60),
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    if run.status.success() {
        eprintln!("CAP_BPF and CAP_PERFMON only: the trace worked");
        assert_sites(
            &read_json(&json),
            &[
                ("leak_malloc", 7 * 128, 7),
                ("leak_calloc", 50 * 16 * 32, 50),
                ("grow", 10 * 4096, 10),
                ("leak_posix_memalign", 20 * 1000, 20),
                ("leak_aligned_alloc", 30 * 512, 30),
                ("leak_mmap", 1 << 20, 1),
                ("trim_mmap_tail", 8192, 1),
                ("trim_mmap_head", 12288, 1),
                ("keep_after_failed_realloc", 100, 1),
            ],
        );
    } else {
        eprintln!(
            "CAP_BPF and CAP_PERFMON only: refused: {}",
            run.stderr.trim()
        );
        assert_refused(&run, &["missing: CAP_SYS_ADMIN"]);
        assert!(!json.exists());
    }
}

#[test]
fn without_capabilities_the_error_names_the_one_needed() {
    require_root();
    if !have_setpriv() {
        return;
    }
    // Root without capabilities, and nobody.
    let root_without = run_bounded(
        None,
        &[
            "setpriv",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
        ],
        &["trace", "--pid", "1", "-d", "1s"],
        Duration::from_secs(10),
    );
    let nobody = run_unprivileged(["trace", "--pid", "1", "-d", "1s"]);
    for run in [root_without, nobody] {
        assert_refused(&run, &["missing: CAP_SYS_ADMIN"]);
    }
}
