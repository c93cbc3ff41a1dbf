//! CPython targets: the interpreters this machine kind has, and the Python frames of a report's
//! stacks (issue 12: every frame says `"kind": "python"` or `"native"`; a Python frame's
//! `function` is its code object's `co_qualname`, `file` its `co_filename`, `line` the line it
//! is executing).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::paths::workspace_root;

/// The interpreters this machine kind has: Debian's stripped python3.11 and pyenv's builds
/// 3.11.7, 3.12.1 and 3.13.0 (interpreter in libpython; `$PYENV_ROOT`, else /root/.pyenv). Each
/// missing one is named and skipped.
pub fn python_interpreters() -> Vec<PathBuf> {
    let pyenv = pyenv_root();
    let candidates = [
        PathBuf::from("/usr/bin/python3.11"),
        pyenv.join("versions/3.11.7/bin/python3.11"),
        pyenv.join("versions/3.12.1/bin/python3.12"),
        pyenv.join("versions/3.13.0/bin/python3.13"),
    ];
    candidates
        .into_iter()
        .filter(|candidate| {
            let found = candidate.exists();
            if !found {
                eprintln!("SKIP for {}: not installed", candidate.display());
            }
            found
        })
        .collect()
}

fn pyenv_root() -> PathBuf {
    std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"))
}

/// The Debian unstable root `cargo xtask setup` builds for the tests (python3.13–3.15, stripped
/// and LTO-built, on a newer glibc than the host's): a container's file system without the
/// container. Its programs run with `chroot`.
pub fn debian_unstable_root() -> PathBuf {
    workspace_root().join("target/python-roots/sid")
}

/// One CPython a test can run a script with: a host program, or a program inside a separate
/// root (run with `chroot`, seen by leaktracer through `/proc/PID/root`, as a container's).
#[derive(Clone, Debug)]
pub struct Interpreter {
    /// How test output names it: `pyenv 3.10.13`, `debian python3.11`, `sid python3.14`.
    pub label: String,
    /// (major, minor).
    pub version: (u32, u32),
    /// The root it runs in, if not the host's.
    pub root: Option<PathBuf>,
    /// Its path as the process sees it (inside `root` when there is one).
    pub program: PathBuf,
    /// Built stripped and with LTO (a distribution's build): no symbol names pymalloc.
    pub distribution_build: bool,
}

impl Interpreter {
    /// The program's file as the host sees it.
    pub fn host_path(&self) -> PathBuf {
        match &self.root {
            Some(root) => root.join(self.program.strip_prefix("/").unwrap_or(&self.program)),
            None => self.program.clone(),
        }
    }

    /// Where `script` (a host path) is as the interpreter sees it: itself, or in a separate root
    /// the copy [`Interpreter::command`] makes in the root's `/tmp/leaktracer-tests/` (its
    /// `co_filename`).
    pub fn script_path(&self, script: &Path) -> PathBuf {
        match &self.root {
            Some(_) => {
                Path::new("/tmp/leaktracer-tests").join(script.file_name().expect("a script file"))
            }
            None => script.to_path_buf(),
        }
    }

    /// A command running `script` (a host path) with this interpreter, then `args`. In a
    /// separate root the script is first copied into the root's `/tmp/leaktracer-tests/` and
    /// named as seen there. The command's pid is the interpreter's (`chroot` execs it).
    pub fn command(&self, script: &Path, args: &[&str]) -> Command {
        let inside = self.script_path(script);
        let mut command = match &self.root {
            Some(root) => {
                let copy = root.join(inside.strip_prefix("/").unwrap());
                fs::create_dir_all(copy.parent().unwrap()).unwrap();
                fs::copy(script, &copy).unwrap();
                let mut chroot = Command::new("chroot");
                chroot.arg(root).arg(&self.program);
                chroot
            }
            None => Command::new(&self.program),
        };
        command.arg(&inside).args(args);
        command
    }

    /// The function name a frame of `qualname` has in this interpreter's reports: 3.9 and 3.10
    /// have no `co_qualname`, so their frames are named by `co_name` (`Handler.do_GET` is
    /// `do_GET` there, `f.<locals>.g` is `g`).
    pub fn function_name<'a>(&self, qualname: &'a str) -> &'a str {
        if self.version >= (3, 11) {
            return qualname;
        }
        qualname.rsplit('.').next().unwrap_or(qualname)
    }

    /// Its label as a file name: `pyenv-3.10.13`, `sid-python3.14`.
    pub fn file_name(&self) -> String {
        self.label.replace(' ', "-")
    }
}

