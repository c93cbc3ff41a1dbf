//! Installing what a fresh machine lacks: rust-src (for `-Z build-std=core`), bpf-linker, and a C
//! compiler and Python for the demo and test workloads; for the tests and benchmarks, their
//! tools (memray for the Python benchmark). Each check is quick when the thing is present.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

use crate::util::{self, cargo_home, path_with_cargo_bin, step, succeeds};

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_debian_tools(&[("gcc", "gcc"), ("python3", "python3")])?;
    Ok(())
}

/// What the end-to-end tests use besides the build: a C++ compiler for the C++ workload,
/// Chromium to render the HTML report, setpriv and unshare, musl for a static binary, Go, gdb and
/// redis for the unwinder, the allocators the tests preload, and Debian unstable's python3.13-3.15
/// in a root of their own ([`crate::python_roots`]).
pub fn ensure_test_tools() -> anyhow::Result<()> {
    ensure_debian_tools(&[
        ("g++", "g++"),
        ("chromium", "chromium"),
        ("setpriv", "util-linux"),
        ("unshare", "util-linux"),
        ("musl-gcc", "musl-tools"),
        // A program with no C library, its CFI in .debug_frame only.
        ("go", "golang-go"),
        // The unwinder's oracle (gdb's `bt`) and a real program without frame pointers.
        ("gdb", "gdb"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "libjemalloc2"),
        (
            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
            "libtcmalloc-minimal4",
        ),
        (
            "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
            "libmimalloc2.0",
        ),
    ])?;
    // The tests of the Debian unstable interpreters skip, naming them, without their root.
    if let Err(why) = crate::python_roots::ensure() {
        step(&format!(
            "no Debian unstable root ({why:#}); the tests of sid python3.13-3.15 will skip"
        ));
    }
    // The Prometheus scrape test skips, saying so, when the package cannot be installed.
    if let Err(why) = ensure_debian_tools(&[("prometheus", "prometheus")]) {
        step(&format!(
            "prometheus not installed ({why:#}); its test will skip"
        ));
    }
    Ok(())
}

/// The interpreter the Python benchmark rows fall back to without pyenv's CPython 3.12.
pub const FALLBACK_PYTHON: &str = "/usr/bin/python3.11";

/// The interpreter the Python benchmark rows use, all of them.
pub struct Python {
    pub path: PathBuf,
    /// As it reports itself (`3.12.1`).
    pub version: String,
}

/// pyenv's newest CPython 3.12 when there is one, else [`FALLBACK_PYTHON`]; the first that runs.
pub fn python() -> Option<Python> {
    let pyenv_root = pyenv_root();
    let mut pyenv_312: Vec<(u32, PathBuf)> = std::fs::read_dir(pyenv_root.join("versions"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let patch = name.strip_prefix("3.12.")?.parse().ok()?;
            Some((patch, entry.path().join("bin/python3.12")))
        })
        .collect();
    pyenv_312.sort();
    pyenv_312
        .into_iter()
        .rev()
        .map(|(_, path)| path)
        .chain([PathBuf::from(FALLBACK_PYTHON)])
        .find_map(|path| {
            let out = Command::new(&path).arg("--version").output().ok()?;
            // "Python 3.12.1"
            let version = String::from_utf8_lossy(&out.stdout)
                .trim()
                .strip_prefix("Python ")?
                .to_string();
            out.status.success().then_some(Python { path, version })
        })
}

