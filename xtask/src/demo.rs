//! `cargo xtask demo`: trace the bundled leaking server, then the bundled leaking Python
//! service, by pid, the way an operator would.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context;

use crate::util::{self, step, workspace_root};

pub fn run(duration: &str) -> anyhow::Result<()> {
    trace_c_server(duration)?;
    trace_python_service(duration)
}

/// The Python service (`xtask/demo/leaky_service.py`): its leak named by Python function and
/// line, under the interpreter's own C frames.
fn trace_python_service(duration: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    let python = "python3";
    anyhow::ensure!(
        util::on_path(python),
        "no python3 on PATH for the Python demo (cargo xtask setup installs Debian's)"
    );
    let mut child = Command::new(python)
        .arg(root.join("xtask/demo/leaky_service.py"))
        .stdout(Stdio::inherit())
        .spawn()
        .context("cannot start the demo service")?;
    std::thread::sleep(Duration::from_millis(800));
    step(&format!(
        "tracing the demo Python service (pid {}) for {duration}: leaktracer trace --pid {} --duration {duration} --interval 1s --flamegraph py-leaks.svg --json py-leaks.json --html py-leaks.html",
        child.id(),
        child.id()
    ));
    let traced = util::run(
        Command::new(root.join("target/release/leaktracer"))
            .args([
                "trace",
                "--pid",
                &child.id().to_string(),
                "--duration",
                duration,
            ])
            .args([
                "--interval",
                "1s",
                "--flamegraph",
                "py-leaks.svg",
                "--json",
                "py-leaks.json",
                "--html",
                "py-leaks.html",
                "--top",
                "3",
            ]),
    );
    let _ = child.kill();
    let _ = child.wait();
    traced?;
    let here = std::env::current_dir()?;
    step(&format!(
        "done: the Python service's leak is in {} (and {}, {})",
        here.join("py-leaks.html").display(),
        here.join("py-leaks.svg").display(),
        here.join("py-leaks.json").display()
    ));
    Ok(())
}

/// The C server (`xtask/demo/leaky_server.c`).
fn trace_c_server(duration: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    let source = root.join("xtask/demo/leaky_server.c");
    let out_dir = root.join("target/demo");
    std::fs::create_dir_all(&out_dir)?;
    let server = out_dir.join("leaky-server");
    step("compiling the demo server (with frame pointers and debug info)");
    util::run(
        Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&server)
            .arg(&source),
    )?;

    let mut child = Command::new(&server)
        .stdout(Stdio::inherit())
        .spawn()
        .context("cannot start the demo server")?;
    std::thread::sleep(Duration::from_millis(300));
    step(&format!(
        "tracing the demo server (pid {}) for {duration}: leaktracer trace --pid {} --duration {duration} --interval 1s --flamegraph leaks.svg --json leaks.json --html leaks.html",
        child.id(),
        child.id()
    ));
    let traced = util::run(
        Command::new(root.join("target/release/leaktracer"))
            .args([
                "trace",
                "--pid",
                &child.id().to_string(),
                "--duration",
                duration,
            ])
            .args([
                "--interval",
                "1s",
                "--flamegraph",
                "leaks.svg",
                "--json",
                "leaks.json",
                "--html",
                "leaks.html",
                "--top",
                "5",
            ]),
    );
    let _ = child.kill();
    let _ = child.wait();
    traced?;
    let here = std::env::current_dir()?;
    step(&format!(
        "done: open {} (or {}) in a browser; the JSON is {}",
        here.join("leaks.html").display(),
        here.join("leaks.svg").display(),
        here.join("leaks.json").display()
    ));
    Ok(())
}
