//! The `leaktracer` command. Everything lives in the library; this only reports the outcome.

use std::process::ExitCode;

fn main() -> ExitCode {
    match leaktracer::cli::run() {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes, outermost first.
            eprintln!("leaktracer: {err:#}");
            ExitCode::FAILURE
        }
    }
}
