//! The trace session stays a coordinator of small parts: no function in `tracer/src/trace/`
//! is longer than 80 lines (signature to closing brace), measured from the source. Read as
//! text, so it needs no build of anything.

use std::{fs, path::Path};

mod common;
use common::source_files;

/// The longest a function in `trace/` may be, in lines.
const MAX_LINES: usize = 80;

/// `text` with every comment, string and character literal blanked out (newlines kept), so
/// the braces left are the code's own.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let start = i;
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&chars, i) {
            // r"..", r#".."#, br#".."#: no escapes, ends at the quote and as many hashes.
            while chars[i] != '"' {
                i += 1;
            }
            i += 1;
            let closing: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while i < chars.len() && !chars[i..].starts_with(&closing) {
                i += 1;
            }
            i = (i + closing.len()).min(chars.len());
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
            continue;
        }
        let end = i.min(chars.len());
        out.extend(chars[start..end].iter().map(|c| blank(*c)));
    }
    out
}

/// At `i`, the start of a raw string (`r"`, `r#"`, `br#"`...): its number of hashes.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    let before = i.checked_sub(1).map(|b| chars[b]);
    if before.is_some_and(|b| b.is_alphanumeric() || b == '_') {
        return None;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    (chars.get(j + hashes) == Some(&'"')).then_some(hashes)
}

/// A quote at `i` opens a character literal (`'{'`, `'\n'`), not a lifetime (`'a`).
fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}

/// Every function with a body in `code` (as `code_only` leaves it): its name, the line its
/// `fn` is on (from 1) and its length in lines.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = code[from..].find("fn ") {
        let at = from + offset;
        from = at + 3;
        if at > 0 && is_ident(bytes[at - 1]) {
            continue;
        }
        let name: String = code[at + 3..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        // The signature ends at the body's brace, or at `;` for a declaration without one.
        let Some(end_of_signature) = code[at..].find(['{', ';']).map(|e| at + e) else {
            continue;
        };
        if bytes[end_of_signature] == b';' {
            continue;
        }
        let mut depth = 0;
        let mut close = None;
        for (i, b) in bytes.iter().enumerate().skip(end_of_signature) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.unwrap_or_else(|| panic!("fn {name} has no closing brace"));
        found.push((name, line_of(at), line_of(close) - line_of(at) + 1));
    }
    found
}

#[test]
fn no_function_in_trace_is_longer_than_80_lines() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/trace");
    let mut files = Vec::new();
    source_files(&dir, &mut files);
    files.sort();
    let mut measured = 0;
    let mut too_long = Vec::new();
    for file in &files {
        let code = code_only(&fs::read_to_string(file).unwrap());
        for (name, line, length) in functions(&code) {
            measured += 1;
            if length > MAX_LINES {
                too_long.push(format!(
                    "{}:{line} fn {name}: {length} lines",
                    file.strip_prefix(&dir).unwrap().display()
                ));
            }
        }
    }
    assert!(
        measured > 20,
        "only {measured} functions found in trace/: the parser is broken"
    );
    assert!(
        too_long.is_empty(),
        "functions in tracer/src/trace/ longer than {MAX_LINES} lines (split them into the session's parts):\n{}",
        too_long.join("\n")
    );
}

#[test]
fn braces_in_strings_comments_and_characters_are_not_counted() {
    let source = r##"
fn one<'a>(x: &'a str) -> usize {
    // a comment with a brace {
    let s = "a string with } and \" {";
    let r = r#"raw } "quoted" {"#;
    let c = '{';
    let d = '\'';
    /* block { /* nested } */ } */
    s.len() + r.len() + x.len()
}

trait Named {
    fn name(&self) -> String;
}

fn two() {}
"##;
    let found = functions(&code_only(source));
    assert_eq!(
        found,
        vec![("one".to_string(), 2, 9), ("two".to_string(), 16, 1)]
    );
}
