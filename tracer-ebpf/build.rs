//! BPF v3 code (bpf-linker does the code generation): 32-bit subregisters and the atomic
//! compare-and-exchange the record table claims slots with (kernel 5.12+). And the
//! architecture whose registers the programs read (`src/arch`): aya-ebpf's own choice (its
//! `pt_regs`), `--cfg bpf_target_arch` when given, else `AYA_BPF_TARGET_ARCH`, else the host's.
fn main() {
    println!("cargo:rustc-link-arg=--cpu-features=+alu32");
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(any()))");
    println!("cargo:rerun-if-env-changed=AYA_BPF_TARGET_ARCH");
    if std::env::var_os("CARGO_CFG_BPF_TARGET_ARCH").is_some() {
        return;
    }
    let arch = std::env::var("AYA_BPF_TARGET_ARCH").unwrap_or_else(|_| {
        let host = std::env::var("HOST").expect("cargo sets HOST for build scripts");
        host.split('-').next().unwrap_or_default().to_string()
    });
    println!("cargo:rustc-cfg=bpf_target_arch=\"{arch}\"");
}
