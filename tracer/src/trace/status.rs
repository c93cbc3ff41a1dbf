//! The live status line: rewritten in place on a terminal, one line per sample otherwise.

use std::io::{IsTerminal, Write};

use crate::{
    report::schema::Frame,
    terminal::escape,
    units::{human_bytes, human_rate},
};

/// The name a stack goes by in the status line: its first own frame (`own`, past the
/// allocator's plumbing), as reports name it; when that is native code and the stack has a
/// runtime's frames (Python's), the innermost runtime function too, which is where a Python
/// service's leak is (`_PyUnicode_JoinArray in handle (svc.py:4)`).
pub fn grower_name(frames: &[Frame], own: usize) -> String {
    let Some(first) = frames.get(own) else {
        return "[unknown stack]".to_string();
    };
    let runtime = frames[own..].iter().find(|f| !f.kind.is_native());
    match runtime {
        Some(p) if first.kind.is_native() => {
            let place = match (&p.file, p.line) {
                (Some(file), Some(line)) => {
                    let name = file.rsplit('/').next().unwrap_or(file);
                    format!(" ({name}:{line})")
                }
                _ => String::new(),
            };
            format!("{} in {}{place}", first.function, p.function)
        }
        _ => first.function.clone(),
    }
}

/// What the status line shows at one sample.
pub struct Status<'a> {
    pub elapsed_secs: f64,
    pub outstanding_bytes: u64,
    pub growth_bytes_per_sec: f64,
    pub rss_bytes: Option<u64>,
    /// Processes traced (shown when more than one).
    pub processes: usize,
    /// The fastest-growing stack's name ([`grower_name`]), with its rate.
    pub top_grower: Option<(&'a str, f64)>,
}

impl Status<'_> {
    /// The line, e.g. `[   10s] outstanding 370.00 KiB (+36.93 KiB/s), rss 1.85 MiB, top grower: ...`.
    pub fn render(&self) -> String {
        let processes = if self.processes > 1 {
            format!(", {} processes", self.processes)
        } else {
            String::new()
        };
        format!(
            "[{:>5.0}s] outstanding {} ({}), rss {}{processes}, top grower: {}",
            self.elapsed_secs,
            human_bytes(self.outstanding_bytes),
            human_rate(self.growth_bytes_per_sec),
            self.rss_bytes.map_or("-".to_string(), human_bytes),
            self.top_grower
                .map_or("none".to_string(), |(name, rate)| format!(
                    "{name} {}",
                    human_rate(rate)
                ))
        )
    }
}

/// The status line on stderr.
pub struct StatusLine {
    pub quiet: bool,
    terminal: bool,
    shown: bool,
}

impl StatusLine {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Shows `line`, escaped: it names functions and files of the target.
    pub fn show(&mut self, line: &str) {
        let line = escape(line);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "leaktracer: {line}");
        }
        let _ = err.flush();
        self.shown = true;
    }

    /// Ends an in-place line so what follows starts on its own.
    pub fn finish(&mut self) {
        if self.terminal && self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtimes::RuntimeId;

    fn frame(function: &str, kind: RuntimeId, place: Option<(&str, u32)>) -> Frame {
        Frame {
            function: function.to_string(),
            module: String::new(),
            file: place.map(|(f, _)| f.to_string()),
            line: place.map(|(_, l)| l),
            address: 0,
            inlined: false,
            plumbing: false,
            kind,
        }
    }

    #[test]
    fn a_grower_is_named_by_its_first_own_frame_and_its_innermost_python_function() {
        let native = frame("remember_session", RuntimeId::NATIVE, None);
        let malloc = frame("malloc", RuntimeId::NATIVE, None);
        assert_eq!(
            grower_name(&[malloc.clone(), native.clone()], 1),
            "remember_session"
        );
        let stripped = frame("python3.11+0x22d099", RuntimeId::NATIVE, None);
        let python = RuntimeId::from_name("python").unwrap();
        let handle = frame("handle", python, Some(("/srv/svc.py", 4)));
        let module = frame("<module>", python, Some(("/srv/svc.py", 11)));
        assert_eq!(
            grower_name(&[stripped, native.clone(), handle.clone(), module], 0),
            "python3.11+0x22d099 in handle (svc.py:4)"
        );
        // Python frame first (pymalloc folded as plumbing): it names itself.
        assert_eq!(grower_name(&[malloc, handle.clone(), native], 1), "handle");
        assert_eq!(grower_name(&[handle], 1), "[unknown stack]");
    }

    #[test]
    fn status_names_the_top_grower_and_several_processes() {
        let status = Status {
            elapsed_secs: 10.2,
            outstanding_bytes: 378880,
            growth_bytes_per_sec: 37816.3,
            rss_bytes: Some(1940000),
            processes: 3,
            top_grower: Some(("remember_session", 37816.3)),
        };
        assert_eq!(
            status.render(),
            "[   10s] outstanding 370.00 KiB (+36.93 KiB/s), rss 1.85 MiB, 3 processes, top grower: remember_session +36.93 KiB/s"
        );
        let idle = Status {
            processes: 1,
            rss_bytes: None,
            top_grower: None,
            ..status
        };
        assert!(
            idle.render().ends_with("rss -, top grower: none"),
            "{}",
            idle.render()
        );
    }
}
