//! Writing a report's files: which ones were asked for, each written atomically, so a reader
//! (or a crash) never sees half a file and a failed run leaves the previous file as it was.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::Context;

use super::{Report, flamegraph, html, pprof};

/// The files a report is rendered to, with the text report on stdout.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub json: Option<PathBuf>,
    pub folded: Option<PathBuf>,
    pub flamegraph: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub pprof: Option<PathBuf>,
    /// Stacks shown in the text report.
    pub top: usize,
}

impl Report {
    /// Writes every requested file (atomically), reporting each on stderr.
    pub fn write_files(&self, outputs: &Outputs) -> anyhow::Result<()> {
        let written = |path: &PathBuf| eprintln!("leaktracer: wrote {}", path.display());
        if let Some(path) = &outputs.json {
            write_atomic(path, |w| {
                serde_json::to_writer_pretty(&mut *w, self)?;
                w.write_all(b"\n")
            })?;
            written(path);
        }
        if let Some(path) = &outputs.folded {
            write_atomic(path, |w| {
                for line in self.folded_lines() {
                    writeln!(w, "{line}")?;
                }
                Ok(())
            })?;
            written(path);
        }
        if let Some(path) = &outputs.flamegraph {
            write_atomic(path, |w| flamegraph::write_svg(self, &self.title(), w))?;
            written(path);
        }
        if let Some(path) = &outputs.html {
            write_atomic(path, |w| html::write(self, w))?;
            written(path);
        }
        if let Some(path) = &outputs.pprof {
            write_atomic(path, |w| pprof::write(self, w))?;
            written(path);
        }
        Ok(())
    }
}

/// Writes `path` by writing a temporary file next to it and renaming it into place.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> io::Result<()> {
        let mut file = io::BufWriter::new(fs::File::create(&temp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&temp);
        return Err(err).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = std::env::temp_dir().join(format!("lt-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.json");
        write_atomic(&path, |w| w.write_all(b"first")).unwrap();
        let failed = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left behind"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_error() {
        let err =
            write_atomic(Path::new("/nonexistent-dir/x.json"), |w| w.write_all(b"x")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-dir/x.json"));
    }
}
