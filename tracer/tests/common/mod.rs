//! What the source-reading tests share.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file below `dir`, into `files`.
pub fn source_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}
