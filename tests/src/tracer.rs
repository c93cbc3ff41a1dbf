//! Running the real `leaktracer` binary: to completion, or in the background while a test
//! drives its target.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{paths::workspace_root, workloads::Lines};

/// The leaktracer binary under test: `$LEAKTRACER_BIN` (set by `cargo xtask test`), else the
/// release build.
pub fn leaktracer() -> PathBuf {
    let path = std::env::var_os("LEAKTRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/leaktracer"));
    assert!(
        path.exists(),
        "{} missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// Fails the test unless it runs as root: these tests load real eBPF programs.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end tests load eBPF programs and need root: run `sudo cargo xtask test`"
    );
}

/// A running `leaktracer` whose stderr is collected as it comes.
pub struct Tracer {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout_reader: Option<std::thread::JoinHandle<String>>,
}

/// How a tracer run ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Tracer {
    /// Starts `leaktracer ARGS`.
    pub fn start<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Self::start_with_env(args, &[])
    }

    /// Starts `leaktracer ARGS` with `env` added to its environment.
    pub fn start_with_env<I, S>(args: I, env: &[(&str, &str)]) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut tracer = Self::spawn(args, Stdio::null(), env);
        let mut out = tracer.child.stdout.take().unwrap();
        tracer.stdout_reader = Some(std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        }));
        tracer
    }

    /// Starts `leaktracer ARGS` with a pipe as its stdin, and its stdout read line by line as it
    /// comes: a launched command inherits both, so the test talks to the command through them
    /// (its lines arrive mixed with leaktracer's own stdout, which [`Tracer::finish`] still
    /// returns whole).
    pub fn start_piped<I, S>(args: I) -> (Self, ChildStdin, Lines)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut tracer = Self::spawn(args, Stdio::piped(), &[]);
        let stdin = tracer.child.stdin.take().unwrap();
        let (lines, reader) = Lines::tee(tracer.child.stdout.take().unwrap());
        tracer.stdout_reader = Some(reader);
        (tracer, stdin, lines)
    }

    /// Starts `leaktracer ARGS` with stdout piped and stderr collected; the caller takes stdout.
    fn spawn<I, S>(args: I, stdin: Stdio, env: &[(&str, &str)]) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut child = Command::new(leaktracer())
            .args(args)
            .envs(env.iter().copied())
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("leaktracer starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self {
            child,
            stderr,
            stdout_reader: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the probes are attached (leaktracer says "tracing ...").
    pub fn wait_attached(&mut self) {
        self.wait_stderr("leaktracer: tracing ");
    }

    /// Waits until leaktracer says it traces `pid`: in the first line ("tracing ... pid N
    /// (comm)") when it was there at the start, else in its own "attached to pid N" line.
    pub fn wait_traced(&mut self, pid: u32) {
        let attached = format!("attached to pid {pid} ");
        let at_start = format!("pid {pid} (");
        self.wait_stderr_for(&attached, |stderr| {
            stderr.contains(&attached)
                || stderr
                    .lines()
                    .any(|l| l.starts_with("leaktracer: tracing ") && l.contains(&at_start))
        });
    }

    /// Waits until leaktracer's stderr contains `needle`.
    pub fn wait_stderr(&mut self, needle: &str) {
        self.wait_stderr_for(needle, |stderr| stderr.contains(needle));
    }

    /// Waits until leaktracer's stderr satisfies `said` (`needle` names it in a failure).
    fn wait_stderr_for(&mut self, needle: &str, said: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if said(&self.stderr.lock().unwrap()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "leaktracer exited ({status}) before saying {needle:?}: {}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "leaktracer did not say {needle:?} in 30 s: {}",
            self.stderr.lock().unwrap()
        );
    }

    /// Sends SIGINT, as Ctrl-C would.
    pub fn interrupt(&self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// Waits for the tracer to exit (at most 3 minutes: the longest trace is one minute).
    pub fn finish(mut self) -> Finished {
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "leaktracer did not finish in 60 s: {}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout_reader.take().unwrap().join().unwrap();
        // Give the stderr thread a moment to drain the closed pipe.
        std::thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr.lock().unwrap().clone();
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Tracer {
    /// A failing test never leaves a tracer behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs leaktracer to completion.
pub fn run_tracer<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Tracer::start(args).finish()
}

/// Runs `leaktracer` without privileges (as nobody), for commands that must not need root.
pub fn run_unprivileged<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(leaktracer())
        .args(args)
        .output()
        .expect("setpriv runs");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `leaktracer trace -q --json JSON FLAGS -- COMMAND` until the command exits, asserts the
/// trace succeeded, and returns the run with its JSON report.
pub fn trace_launched(
    json: &std::path::Path,
    flags: &[&str],
    command: &[&str],
) -> (Finished, serde_json::Value) {
    let mut args = vec!["trace", "-q", "--json", json.to_str().unwrap()];
    args.extend(flags);
    args.push("--");
    args.extend(command);
    let done = run_tracer(&args);
    assert!(done.status.success(), "{command:?}: {}", done.stderr);
    let report = crate::report::read_json(json);
    (done, report)
}