/// Where pyenv keeps its interpreters: `pyenv root`, else `$PYENV_ROOT`, else `~/.pyenv`.
pub fn pyenv_root() -> PathBuf {
    Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .or_else(|| std::env::var_os("PYENV_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| util::home().join(".pyenv"))
}

/// What `cargo xtask bench` needs besides the test tools: memray, installed with pip into the
/// environment of the interpreter the Python rows use and of pyenv's interpreters of the table
/// of every interpreter; wrk, gdb (for `memray attach`) and the FastAPI venv
/// ([`ensure_bench_venv`]). Not fatal: without it (no interpreter, no index, an externally managed
/// environment) the memray row or cell says it is skipped.
pub fn ensure_bench_tools() -> anyhow::Result<()> {
    let mut pythons: Vec<PathBuf> = python().map(|p| p.path).into_iter().collect();
    // The table of every interpreter: pyenv's, where pip can install it.
    for program in crate::bench_python::pyenv_programs() {
        if program.exists() && !pythons.contains(&program) {
            pythons.push(program);
        }
    }
    if pythons.is_empty() {
        step("no Python interpreter for the Python benchmark rows; they will skip");
    }
    // The FastAPI rows: wrk drives the service, `memray attach` injects itself with gdb.
    if let Err(why) = ensure_debian_tools(&[("wrk", "wrk"), ("gdb", "gdb")]) {
        step(&format!(
            "wrk or gdb not installed ({why:#}); the FastAPI rows that need them will skip"
        ));
    }
    if let Err(why) = ensure_bench_venv() {
        step(&format!(
            "no FastAPI venv ({why:#}); the FastAPI benchmark rows will skip"
        ));
    }
    for python in pythons {
        if crate::bench_python::has_memray(&python) {
            continue;
        }
        step(&format!("installing memray for {}", python.display()));
        if let Err(why) = util::run(Command::new(&python).args(["-m", "pip", "install", "memray"]))
        {
            step(&format!(
                "memray not installed for {} ({why:#}); its benchmark cells will skip",
                python.display()
            ));
        }
    }
    Ok(())
}

/// The venv of the FastAPI benchmark (issue 27), under target/.
pub fn bench_venv() -> PathBuf {
    crate::util::workspace_root().join("target/bench-venv")
}

/// What the FastAPI service imports, and memray for its `memray attach` row.
const BENCH_VENV_MODULES: &str = "import fastapi, uvicorn, uvloop, httptools, memray";

/// The interpreter the FastAPI venv is made from: pyenv's newest CPython 3.12, else its newest
/// 3.13, else its newest 3.11.
fn bench_venv_base() -> Option<PathBuf> {
    let versions: Vec<String> = std::fs::read_dir(pyenv_root().join("versions"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    [12, 13, 11].into_iter().find_map(|minor| {
        let newest = versions
            .iter()
            .filter_map(|name| {
                let patch: u32 = name.strip_prefix(&format!("3.{minor}."))?.parse().ok()?;
                Some((patch, name))
            })
            .max()?;
        let program = pyenv_root().join(format!("versions/{}/bin/python3.{minor}", newest.1));
        program.exists().then_some(program)
    })
}

/// target/bench-venv with fastapi, uvicorn[standard] (uvloop, httptools) and memray, made from
/// [`bench_venv_base`]'s interpreter; quick when they already import.
pub fn ensure_bench_venv() -> anyhow::Result<()> {
    let venv = bench_venv();
    let python = venv.join("bin/python");
    if succeeds(Command::new(&python).args(["-c", BENCH_VENV_MODULES])) {
        return Ok(());
    }
    let base = bench_venv_base().context("no pyenv CPython 3.11, 3.12 or 3.13")?;
    if !python.exists() {
        step(&format!(
            "making {} from {}",
            venv.display(),
            base.display()
        ));
        util::run(Command::new(&base).args(["-m", "venv"]).arg(&venv))?;
    }
    step("installing fastapi, uvicorn[standard] and memray into the FastAPI venv");
    util::run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "-q",
        "fastapi",
        "uvicorn[standard]",
        "memray",
    ]))?;
    if !succeeds(Command::new(&python).args(["-c", BENCH_VENV_MODULES])) {
        bail!(
            "{} cannot `{BENCH_VENV_MODULES}` after pip install",
            python.display()
        );
    }
    Ok(())
}

fn sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc")?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    if sysroot()?
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        return Ok(());
    }
    step("installing the rust-src component");
    util::run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// bpf-linker built against rustc's own libLLVM, so the two never disagree on the LLVM version.
fn ensure_bpf_linker() -> anyhow::Result<()> {
    let works =
        |cmd: &mut Command| succeeds(cmd.env("PATH", path_with_cargo_bin()).arg("--version"));
    if works(&mut Command::new("bpf-linker")) {
        return Ok(());
    }
    let sysroot = sysroot()?;
    let lib_dir = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: is this a rustup toolchain?",
                lib_dir.display()
            )
        })?;
    // libLLVM.so.22.1-rust-1.95.0-stable -> 22
    let major = libllvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    // A prefix whose lib/ holds rustc's libLLVM under both names the build and the loader want.
    // It must outlive the build: bpf-linker's RUNPATH points into it.
    let prefix = cargo_home().join("leaktracer-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&libllvm), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (about a minute)"
    ));
    util::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env("PATH", path_with_cargo_bin()),
    )?;
    if !works(&mut Command::new("bpf-linker")) {
        bail!("bpf-linker was installed but does not run; try `cargo xtask setup` again");
    }
    Ok(())
}

/// Installs the Debian packages of commands (or, for absolute paths, files) that are missing.
pub fn ensure_debian_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let present = |what: &str| {
        if what.starts_with('/') {
            std::path::Path::new(what).exists()
        } else {
            succeeds(Command::new("sh").args(["-c", &format!("command -v {what}")]))
        }
    };
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(what, _)| !present(what))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    let _ = util::run(Command::new("apt-get").arg("update").arg("-q"));
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
