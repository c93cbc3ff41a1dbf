//! The layering of the kernel side (`tracer-ebpf/src`), checked from its source: registers are
//! named in its `arch` module only (another architecture is one more file there), and the
//! native walker (`stack.rs`, `unwind.rs`) names no language runtime: it stops where a runtime
//! registered code and hands over through `runtimes/`. Read as text, so it needs no build.

use std::{
    fs,
    path::{Path, PathBuf},
};

mod common;
use common::source_files;

/// x86-64's register names, as `pt_regs` and the ABIs spell them (any width), and its thread
/// pointer's.
const X86_REGISTERS: &[&str] = &[
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags",
    "fsbase", "gsbase", "fs_base", "gs_base",
];

/// Words that name a language runtime or its parts.
const RUNTIME_WORDS: &[&str] = &["python", "eval_loop", "evalloop", "pymalloc", "runtimeid"];

fn ebpf_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer-ebpf/src")
}

/// The words of `text`, lowercased: identifiers and their `_`-separated parts (so `orig_rax`
/// and `FSBASE_OFFSET` count, `userspace` does not).
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let token = token.to_ascii_lowercase();
        if token.is_empty() {
            continue;
        }
        words.extend(token.split('_').filter(|p| !p.is_empty()).map(String::from));
        words.push(token);
    }
    words
}

/// Where `text` (file `path`) names one of `names`, "path:line: name" for each: as a word
/// (see [`words`]), or with `anywhere` inside any word (`PythonProcess` names `python`).
fn uses(path: &Path, text: &str, names: &[&str], anywhere: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let words = words(line);
        for name in names {
            let hit = if anywhere {
                line.to_ascii_lowercase().contains(name)
            } else {
                words.iter().any(|w| w == name)
            };
            if hit {
                found.push(format!("{}:{}: {name}", path.display(), number + 1));
            }
        }
    }
    found
}

#[test]
fn registers_are_named_in_the_arch_module_only() {
    let src = ebpf_src();
    let mut files = Vec::new();
    source_files(&src, &mut files);
    assert!(files.len() > 10, "no sources found under {}", src.display());
    let arch = src.join("arch");
    let mut found = Vec::new();
    for path in files.iter().filter(|p| !p.starts_with(&arch)) {
        found.extend(uses(
            path,
            &fs::read_to_string(path).unwrap(),
            X86_REGISTERS,
            false,
        ));
    }
    assert!(
        found.is_empty(),
        "x86-64 registers named outside tracer-ebpf/src/arch/:\n{}",
        found.join("\n")
    );
    // The check sees them where they belong.
    let x86 = fs::read_to_string(arch.join("x86_64.rs")).unwrap();
    for register in ["rip", "rsp", "rbp", "rdi", "r10", "rax"] {
        assert!(
            !uses(&arch, &x86, &[register], false).is_empty(),
            "{register} not found in arch/x86_64.rs: the check is broken"
        );
    }
}

#[test]
fn the_native_walker_names_no_runtime() {
    let src = ebpf_src();
    for file in ["stack.rs", "unwind.rs"] {
        let path = src.join(file);
        let found = uses(
            &path,
            &fs::read_to_string(&path).unwrap(),
            RUNTIME_WORDS,
            true,
        );
        assert!(
            found.is_empty(),
            "the native walker names a runtime (hand over through runtimes/ instead):\n{}",
            found.join("\n")
        );
    }
    // The check sees a runtime where it belongs.
    let dispatch = src.join("runtimes/mod.rs");
    let text = fs::read_to_string(&dispatch).unwrap();
    assert!(!uses(&dispatch, &text, RUNTIME_WORDS, true).is_empty());
}
