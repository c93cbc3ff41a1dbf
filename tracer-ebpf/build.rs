//! BPF v3 code (bpf-linker does the code generation): 32-bit subregisters and the atomic
//! compare-and-exchange the record table claims slots with (kernel 5.12+).
fn main() {
    println!("cargo:rustc-link-arg=--cpu-features=+alu32");
}
