//! Compiles `tracer-ebpf` for the BPF target and leaves the object in OUT_DIR, where
//! `src/attach/probes.rs` embeds it. `AYA_BUILD_SKIP=1` skips it (clippy, docs).

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .expect("tracer/ has a parent");
    let ebpf_dir = workspace.join("tracer-ebpf");
    let common_dir = workspace.join("tracer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-env-changed=LEAKTRACER_EBPF_TOOLCHAIN");
    // The eBPF crate needs `-Z build-std=core`; aya-build adds it when RUSTC_BOOTSTRAP=1, which
    // lets the stable toolchain accept it. Only the child cargo sees this variable.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let toolchain =
        std::env::var("LEAKTRACER_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".to_string());
    let ebpf_dir = ebpf_dir.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )?;
    // With AYA_BUILD_SKIP nothing was built: leave an empty object so the crate still compiles
    // (clippy, docs); loading it then fails with a message saying how to rebuild.
    let object = Path::new(&std::env::var("OUT_DIR")?).join("tracer");
    if !object.exists() {
        std::fs::write(&object, [])?;
    }
    Ok(())
}
