//! leaktracer's developer commands: `cargo xtask <setup|build|demo|test>`.
//!
//! Every command but `setup` runs setup first, so a fresh machine needs nothing else.

mod apt_sources;
mod bench;
mod bench_attach;
mod bench_fastapi;
mod bench_python;
mod bench_reach;
mod bench_untraced;
mod demo;
mod leftovers;
mod mounts;
mod python_roots;
mod setup;
mod unprivileged;
mod util;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, set up, demo and test leaktracer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building needs: the rust-src component and bpf-linker (built against
    /// rustc's own LLVM); and the Debian unstable root the Python tests run python3.13-3.15 in
    /// (target/python-roots/sid, about two minutes once). Quick when already present.
    Setup,
    /// Build target/release/leaktracer with its eBPF object embedded.
    Build,
    /// Build, start the bundled leaking demo server, trace it for ~10 s, print the report and
    /// write leaks.svg and leaks.json (needs root).
    Demo {
        /// How long to trace.
        #[arg(long, default_value = "10s")]
        duration: String,
    },
    /// Measure the slowdown of traced programs, side by side: native, the bare probes,
    /// leaktracer, bcc memleak; for a Python workload, tracemalloc and memray, and the same on
    /// every interpreter the tests cover (a row each); the reachability
    /// scan's pause; attach and detach times for 1, 10 and 50 processes; a FastAPI service
    /// under wrk (requests per second, native vs leaktracer, tracemalloc and memray attach);
    /// an untraced process's read(2) while another pid is traced (needs root).
    /// Writes target/bench/ and BENCHMARKS.md.
    Bench {
        /// Run only the workloads whose name contains this (case-insensitive), e.g. `python`,
        /// `mmap`, `reachability`, `attach`, `fastapi` or `untraced`; BENCHMARKS.md is then
        /// left as it is.
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
    },
    /// Run every check: formatting, clippy, the unit tests (also as an unprivileged user, which
    /// they must pass as), the in-process kernel tests and the end-to-end tests (needs root:
    /// they load real eBPF programs against real processes).
    Test {
        /// Extra arguments for the test harness, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().and_then(|()| {
            python_roots::ensure().context("the Debian unstable root for the Python tests")
        }),
        Command::Build => setup::run().and_then(|()| build()),
        Command::Demo { duration } => setup::run()
            .and_then(|()| build())
            .and_then(|()| demo::run(&duration)),
        Command::Bench { only } => setup::run()
            .and_then(|()| setup::ensure_test_tools())
            .and_then(|()| setup::ensure_bench_tools())
            .and_then(|()| build())
            .and_then(|()| bench::run(only.as_deref())),
        Command::Test { args } => {
            let result = setup::run()
                .and_then(|()| setup::ensure_test_tools())
                .and_then(|()| build())
                .and_then(|()| test(&args));
            // Whether the tests passed or not, nothing of theirs outlives the run.
            leftovers::sweep(&util::workspace_root());
            result
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo build --release -p leaktracer`.
fn build() -> anyhow::Result<()> {
    util::step("building target/release/leaktracer");
    util::run(util::cargo().args(["build", "--release", "--package", "leaktracer"]))
}

/// Format check, clippy, the unit tests unprivileged, then every test as root against the
/// release binary.
fn test(args: &[String]) -> anyhow::Result<()> {
    // ensure_test_tools ran: tests that need those packages fail instead of skipping.
    // SAFETY: xtask is single-threaded; every command started from here inherits it.
    unsafe { std::env::set_var("LEAKTRACER_TEST_TOOLS", "installed") };
    util::step("cargo fmt --check");
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    util::step("cargo clippy -- -D warnings");
    // Every host package, the end-to-end tests included (they are not a default member).
    util::run(util::cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate is not a default member (it targets BPF): lint it for its own target.
    util::run(
        util::cargo()
            .args(["clippy", "--release", "--package", "tracer-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )?;
    unprivileged::run_unit_tests(args)?;
    util::step("cargo test as root (unit, kernel and end-to-end)");
    let binary = util::workspace_root().join("target/release/leaktracer");
    util::run(
        util::cargo()
            .args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "tracer-ebpf",
                "--",
            ])
            .args(args)
            .env("LEAKTRACER_BIN", binary),
    )
}