/// Every CPython the tests cover, oldest first: pyenv's 3.9.18, 3.10.13, 3.11.7, 3.12.1 and
/// 3.13.0 (with symbols), Debian 12's `/usr/bin/python3.11`, and Debian unstable's python3.13,
/// 3.14 and 3.15 in [`debian_unstable_root`]. Each missing one is named and skipped.
pub fn every_interpreter() -> Vec<Interpreter> {
    let pyenv = pyenv_root();
    let sid = debian_unstable_root();
    let mut all = Vec::new();
    for (version, patch) in [
        ((3, 9), 18),
        ((3, 10), 13),
        ((3, 11), 7),
        ((3, 12), 1),
        ((3, 13), 0),
    ] {
        let (major, minor) = version;
        all.push(Interpreter {
            label: format!("pyenv {major}.{minor}.{patch}"),
            version,
            root: None,
            program: pyenv.join(format!(
                "versions/{major}.{minor}.{patch}/bin/python{major}.{minor}"
            )),
            distribution_build: false,
        });
    }
    all.push(Interpreter {
        label: "debian python3.11".into(),
        version: (3, 11),
        root: None,
        program: PathBuf::from("/usr/bin/python3.11"),
        distribution_build: true,
    });
    for minor in [13, 14, 15] {
        all.push(Interpreter {
            label: format!("sid python3.{minor}"),
            version: (3, minor),
            root: Some(sid.clone()),
            program: PathBuf::from(format!("/usr/bin/python3.{minor}")),
            distribution_build: true,
        });
    }
    all.retain(|interpreter| {
        let found = interpreter.host_path().exists();
        if !found {
            eprintln!(
                "SKIP for {}: {} not installed (run `cargo xtask setup`)",
                interpreter.label,
                interpreter.host_path().display()
            );
        }
        found
    });
    all
}

/// True for a frame of Python code (`"kind": "python"`).
pub fn is_python_frame(frame: &Value) -> bool {
    frame["kind"] == "python"
}

/// A stack's Python frames, innermost first.
pub fn python_frames(stack: &Value) -> Vec<&Value> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| is_python_frame(f))
        .collect()
}

/// The Python frame nearest the allocation.
pub fn innermost_python_frame(stack: &Value) -> Option<&Value> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| is_python_frame(f))
}

/// The stacks whose innermost Python frame is `function` executing `line`.
pub fn stacks_at_python_line<'a>(report: &'a Value, function: &str, line: u64) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            innermost_python_frame(s)
                .is_some_and(|f| f["function"] == function && f["line"] == line)
        })
        .collect()
}

/// The stacks whose outstanding bytes are all blocks of `size` bytes.
pub fn stacks_of_blocks(report: &Value, size: u64) -> Vec<&Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let n = s["outstanding_allocations"].as_u64().unwrap();
            n > 0 && s["outstanding_bytes"].as_u64() == Some(n * size)
        })
        .collect()
}

/// Outstanding bytes and allocations summed over `stacks`.
pub fn held_by(stacks: &[&Value]) -> (u64, u64) {
    stacks.iter().fold((0, 0), |(b, n), s| {
        (
            b + s["outstanding_bytes"].as_u64().unwrap(),
            n + s["outstanding_allocations"].as_u64().unwrap(),
        )
    })
}

/// One frame, compactly: `function file:line [kind]` (file without its directory; the module's
/// name when the frame has no file).
pub fn frame_text(frame: &Value) -> String {
    let base = |path: &str| {
        Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string())
    };
    let place = match (frame["file"].as_str(), frame["line"].as_u64()) {
        (Some(file), Some(line)) => format!("{}:{line}", base(file)),
        (Some(file), None) => base(file),
        _ => frame["module"].as_str().map(base).unwrap_or_default(),
    };
    format!(
        "{} {place} [{}]",
        frame["function"].as_str().unwrap_or("?"),
        frame["kind"].as_str().unwrap_or("no kind")
    )
}

/// Stacks, compactly, largest first: for each, what it holds and its frames innermost first,
/// one stack per line. At most `limit` stacks, and says how many were left out.
pub fn stacks_text(stacks: &[&Value], limit: usize) -> String {
    let mut sorted = stacks.to_vec();
    sorted.sort_by_key(|s| std::cmp::Reverse(s["outstanding_bytes"].as_u64().unwrap_or(0)));
    let mut lines: Vec<String> = sorted
        .iter()
        .take(limit)
        .map(|s| {
            let frames: Vec<String> = s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(frame_text)
                .collect();
            format!(
                "    {} B in {}: {}",
                s["outstanding_bytes"],
                s["outstanding_allocations"],
                frames.join(" <- ")
            )
        })
        .collect();
    if sorted.len() > limit {
        lines.push(format!("    ... and {} more stacks", sorted.len() - limit));
    }
    if lines.is_empty() {
        lines.push("    (no stacks)".to_string());
    }
    lines.join("\n")
}
