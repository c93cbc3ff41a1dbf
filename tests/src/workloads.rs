//! The C workloads of `tests/workloads/`: compiling them, and running the ones the tests
//! drive over their standard streams.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::paths::workspace_root;

/// Builds `target/e2e/bin/BINARY` with the command `build` makes for an output path, once per
/// test process: into a temporary file renamed into place, so parallel tests never run a
/// half-written binary. Once, because a rebuild renamed over the path while another test has
/// planned a launch of it (its entry probe on the old file) makes that test exec a file its
/// probe is not on.
fn build_atomically(binary: &str, build: impl FnOnce(&Path) -> Command) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, Arc<OnceLock<PathBuf>>>> = Mutex::new(BTreeMap::new());
    let once = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(binary.to_string())
        .or_default()
        .clone();
    // Callers wanting the same binary wait for the first one's build.
    once.get_or_init(|| {
        let out_dir = workspace_root().join("target/e2e/bin");
        fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join(binary);
        let temp = out_dir.join(format!(".{binary}.{}", std::process::id()));
        let mut command = build(&temp);
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("{command:?} runs: {e}"));
        assert!(status.success(), "building {binary}: {command:?}");
        fs::rename(&temp, &out).unwrap();
        out
    })
    .clone()
}

/// Compiles `source` with `compiler FLAGS -o OUT SOURCE` into `target/e2e/bin/BINARY`.
fn compile(compiler: &str, flags: &[&str], source: &Path, binary: &str) -> PathBuf {
    build_atomically(binary, |out| {
        let mut command = Command::new(compiler);
        command.args(flags).arg("-o").arg(out).arg(source);
        command
    })
}

/// The source `tests/workloads/NAME`.
fn source(name: &str) -> PathBuf {
    workspace_root().join("tests/workloads").join(name)
}

/// Compiles `tests/workloads/NAME.c` statically against musl (Debian's musl-tools; `cargo
/// xtask setup` installs it).
pub fn musl_static_workload(name: &str) -> PathBuf {
    compile(
        "musl-gcc",
        &["-static", "-O0", "-g", "-fno-omit-frame-pointer"],
        &source(&format!("{name}.c")),
        &format!("{name}-musl-static"),
    )
}

/// Compiles `tests/workloads/NAME.c` (or `NAME.cpp`) with frame pointers, debug info and no
/// builtin malloc folding, and returns the binary. Safe to call from parallel tests.
pub fn workload(name: &str) -> PathBuf {
    let (file, compiler) = if source(&format!("{name}.cpp")).exists() {
        (format!("{name}.cpp"), "g++")
    } else {
        (format!("{name}.c"), "gcc")
    };
    compile(
        compiler,
        &[
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-builtin",
            "-pthread",
        ],
        &source(&file),
        name,
    )
}

/// Compiles `tests/workloads/NAME.c` with `flags` (plus -g) into a binary named `NAME-SUFFIX`:
/// the same source built the ways operators' programs are (-O2, with or without frame
/// pointers). Safe to call from parallel tests.
pub fn workload_built(name: &str, suffix: &str, flags: &[&str]) -> PathBuf {
    compile(
        "gcc",
        &[flags, &["-g"]].concat(),
        &source(&format!("{name}.c")),
        &format!("{name}-{suffix}"),
    )
}

/// Compiles `tests/workloads/NAME.rs` as a release build would (`-C opt-level=3`, Rust's
/// default of no frame pointers) with line tables for symbolization.
pub fn rust_release_workload(name: &str) -> PathBuf {
    compile(
        "rustc",
        &[
            "--edition",
            "2021",
            "-C",
            "opt-level=3",
            "-C",
            "debuginfo=1",
        ],
        &source(&format!("{name}.rs")),
        &format!("{name}-release"),
    )
}

/// Builds `tests/workloads/NAME.go` with Go's own toolchain (Debian's golang-go): a program
/// with no C library, whose CFI is only in `.debug_frame`.
pub fn go_workload(name: &str) -> PathBuf {
    build_atomically(&format!("{name}-go"), |out| {
        let mut command = Command::new("go");
        command
            .args(["build", "-o"])
            .arg(out)
            .arg(source(&format!("{name}.go")))
            // Outside any module, and with a cache of its own (CI's HOME may be unset).
            .env("GO111MODULE", "off")
            .env("GOCACHE", workspace_root().join("target/e2e/go/cache"))
            .env("GOPATH", workspace_root().join("target/e2e/go/path"))
            .env("GOFLAGS", "");
        command
    })
}

/// A workload process killed when the test ends, pass or fail.
pub struct Workload(pub Child);

impl Workload {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Parses the workload's first line, `malloc=0x... free=0x...`.
pub fn entry_addresses(line: &str) -> (u64, u64) {
    let field = |name: &str| {
        let value = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=0x")))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
        u64::from_str_radix(value, 16).unwrap()
    };
    (field("malloc"), field("free"))
}

/// Starts `tests/workloads/growth.c` (its threads wait) and reads its "ready".
pub fn start_growth(args: &[&str]) -> Workload {
    let mut child = Command::new(workload("growth"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    Workload(child)
}

/// Lets the growth workload's threads run (before any tracer attaches, so thread stacks are
/// not part of the trace).
pub fn release_growth(workload: &mut Workload) {
    workload
        .0
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
}

/// The lines a process writes to a pipe, read on a thread as they come, so that a test can wait
/// for one with a deadline instead of blocking for ever on a hung workload.
pub struct Lines {
    receiver: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    /// Reads `source` line by line.
    pub fn read(source: impl Read + Send + 'static) -> Self {
        Self::tee(source).0
    }

    /// Reads `source` line by line, and also keeps all of it: the handle returns the whole text
    /// once `source` ends (for a tracer's stdout, which a launched command shares).
    pub fn tee(source: impl Read + Send + 'static) -> (Self, JoinHandle<String>) {
        let (sender, receiver) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(source).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                let _ = sender.send(line);
            }
            all
        });
        (
            Self {
                receiver,
                seen: Vec::new(),
            },
            reader,
        )
    }

    /// The next line; panics (listing the lines seen so far) if none comes within `timeout` or
    /// the pipe closes.
    pub fn next_line(&mut self, timeout: Duration) -> String {
        match self.receiver.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!(
                "no line within {timeout:?} ({e}); lines so far: {:?}",
                self.seen
            ),
        }
    }

    /// The next line that starts with `prefix`, skipping others (e.g. a tracer's own output).
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left);
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

/// Writes `line` and a newline to a workload's stdin.
pub fn send_line(stdin: &mut ChildStdin, line: &str) {
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| stdin.flush())
        .unwrap_or_else(|e| panic!("writing {line:?} to the workload: {e}"));
}

/// The pid in `tests/workloads/reach.c`'s "ready PID" line.
pub fn reach_ready_pid(line: &str) -> u32 {
    line.strip_prefix("ready ")
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a \"ready PID\" line: {line:?}"))
}
