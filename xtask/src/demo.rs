//! `cargo xtask demo`: trace the bundled leaking server, then the bundled leaking Python
//! service, by pid, the way an operator would.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;

use crate::util::{self, step, workspace_root};

pub fn run(duration: &str) -> anyhow::Result<()> {
    trace_c_server(duration)?;
    trace_python_service(duration)
}

/// The C server (`xtask/demo/leaky_server.c`), built with frame pointers and debug info.
fn trace_c_server(duration: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    let out_dir = root.join("target/demo");
    std::fs::create_dir_all(&out_dir)?;
    let server = out_dir.join("leaky-server");
    step("compiling the demo server (with frame pointers and debug info)");
    util::run(
        Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&server)
            .arg(root.join("xtask/demo/leaky_server.c")),
    )?;
    let child = Command::new(&server)
        .stdout(Stdio::inherit())
        .spawn()
        .context("cannot start the demo server")?;
    // Its leak is a dropped pointer: the reachability scan at the end says "definitely lost".
    trace_by_pid(
        child,
        Duration::from_millis(300),
        "demo server",
        "leaks",
        5,
        duration,
        &["--reachability"],
    )
}

/// The Python service (`xtask/demo/leaky_service.py`): its leak named by Python function and
/// line, under the C frames that allocated.
fn trace_python_service(duration: &str) -> anyhow::Result<()> {
    let python = "python3";
    anyhow::ensure!(
        util::on_path(python),
        "no python3 on PATH for the Python demo (cargo xtask setup installs Debian's)"
    );
    let child = Command::new(python)
        .arg(workspace_root().join("xtask/demo/leaky_service.py"))
        .stdout(Stdio::inherit())
        .spawn()
        .context("cannot start the demo service")?;
    let settle = Duration::from_millis(800);
    trace_by_pid(
        child,
        settle,
        "demo Python service",
        "py-leaks",
        3,
        duration,
        &[],
    )
}

/// Lets `child` start for `settle`, traces it by pid for `duration` into `<prefix>.svg`,
/// `.json` and `.html` in the current directory (the text report showing `top` stacks), then
/// stops it. `extra` flags go to leaktracer too.
fn trace_by_pid(
    mut child: Child,
    settle: Duration,
    what: &str,
    prefix: &str,
    top: usize,
    duration: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    std::thread::sleep(settle);
    let pid = child.id().to_string();
    let (svg, json, html) = (
        format!("{prefix}.svg"),
        format!("{prefix}.json"),
        format!("{prefix}.html"),
    );
    step(&format!(
        "tracing the {what} (pid {pid}) for {duration}: leaktracer trace --pid {pid} --duration {duration} --interval 1s --flamegraph {svg} --json {json} --html {html}{}",
        extra.iter().map(|f| format!(" {f}")).collect::<String>()
    ));
    let traced = util::run(
        Command::new(workspace_root().join("target/release/leaktracer"))
            .args(["trace", "--pid", &pid, "--duration", duration])
            .args(["--interval", "1s", "--flamegraph", &svg, "--json", &json])
            .args(["--html", &html, "--top", &top.to_string()])
            .args(extra),
    );
    let _ = child.kill();
    let _ = child.wait();
    traced?;
    let here = std::env::current_dir()?;
    step(&format!(
        "done: open {} (or {}) in a browser; the JSON is {}",
        here.join(&html).display(),
        here.join(&svg).display(),
        here.join(&json).display()
    ));
    Ok(())
}
