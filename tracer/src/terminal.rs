//! Text bound for a terminal. What leaktracer prints carries names it does not choose: a
//! target's comm and command line (anyone can set them, `prctl(PR_SET_NAME)`), paths of the
//! objects it maps, symbol names, Python file and function names, cgroup paths, and the paths a
//! user gave. A control character in any of them would reach root's terminal and drive it (ESC
//! clears the screen, sets the title, remaps keys), and a newline would split a line that
//! scripts read. Every line printed goes through [`escape`], which shows control characters as
//! `\x1b`-style escapes instead. (The JSON keeps the raw strings; HTML and SVG escape their own.)

use std::{borrow::Cow, fmt, io::Write};

/// `text` with every control character (C0, DEL, C1: newlines and tabs too) shown as an escape:
/// `\x1b` for one below 0x80, `\u{9b}` above. Anything else is left as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if c.is_control() && c.is_ascii() => {
                escaped.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Prints one line to stderr, its control characters escaped (see [`escape`]).
pub fn eprint_line(line: fmt::Arguments) {
    let text = line.to_string();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", escape(&text));
}

/// `eprintln!` for lines that carry anything from a target or a user: escaped (see [`escape`]).
macro_rules! eprintln_escaped {
    ($($arg:tt)*) => {
        $crate::terminal::eprint_line(format_args!($($arg)*))
    };
}
pub(crate) use eprintln_escaped;

/// Text for a terminal built a line at a time, each line escaped whole: no name in it can
/// split it or drive the terminal.
#[derive(Debug, Default)]
pub struct TerminalText(String);

impl TerminalText {
    /// Adds one line (a newline in `line` is escaped, not kept).
    pub fn line(&mut self, line: fmt::Arguments) {
        let text = line.to_string();
        self.0.push_str(&escape(&text));
        self.0.push('\n');
    }

    /// Adds an empty line.
    pub fn blank(&mut self) {
        self.0.push('\n');
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_as_escapes() {
        assert_eq!(
            escape("\x1b[2J\x1b]0;X\x07"),
            "\\x1b[2J\\x1b]0;X\\x07",
            "a comm set to clear the screen and retitle the terminal"
        );
        assert_eq!(escape("a\nb.json"), "a\\x0ab.json");
        assert_eq!(escape("tab\there\r\x7f"), "tab\\x09here\\x0d\\x7f");
        // C1 controls (CSI is U+009B) too; printable non-ASCII stays.
        assert_eq!(escape("\u{9b}31m é…"), "\\u{9b}31m é…");
        assert!(matches!(escape("plain/path.py:3"), Cow::Borrowed(_)));
    }

    #[test]
    fn each_line_is_escaped_whole() {
        let mut text = TerminalText::default();
        text.line(format_args!("process: {} [{}]", "evil\nname", "\x1b[2J"));
        text.blank();
        text.line(format_args!("next"));
        assert_eq!(
            text.into_string(),
            "process: evil\\x0aname [\\x1b[2J]\n\nnext\n"
        );
    }
}
