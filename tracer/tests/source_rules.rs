//! Rules of `tracer/src` checked from the source text (comments and tests included), so they
//! need no build of anything: only `arch/` names a processor's registers, and every `unsafe`
//! says why it is sound in a `SAFETY:` comment.

use std::{
    fs,
    path::{Path, PathBuf},
};

mod common;
use common::source_files;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every source file of the crate, with its path relative to `src/` and its text.
fn sources() -> Vec<(String, String)> {
    let src = src();
    let mut paths = Vec::new();
    source_files(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&src).unwrap().display().to_string();
            (relative, fs::read_to_string(&path).unwrap())
        })
        .collect()
}

/// x86 register names, matched as whole words in any case (`%rdi`, `Register::RDI`, `rsp+8`).
const REGISTER_WORDS: &[&str] = &[
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "orig_rax",
    "fs_base", "gs_base",
];

/// Spellings that only architecture-specific code has (the CFI register map, the decoder, the
/// register sets, inline assembly, per-architecture builds).
const ARCH_ONLY: &[&str] = &[
    "X86_64::",
    "iced_x86",
    "XSTATE",
    "user_regs_struct",
    "std::arch::",
    "asm!",
    "__cpuid",
    "target_arch",
];

/// What `text` names that only `arch/` may: `(line number, name)`.
fn arch_names(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let lower = word.to_ascii_lowercase();
            let vector = ["xmm", "ymm", "zmm"].iter().any(|prefix| {
                lower
                    .strip_prefix(prefix)
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            });
            if vector || REGISTER_WORDS.contains(&lower.as_str()) {
                found.push((index + 1, word.to_string()));
            }
        }
        for spelling in ARCH_ONLY {
            if line.contains(spelling) {
                found.push((index + 1, spelling.to_string()));
            }
        }
    }
    found
}

#[test]
fn only_arch_names_registers() {
    let mut offenders = Vec::new();
    let mut in_arch = 0;
    for (path, text) in sources() {
        let names = arch_names(&text);
        if path.starts_with("arch/") {
            in_arch += names.len();
            continue;
        }
        offenders.extend(
            names
                .into_iter()
                .map(|(line, name)| format!("{path}:{line}: {name}")),
        );
    }
    assert!(
        offenders.is_empty(),
        "architecture-specific names outside tracer/src/arch/ (move them into arch/x86_64.rs \
         behind an arch item): {offenders:#?}"
    );
    // Guards against a scan that finds nothing: arch/ itself names them.
    assert!(in_arch > 20, "only {in_arch} names found in arch/");
}

#[test]
fn the_register_scan_tells_names_from_words() {
    let named = |text: &str| {
        arch_names(text)
            .into_iter()
            .map(|(_, name)| name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        named("// test %rdi,%rdi ; push %R12"),
        ["rdi", "rdi", "R12"]
    );
    assert_eq!(
        named("Register::RSP, fs_base, XMM0-15, ymm"),
        ["RSP", "fs_base", "XMM0", "ymm"]
    );
    assert_eq!(
        named("use iced_x86::Decoder; gimli::X86_64::RA"),
        ["X86_64::", "iced_x86"]
    );
    assert!(
        named("an ordinary description of /lib/x86_64-linux-gnu/libc.so.6, stripped").is_empty()
    );
}

/// `unsafe` uses in `text` with no `SAFETY:` comment (or, for an `unsafe fn`, a `# Safety`
/// section) on their line or in the comment lines just above the statement they are in:
/// `(line number, line)`.
fn unsafe_without_safety(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let code = |line: &str| -> String {
        let line = line.trim();
        match line.find("//") {
            Some(at) => line[..at].trim_end().to_string(),
            None => line.to_string(),
        }
    };
    let is_comment = |line: &str| line.trim_start().starts_with("//");
    let is_attribute = |line: &str| line.trim_start().starts_with("#[");
    let justifies = |line: &str| line.contains("SAFETY:") || line.contains("# Safety");
    let mut missing = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let has_unsafe = code(line)
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word == "unsafe");
        if !has_unsafe || justifies(line) {
            continue;
        }
        // Up to the statement's first line: over lines that continue onto the next one.
        let mut at = index;
        while at > 0 {
            let above = code(lines[at - 1]);
            let continues = !above.is_empty()
                && !is_comment(lines[at - 1])
                && !is_attribute(lines[at - 1])
                && !above.ends_with([';', '{', '}', ',']);
            if !continues {
                break;
            }
            at -= 1;
        }
        // Then the comment (and attribute) lines just above it.
        let mut justified = false;
        while at > 0 && (is_comment(lines[at - 1]) || is_attribute(lines[at - 1])) {
            justified |= justifies(lines[at - 1]);
            at -= 1;
        }
        if !justified {
            missing.push((index + 1, line.trim().to_string()));
        }
    }
    missing
}

#[test]
fn every_unsafe_says_why_it_is_sound() {
    let mut offenders = Vec::new();
    let mut uses = 0;
    for (path, text) in sources() {
        uses += text.matches("unsafe").count();
        offenders.extend(
            unsafe_without_safety(&text)
                .into_iter()
                .map(|(line, code)| format!("{path}:{line}: {code}")),
        );
    }
    assert!(
        offenders.is_empty(),
        "`unsafe` without a `// SAFETY:` comment just above its statement: {offenders:#?}"
    );
    assert!(
        uses > 20,
        "only {uses} uses of unsafe found: the scan is broken"
    );
}

#[test]
fn the_safety_scan_finds_what_lacks_a_reason() {
    let lacking = |text: &str| {
        unsafe_without_safety(text)
            .into_iter()
            .map(|(line, _)| line)
            .collect::<Vec<_>>()
    };
    // A reason on the line above, above the statement, or on the line itself.
    assert!(lacking("// SAFETY: no memory.\nlet pid = unsafe { getpid() };").is_empty());
    assert!(lacking("// SAFETY: whole.\nlet new =\n    unsafe { read(p) };").is_empty());
    assert!(lacking("events\n    // SAFETY: whole.\n    .push(unsafe { read(p) });").is_empty());
    assert!(lacking("let x = unsafe { f() }; // SAFETY: f has no preconditions.").is_empty());
    assert!(lacking("/// # Safety\n/// `p` is valid.\nunsafe fn f(p: *const u8) {}").is_empty());
    // None, or one for another statement.
    assert_eq!(lacking("let pid = unsafe { getpid() };"), [1]);
    assert_eq!(
        lacking("// SAFETY: one.\nunsafe { a() };\nunsafe { b() };"),
        [3]
    );
    assert_eq!(
        lacking(
            "// SAFETY: elsewhere.\nfoo();\nentries.extend(\n    it.map(|v| unsafe { v.read() }),\n);"
        ),
        [4]
    );
    // Words and comments that only mention it are not uses.
    assert!(lacking("// unsafe { x }\nlet unsafe_count = 1;").is_empty());
}
