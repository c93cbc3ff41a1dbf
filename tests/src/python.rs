//! The CPython interpreters the Python tests run against.

use std::path::PathBuf;

/// The interpreters this machine kind has: Debian's stripped python3.11 and pyenv's builds
/// (`$PYENV_ROOT`, else `/root/.pyenv`; interpreter in libpython). Each missing one is named
/// and skipped.
pub fn python_interpreters() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let candidates = [
        PathBuf::from("/usr/bin/python3.11"),
        pyenv.join("versions/3.11.7/bin/python3.11"),
        pyenv.join("versions/3.12.1/bin/python3.12"),
        pyenv.join("versions/3.13.0/bin/python3.13"),
    ];
    for candidate in candidates {
        if candidate.exists() {
            found.push(candidate);
        } else {
            eprintln!("SKIP for {}: not installed", candidate.display());
        }
    }
    found
}
