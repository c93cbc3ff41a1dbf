//! The Debian unstable root the Python tests run python3.13, 3.14 and 3.15 in
//! (`target/python-roots/sid`): distribution interpreters (stripped, LTO-built) on a newer glibc
//! than the host's, in a file system of their own, as a container's are. Built once by
//! `debootstrap --variant=minbase` from the host's own Debian mirror, which serves the unstable
//! suite too.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

use crate::{
    apt_sources, mounts,
    setup::ensure_debian_tools,
    util::{step, workspace_root},
};

const SUITE: &str = "sid";

/// The interpreters the root holds (the tests' `sid python3.N`).
const INTERPRETERS: [&str; 3] = ["python3.13", "python3.14", "python3.15"];

/// What each interpreter must import to run the tests' service.
const CHECK: &str =
    "import asyncio, ctypes, hashlib, http.server, sys; print(sys.version.split()[0])";

/// Where the tests look for it (`tests/src/python.rs`, `debian_unstable_root`).
fn root() -> PathBuf {
    workspace_root().join("target/python-roots").join(SUITE)
}

/// Builds the root when it is missing or one of its interpreters does not run. It is built in
/// a sibling directory and renamed when complete, so an interrupted build is never taken as
/// done. Nothing stays mounted: debootstrap runs in a private mount namespace (its /proc and
/// /sys go with it), and whatever is still mounted below the root afterwards is unmounted.
pub fn ensure() -> anyhow::Result<()> {
    let root = root();
    if interpreters_run(&root).is_ok() {
        return Ok(());
    }
    let parent = root.parent().expect("the root has a parent");
    fs::create_dir_all(parent)?;
    let mirror = apt_sources::main_archive(Path::new("/etc/apt"), &apt_sources::host_codename())?;
    ensure_debian_tools(&[("debootstrap", "debootstrap")]).context("cannot install debootstrap")?;
    let building = parent.join(format!("{SUITE}.building"));
    discard(&building)?;
    let log = parent.join(format!("{SUITE}.log"));
    step(&format!(
        "building the Debian unstable root for the tests ({}) at {} from {mirror} (about two \
         minutes, once; log: {})",
        INTERPRETERS.join(", "),
        root.display(),
        log.display()
    ));
    let started = Instant::now();
    let output = File::create(&log)?;
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "debootstrap"])
        .arg("--variant=minbase")
        .arg(format!("--include={}", INTERPRETERS.join(",")))
        .arg(SUITE)
        .arg(&building)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .status()
        .context("cannot run unshare (util-linux)")?;
    let left = mounts::unmount_under(&building)?;
    if !left.is_empty() {
        step(&format!(
            "unmounted what debootstrap left mounted: {}",
            mounts::list(&left)
        ));
    }
    if !status.success() {
        bail!(
            "debootstrap {SUITE} from {mirror} failed ({status}): {}",
            last_error(&log)
        );
    }
    interpreters_run(&building)?;
    discard(&root)?;
    fs::rename(&building, &root)?;
    step(&format!(
        "built {} in {:.0} s",
        root.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Each interpreter runs in `root` (with `chroot`) and imports what the tests use.
fn interpreters_run(root: &Path) -> anyhow::Result<()> {
    for python in INTERPRETERS {
        let program = Path::new("/usr/bin").join(python);
        if !root.join(program.strip_prefix("/")?).exists() {
            bail!("{} has no {}", root.display(), program.display());
        }
        let out = Command::new("chroot")
            .arg(root)
            .arg(&program)
            .args(["-c", CHECK])
            .stdin(Stdio::null())
            .output()
            .context("cannot run chroot")?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let wanted = python.trim_start_matches("python");
        let same_minor = version == wanted || version.starts_with(&format!("{wanted}."));
        if !out.status.success() || !same_minor {
            bail!(
                "chroot {} {} does not run ({}): {}",
                root.display(),
                program.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Removes a root (a symlink to one: the link alone), unmounting what is below it first.
fn discard(dir: &Path) -> anyhow::Result<()> {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Ok(fs::remove_file(dir)?);
    }
    let left = mounts::unmount_under(dir)?;
    if !left.is_empty() {
        step(&format!("unmounted {}", mounts::list(&left)));
    }
    fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// debootstrap's last error (`E: Couldn't find these debs: python3.15`), or its last line.
fn last_error(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("E: "))
        .or(lines.last())
        .map_or_else(|| "no output".to_string(), |l| l.to_string())
}
