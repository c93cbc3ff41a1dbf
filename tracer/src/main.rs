//! The `leaktracer` command. Everything lives in the library; this only reports the outcome.

use std::process::ExitCode;

fn main() -> ExitCode {
    match leaktracer::cli::run() {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes, outermost first.
            // Escaped: it may name a path or a process from the target.
            leaktracer::terminal::eprint_line(format_args!("leaktracer: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
