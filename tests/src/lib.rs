//! Helpers for leaktracer's end-to-end tests: compile C workloads, run the real `leaktracer`
//! binary against real processes (root needed: real eBPF), and read its JSON.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

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

/// A fresh scratch directory for one test.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = workspace_root().join("target/e2e").join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `tests/workloads/NAME.c` statically against musl (Debian's musl-tools).
pub fn musl_static_workload(name: &str) -> PathBuf {
    let source = workspace_root().join(format!("tests/workloads/{name}.c"));
    let out_dir = workspace_root().join("target/e2e/bin");
    fs::create_dir_all(&out_dir).unwrap();
    let binary = out_dir.join(format!("{name}-musl-static"));
    let temp = out_dir.join(format!(
        ".{name}-musl.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let status = Command::new("musl-gcc")
        .args(["-static", "-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&temp)
        .arg(&source)
        .status()
        .expect("musl-gcc runs (cargo xtask setup installs musl-tools)");
    assert!(
        status.success(),
        "compiling {} with musl-gcc",
        source.display()
    );
    fs::rename(&temp, &binary).unwrap();
    binary
}

/// Compiles `tests/workloads/NAME.c` (or `NAME.cpp`) with frame pointers, debug info and no
/// builtin malloc folding, and returns the binary. Safe to call from parallel tests.
pub fn workload(name: &str) -> PathBuf {
    let dir = workspace_root().join("tests/workloads");
    let (source, compiler) = if dir.join(format!("{name}.cpp")).exists() {
        (dir.join(format!("{name}.cpp")), "g++")
    } else {
        (dir.join(format!("{name}.c")), "gcc")
    };
    let out_dir = workspace_root().join("target/e2e/bin");
    fs::create_dir_all(&out_dir).unwrap();
    let binary = out_dir.join(name);
    let temp = out_dir.join(format!(
        ".{name}.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let status = Command::new(compiler)
        .args([
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-builtin",
            "-pthread",
            "-o",
        ])
        .arg(&temp)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("{compiler} runs: {e}"));
    assert!(status.success(), "compiling {}", source.display());
    fs::rename(&temp, &binary).unwrap();
    binary
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
        let mut child = Command::new(leaktracer())
            .args(args)
            .stdin(Stdio::null())
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
        let mut out = child.stdout.take().unwrap();
        let stdout_reader = Some(std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        }));
        Self {
            child,
            stderr,
            stdout_reader,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the probes are attached (leaktracer says "tracing ...").
    pub fn wait_attached(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().contains("leaktracer: tracing ") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "leaktracer exited early ({status}): {}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "leaktracer did not attach in 30 s: {}",
            self.stderr.lock().unwrap()
        );
    }

    /// Waits until leaktracer's stderr contains `needle`.
    pub fn wait_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().contains(needle) {
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

/// Runs leaktracer to completion.
pub fn run_tracer<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Tracer::start(args).finish()
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The stacks whose frame 0 is `function`.
pub fn stacks_at<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["frames"][0]["function"] == function)
        .collect()
}

/// Outstanding bytes and allocations summed over the stacks whose frame 0 is `function`.
pub fn outstanding_at(report: &Value, function: &str) -> (u64, u64) {
    stacks_at(report, function)
        .iter()
        .fold((0, 0), |(b, n), s| {
            (
                b + s["outstanding_bytes"].as_u64().unwrap(),
                n + s["outstanding_allocations"].as_u64().unwrap(),
            )
        })
}

/// True when any frame of any stack is `function`.
pub fn mentions(report: &Value, function: &str) -> bool {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap())
        .any(|f| f["function"] == function)
}

/// One byte of another process's memory (to see a uprobe's int3, 0xCC, at a function entry).
pub fn byte_at(pid: u32, address: u64) -> u8 {
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut byte = [0u8];
    mem.read_exact_at(&mut byte, address).unwrap();
    byte[0]
}

/// The first 16 bytes of a function in another process: a uprobe's int3 (0xCC) shows there,
/// at the entry or a few instructions in (leaktracer may place an entry probe past an
/// instruction the kernel would have to single-step).
pub fn code_at(pid: u32, address: u64) -> [u8; 16] {
    let mem = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut bytes = [0u8; 16];
    mem.read_exact_at(&mut bytes, address).unwrap();
    bytes
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

/// Waits for a file to appear.
pub fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

/// A memory cgroup with a limit, for tests of the time-to-limit arithmetic: cgroup v2 when its
/// memory controller is available, else the v1 memory controller (hybrid hosts).
pub struct MemoryCgroup {
    pub dir: PathBuf,
    /// The limit as the kernel stored it (rounded to pages).
    pub limit_bytes: u64,
}

impl MemoryCgroup {
    pub fn create(name: &str, limit_bytes: u64) -> Self {
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        let mut v2 = None;
        let mut v1 = None;
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            if f[2] == "cgroup2" {
                v2 = Some(PathBuf::from(f[1]));
            } else if f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory") {
                v1 = Some(PathBuf::from(f[1]));
            }
        }
        let v2_memory = v2.filter(|m| {
            fs::read_to_string(m.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        let (root, limit_file) = match (v2_memory, v1) {
            (Some(root), _) => {
                let _ = fs::write(root.join("cgroup.subtree_control"), "+memory");
                (root, "memory.max")
            }
            (None, Some(root)) => (root, "memory.limit_in_bytes"),
            (None, None) => panic!("no cgroup memory controller on this machine"),
        };
        let dir = root.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(limit_file), limit_bytes.to_string()).unwrap();
        let limit_bytes = fs::read_to_string(dir.join(limit_file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Self { dir, limit_bytes }
    }

    pub fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
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

/// Loads a page in headless Chromium and returns the DOM after its scripts ran.
pub fn chromium_dom(page: &Path) -> String {
    chromium_dom_of(
        &format!("file://{}", page.display()),
        &page.with_extension("chromium-profile"),
    )
}

/// Loads `url` in headless Chromium (profile kept in `profile`) and returns the DOM after its
/// scripts ran for 5 s of virtual time.
pub fn chromium_dom_of(url: &str, profile: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attribute` on the element with `id` in an HTML text (attributes as Chromium
/// serializes them: double-quoted, entities escaped).
pub fn attribute(html: &str, id: &str, attribute: &str) -> Option<String> {
    let start = html.find(&format!("id=\"{id}\""))?;
    let tag_start = html[..start].rfind('<')?;
    let tag_end = start + html[start..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let key = format!(" {attribute}=\"");
    let value_start = tag.find(&key)? + key.len();
    let value_end = value_start + tag[value_start..].find('"')?;
    Some(
        tag[value_start..value_end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

/// Device and inode of the executable mapping of a file whose path ends with `suffix`, as
/// `/proc/PID/maps` shows it.
pub fn mapped_file(pid: u32, suffix: &str) -> Option<(u64, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || !f[5].ends_with(suffix) {
            return None;
        }
        let (major, minor) = f[3].split_once(':')?;
        let dev = libc::makedev(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        );
        Some((dev, f[4].parse().ok()?))
    })
}

/// The children of a process.
pub fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A cgroup v2 directory for a test, removed at the end (after its processes are gone).
pub struct Cgroup2Dir(pub PathBuf);

impl Cgroup2Dir {
    pub fn create(name: &str) -> Self {
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        let mount = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount");
        let dir = mount.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap();
        Self(dir)
    }

    /// A shell command line that moves itself into this cgroup, then execs `command`.
    pub fn enter_and_exec(&self, command: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && exec {command}",
            self.0.display()
        ));
        cmd
    }
}

impl Drop for Cgroup2Dir {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
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

/// A loopback address with a port nobody listens on right now.
pub fn free_loopback_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `GET path` over HTTP/1.1: the status code and the body. Panics after `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from {addr}{path}: {head}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    )
}

/// The payload of a chunked HTTP body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a URL query value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
