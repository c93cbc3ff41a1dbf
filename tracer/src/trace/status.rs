//! The live status line: rewritten in place on a terminal, one line per sample otherwise.

use std::io::{IsTerminal, Write};

use crate::units::{human_bytes, human_rate};

/// What the status line shows at one sample.
pub struct Status<'a> {
    pub elapsed_secs: f64,
    pub outstanding_bytes: u64,
    pub growth_bytes_per_sec: f64,
    pub rss_bytes: Option<u64>,
    /// Processes traced (shown when more than one).
    pub processes: usize,
    /// Frame 0 of the fastest-growing stack, with its rate.
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

    pub fn show(&mut self, line: &str) {
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
