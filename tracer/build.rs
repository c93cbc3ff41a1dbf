//! Compiles `tracer-ebpf` for the BPF target and leaves the object in OUT_DIR, where
//! `src/attach/probes.rs` embeds it. `AYA_BUILD_SKIP=1` skips it (clippy, docs).
//!
//! The eBPF crate is built by a cargo of its own (it targets `bpfel-unknown-none` with
//! `-Z build-std=core`, which the stable toolchain accepts under `RUSTC_BOOTSTRAP=1`). Its
//! output is kept, not echoed: a good build says nothing beyond cargo's own progress line
//! (every line of a child build would otherwise reach the terminal as a `warning:`), and a
//! failed one prints it in full. Its warnings are for `cargo xtask test`, whose clippy run on
//! the eBPF crate refuses them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// The eBPF crate's binary target (its `[[bin]]` name).
const OBJECT: &str = "tracer";

fn main() {
    if let Err(e) = build() {
        // One line after the child's own output, without a backtrace of this script.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn build() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().expect("tracer/ has a parent");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for dir in ["tracer-ebpf", "tracer-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=LEAKTRACER_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let object = out_dir.join(OBJECT);
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // Nothing built: an empty object lets the crate compile (clippy, docs); loading it
        // then fails with a message saying how to rebuild.
        println!("cargo:warning=AYA_BUILD_SKIP is set: the eBPF programs are not built");
        std::fs::write(&object, [])?;
        return Ok(());
    }
    let built = build_ebpf(workspace, &out_dir.join("ebpf-target"))?;
    std::fs::copy(&built, &object)
        .with_context(|| format!("cannot copy {} to {}", built.display(), object.display()))?;
    Ok(())
}

/// Builds the eBPF crate into `target_dir` (apart from the outer build's, which cargo locks)
/// and returns the object's path.
fn build_ebpf(workspace: &Path, target_dir: &Path) -> anyhow::Result<PathBuf> {
    let toolchain =
        std::env::var("LEAKTRACER_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".to_string());
    let target = "bpfel-unknown-none";
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    // rustup picks the toolchain when it is there; otherwise the cargo on PATH builds.
    let mut cargo = if Command::new("rustup").arg("--version").output().is_ok() {
        let mut rustup = Command::new("rustup");
        rustup.args(["run", &toolchain, "cargo"]);
        rustup
    } else {
        Command::new("cargo")
    };
    cargo
        .current_dir(workspace)
        .args(["build", "--package", "tracer-ebpf", "--bins", "--release"])
        .args(["--target", target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        // The programs' BTF (`--btf`) and the architecture their register access is for.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{arch}\""),
                "-Cdebuginfo=2".to_string(),
                "-Clink-arg=--btf".to_string(),
            ]
            .join("\x1f"),
        )
        // The outer build's compiler is the host's; the child picks its own.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    let output = cargo
        .output()
        .with_context(|| format!("cannot run {cargo:?}"))?;
    if !output.status.success() {
        // A build script's stderr is shown in full when it fails.
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        bail!(
            "building the eBPF programs failed ({}); run `cargo xtask setup` if bpf-linker or rust-src is missing",
            output.status
        );
    }
    Ok(target_dir.join(target).join("release").join(OBJECT))
}
