//! Proof that a plain `cargo test` needs no privileges: the unit-test binaries of the default
//! members are built, then run as `nobody` with no capabilities at all. A test that needs root
//! must skip (saying why) rather than fail there.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::util::{self, step};

/// uid and gid of `nobody`, who owns nothing in the workspace or in /root.
const NOBODY: u32 = 65534;

/// One test executable and the directory cargo would run it in (its package's root).
struct TestBinary {
    executable: PathBuf,
    package_dir: PathBuf,
}

/// Builds the default members' test binaries and runs each of them as `nobody`.
pub fn run_unit_tests(args: &[String]) -> anyhow::Result<()> {
    step("unit tests as an unprivileged user (nobody, no capabilities)");
    let binaries = build_test_binaries()?;
    if binaries.is_empty() {
        bail!("cargo built no test binaries");
    }
    for binary in &binaries {
        ensure_reachable_by_others(&binary.executable)?;
        step(&format!("as nobody: {}", binary.executable.display()));
        util::run(
            Command::new("setpriv")
                .arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={NOBODY}"))
                .args(["--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
                .arg(&binary.executable)
                .args(args)
                .current_dir(&binary.package_dir)
                // Nothing of root's may be needed: point HOME where nobody can write.
                .env("HOME", "/nonexistent"),
        )?;
    }
    Ok(())
}

/// `cargo test --release --no-run` for the default members; the executables it reports.
fn build_test_binaries() -> anyhow::Result<Vec<TestBinary>> {
    let out = util::cargo()
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let (Some(executable), Some(manifest)) = (
            message["executable"].as_str(),
            message["manifest_path"].as_str(),
        ) else {
            continue;
        };
        binaries.push(TestBinary {
            executable: PathBuf::from(executable),
            package_dir: Path::new(manifest)
                .parent()
                .context("a manifest path has a directory")?
                .to_path_buf(),
        });
    }
    Ok(binaries)
}

/// Fails, naming the culprit, when `nobody` could not run `path`: every directory on the way
/// needs o+x and the file o+rx (a umask of 077 on the target directory breaks this).
fn ensure_reachable_by_others(path: &Path) -> anyhow::Result<()> {
    let file_mode = std::fs::metadata(path)?.permissions().mode();
    if file_mode & 0o005 != 0o005 {
        bail!(
            "{} is not readable and executable by other users (mode {:o}): the unit tests \
             cannot be run unprivileged",
            path.display(),
            file_mode & 0o777
        );
    }
    for dir in path.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            bail!(
                "{} is not searchable by other users (mode {:o}): the unit tests cannot be \
                 run unprivileged from there",
                dir.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}
