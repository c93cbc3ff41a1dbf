//! Writing a report's files, safely: root writes them, so every destination is checked before
//! any work (a regular file or nothing, never a device, FIFO, directory or link; a directory
//! that takes a new file; no two outputs on one file, none over an input), and each is written
//! through a randomly named temporary file created exclusively beside it, then renamed: a reader
//! (or a crash) never sees half a file and a failed run leaves the previous file as it was. A
//! file replaced keeps its permissions (and, written by root, its owner).

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::Context;

use super::{Report, flamegraph, html, plumbing::Plumbing, pprof};
use crate::terminal::eprintln_escaped;

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
    /// Which leading frames are allocator plumbing (`--plumbing`, `--keep-plumbing`): marked in
    /// the JSON, folded in the text, folded stacks, flamegraph and HTML (pprof keeps them).
    pub plumbing: Plumbing,
}

impl Outputs {
    /// The requested files with the flag that names each, in the order they are written.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        [
            ("--json", &self.json),
            ("--folded", &self.folded),
            ("--flamegraph", &self.flamegraph),
            ("--html", &self.html),
            ("--pprof", &self.pprof),
        ]
        .into_iter()
        .filter_map(|(flag, path)| path.as_deref().map(|p| (flag, p)))
        .collect()
    }

    /// True when one of the files goes to stdout (`-`): the text report then goes to stderr.
    pub fn uses_stdout(&self) -> bool {
        self.files().iter().any(|(_, path)| is_stdout(path))
    }

    /// Checks, before any work, that every file can be written where it is asked for: see
    /// [`check_destinations`]. `inputs` are files the run reads (recordings), which no output
    /// may overwrite.
    pub fn check(&self, inputs: &[&Path]) -> Result<(), OutputError> {
        check_destinations(&self.files(), inputs)
    }
}

impl Report {
    /// Writes every requested file (each atomically), reporting each on stderr. A file that
    /// cannot be written does not stop the others: the error names every one that failed.
    pub fn write_files(&self, outputs: &Outputs) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for (flag, path) in outputs.files() {
            let result = write_file(flag, path, |w| match flag {
                "--json" => {
                    serde_json::to_writer_pretty(&mut *w, self)?;
                    w.write_all(b"\n")
                }
                "--folded" => {
                    for line in self.folded_lines() {
                        writeln!(w, "{line}")?;
                    }
                    Ok(())
                }
                "--flamegraph" => flamegraph::write_svg(self, &self.title(), w),
                "--html" => html::write(self, w),
                _ => pprof::write(self, w),
            });
            match result {
                Ok(()) if is_stdout(path) => {}
                Ok(()) => eprintln_escaped!("leaktracer: wrote {}", path.display()),
                Err(err) => failed.push(format!("{err:#}")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", failed.join("; "))
        }
    }
}

/// `-`: standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Why an output file cannot be written where it was asked for.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "{flag} {path}: {what}, not a regular file; leaktracer writes only regular files (use `-` for stdout)"
    )]
    NotARegularFile {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error(
        "{flag} {path} is a symbolic link; leaktracer does not write through links: name the file itself"
    )]
    Symlink { flag: &'static str, path: PathBuf },
    #[error("{flag} {path} is not a file name")]
    NotAFileName { flag: &'static str, path: PathBuf },
    #[error("{flag} {path}: cannot write in {dir}: {reason}")]
    Unwritable {
        flag: &'static str,
        path: PathBuf,
        dir: PathBuf,
        reason: io::Error,
    },
    #[error("{flag} {path}: {reason}")]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        reason: io::Error,
    },
    #[error("{first} and {second} both name {path}: give each output its own file")]
    Overlap {
        first: &'static str,
        second: &'static str,
        path: PathBuf,
    },
    #[error("{flag} {path} is the recording being read: write to another file")]
    OverwritesInput { flag: &'static str, path: PathBuf },
    #[error("{first} and {second} both write to stdout (`-`): only one output can")]
    TwoOnStdout {
        first: &'static str,
        second: &'static str,
    },
}

/// What a file system object is, when it is not a regular file.
fn not_regular(file_type: fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_char_device() || file_type.is_block_device() {
        Some("a device")
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// The kernel's own file systems, where a "file" is an interface (a sysctl, a device
/// attribute, a cgroup knob) and never a regular file, by `statfs` magic.
const KERNEL_FILE_SYSTEMS: [(i64, &str); 10] = [
    (0x9fa0, "a procfs file (a kernel interface)"),
    (0x6265_6572, "a sysfs file (a kernel interface)"),
    (0x0027_e0eb, "a cgroup file (a kernel interface)"),
    (0x6367_7270, "a cgroup2 file (a kernel interface)"),
    (0x6462_6720, "a debugfs file (a kernel interface)"),
    (0x7472_6163, "a tracefs file (a kernel interface)"),
    (0x7363_6673, "a securityfs file (a kernel interface)"),
    (0xcafe_4a11, "a bpf file system entry (a kernel interface)"),
    (0x6265_6570, "a configfs file (a kernel interface)"),
    (0xde5e_81e4, "an efivarfs file (a kernel interface)"),
];

/// What `dir` holds when it is on one of the kernel's own file systems (`None` otherwise, or
/// when it cannot be told).
fn kernel_interface(dir: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs only writes the zeroed struct it is given.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a pointer to a statfs struct.
    if unsafe { libc::statfs(c_dir.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    KERNEL_FILE_SYSTEMS
        .iter()
        .find(|(magic, _)| *magic == stat.f_type as i64)
        .map(|(_, what)| *what)
}

/// The directory a destination is created in.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// How a path is compared with others: its directory resolved and its name as given, plus the
/// device and inode when it exists (hard links).
#[derive(Debug, PartialEq, Eq)]
struct FileIdentity {
    /// `None` when the directory does not resolve.
    resolved: Option<PathBuf>,
    file: Option<(u64, u64)>,
}

impl FileIdentity {
    fn of(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let resolved = path
            .file_name()
            .and_then(|name| Some(fs::canonicalize(parent_dir(path)).ok()?.join(name)));
        let file = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        Self { resolved, file }
    }

    /// True when both name the same file.
    fn same_as(&self, other: &Self) -> bool {
        (self.resolved.is_some() && self.resolved == other.resolved)
            || (self.file.is_some() && self.file == other.file)
    }
}

/// The destination is a name for a file, and absent or a regular file (never a link, a
/// directory, a device, a FIFO or a file of the kernel's, such as `/proc/sys/...`, which
/// `stat` calls regular).
fn check_kind(flag: &'static str, path: &Path) -> Result<(), OutputError> {
    let path_buf = || path.to_path_buf();
    if path.file_name().is_none() {
        return Err(OutputError::NotAFileName {
            flag,
            path: path_buf(),
        });
    }
    if let Some(what) = kernel_interface(parent_dir(path)) {
        return Err(OutputError::NotARegularFile {
            flag,
            path: path_buf(),
            what,
        });
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(OutputError::Symlink {
                flag,
                path: path_buf(),
            });
        }
        Ok(meta) => {
            if let Some(what) = not_regular(meta.file_type()) {
                return Err(OutputError::NotARegularFile {
                    flag,
                    path: path_buf(),
                    what,
                });
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(reason) => {
            return Err(OutputError::Unreadable {
                flag,
                path: path_buf(),
                reason,
            });
        }
    }
    Ok(())
}

/// Checks every destination before any work starts: each is absent or a regular file (never a
/// device, FIFO, directory or link), its directory exists and takes a new file (tried for real:
/// a read-only file system or a missing directory shows here, not after the trace), no two
/// outputs name the same file, and none is one of `inputs`. `-` is stdout, for one output.
pub fn check_destinations(
    files: &[(&'static str, &Path)],
    inputs: &[&Path],
) -> Result<(), OutputError> {
    let mut on_stdout: Option<&'static str> = None;
    let mut seen: Vec<(&'static str, FileIdentity)> = Vec::new();
    let inputs: Vec<FileIdentity> = inputs.iter().map(|p| FileIdentity::of(p)).collect();
    for &(flag, path) in files {
        let path_buf = || path.to_path_buf();
        if is_stdout(path) {
            if let Some(first) = on_stdout {
                return Err(OutputError::TwoOnStdout {
                    first,
                    second: flag,
                });
            }
            on_stdout = Some(flag);
            continue;
        }
        check_kind(flag, path)?;
        let dir = parent_dir(path);
        // Creating (and at once removing) a file is the only sure test: as root, access(2)
        // says yes to a read-only file system's files.
        if let Err(reason) = temp_file_in(dir, path) {
            return Err(OutputError::Unwritable {
                flag,
                path: path_buf(),
                dir: dir.to_path_buf(),
                reason,
            });
        }
        let id = FileIdentity::of(path);
        if let Some((first, _)) = seen.iter().find(|(_, other)| other.same_as(&id)) {
            return Err(OutputError::Overlap {
                first,
                second: flag,
                path: path_buf(),
            });
        }
        if inputs.iter().any(|input| input.same_as(&id)) {
            return Err(OutputError::OverwritesInput {
                flag,
                path: path_buf(),
            });
        }
        seen.push((flag, id));
    }
    Ok(())
}

/// Longest file name Linux file systems take (NAME_MAX).
const NAME_MAX: usize = 255;
/// Random characters in a temporary file's name (tempfile's default).
const TEMP_RANDOM: usize = 6;
const TEMP_SUFFIX: &str = ".tmp";

/// The prefix of `path`'s temporary file: `.NAME.`, with NAME cut so the whole temporary name
/// (prefix, random part, suffix) stays within NAME_MAX however long a legal NAME is.
fn temp_prefix(path: &Path) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let name = path.file_name().unwrap_or_default().as_bytes();
    let room = NAME_MAX - ".".len() - ".".len() - TEMP_RANDOM - TEMP_SUFFIX.len();
    let mut prefix = Vec::with_capacity(NAME_MAX);
    prefix.push(b'.');
    prefix.extend_from_slice(&name[..name.len().min(room)]);
    prefix.push(b'.');
    std::ffi::OsString::from_vec(prefix)
}

/// A new temporary file beside `path`: a random name, created exclusively (never through a
/// link planted at that name), mode 0644 less the umask; removed unless persisted.
fn temp_file_in(dir: &Path, path: &Path) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .rand_bytes(TEMP_RANDOM)
        .suffix(TEMP_SUFFIX)
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|err| {
            // tempfile appends the temporary's random name ("... at path ..."), which only
            // confuses: the destination is named by the caller.
            let text = err.to_string();
            let reason = text.split(" at path ").next().unwrap_or(&text).to_string();
            io::Error::new(err.kind(), reason)
        })
}

/// Writes `path` (or stdout for `-`): into a temporary file next to it, renamed into place once
/// complete, so a reader never sees half a file and a failure leaves the old file as it was.
pub fn write_file(
    flag: &'static str,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    if is_stdout(path) {
        let mut stdout = io::stdout().lock();
        write(&mut stdout).and_then(|()| stdout.flush())?;
        return Ok(());
    }
    write_checked(flag, path, write)
}

/// Writes `path` by writing a temporary file next to it and renaming it into place. Refuses a
/// destination that is (now) anything but a regular file or absent.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    write_checked("output", path, write)
}

fn write_checked(
    flag: &'static str,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> anyhow::Result<()> {
    check_kind(flag, path)?;
    let dir = parent_dir(path);
    // The temporary file is the writability test here: no separate probe.
    let temp = temp_file_in(dir, path).map_err(|reason| OutputError::Unwritable {
        flag,
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        reason,
    })?;
    let result = (|| -> io::Result<tempfile::NamedTempFile> {
        let mut out = io::BufWriter::new(temp);
        write(&mut out)?;
        let temp = out.into_inner().map_err(|e| e.into_error())?;
        temp.as_file().sync_all()?;
        Ok(temp)
    })();
    let temp = result.with_context(|| format!("cannot write {}", path.display()))?;
    // Checked again just before the rename: the destination may have changed during the trace.
    check_kind(flag, path)?;
    keep_permissions(path, temp.as_file())
        .with_context(|| format!("cannot write {}", path.display()))?;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Gives `replacement` the permission bits of the file at `path`, if there is one, and its
/// owner and group when running as root (who would otherwise leave a user's 0600 report as a
/// 0644 file of root's: readable by all, no longer the user's). Set-id bits are not kept.
fn keep_permissions(path: &Path, replacement: &fs::File) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let old = match fs::symlink_metadata(path) {
        Ok(old) if old.file_type().is_file() => old,
        Ok(_) => return Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Before the mode: changing the owner clears set-id bits.
        std::os::unix::fs::fchown(replacement, Some(old.uid()), Some(old.gid()))?;
    }
    replacement.set_permissions(fs::Permissions::from_mode(old.mode() & 0o777))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fresh directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lt-output-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn message(result: Result<(), OutputError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = scratch("failed");
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
        let err = message(check_destinations(
            &[("--json", Path::new("/nonexistent-dir/x.json"))],
            &[],
        ));
        assert!(err.contains("cannot write in /nonexistent-dir"), "{err}");
    }

    #[test]
    fn devices_fifos_and_directories_are_never_written() {
        let dir = scratch("special");
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        for (path, what) in [
            (Path::new("/dev/null"), "a device"),
            (fifo.as_path(), "a FIFO"),
            (dir.as_path(), "a directory"),
        ] {
            let err = message(check_destinations(&[("--json", path)], &[]));
            assert!(err.contains(what), "{err}");
            assert!(write_atomic(path, |w| w.write_all(b"x")).is_err());
        }
        let null = fs::metadata("/dev/null").unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &null.file_type()
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_are_not_written_through() {
        let dir = scratch("links");
        let victim = dir.join("victim");
        fs::write(&victim, "precious").unwrap();
        let link = dir.join("out.json");
        symlink(&victim, &link).unwrap();
        let err = message(check_destinations(&[("--json", &link)], &[]));
        assert!(err.contains("symbolic link"), "{err}");
        assert!(write_atomic(&link, |w| w.write_all(b"x")).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        // A link planted where the old writer put its temporary file changes nothing: the
        // temporary file has a random name and is created exclusively.
        let output = dir.join("report.json");
        symlink(
            &victim,
            dir.join(format!(".report.json.tmp-{}", std::process::id())),
        )
        .unwrap();
        write_atomic(&output, |w| w.write_all(b"report")).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&output).unwrap(), "report");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&output).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o600, 0o600, "owner reads and writes it ({mode:o})");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_may_not_overlap_each_other_or_an_input() {
        let dir = scratch("overlap");
        let json = dir.join("r.json");
        fs::write(&json, "{}").unwrap();
        let err = message(check_destinations(
            &[("--json", &json), ("--flamegraph", &dir.join("./r.json"))],
            &[],
        ));
        assert!(err.contains("--json and --flamegraph both name"), "{err}");
        let err = message(check_destinations(&[("--flamegraph", &json)], &[&json]));
        assert!(err.contains("is the recording being read"), "{err}");
        let hard_link = dir.join("hard.json");
        fs::hard_link(&json, &hard_link).unwrap();
        let err = message(check_destinations(&[("--html", &hard_link)], &[&json]));
        assert!(err.contains("is the recording being read"), "{err}");
        let err = message(check_destinations(
            &[("--json", Path::new("-")), ("--folded", Path::new("-"))],
            &[],
        ));
        assert!(err.contains("both write to stdout"), "{err}");
        check_destinations(
            &[
                ("--json", &json),
                ("--folded", Path::new("-")),
                ("--html", &dir.join("new.html")),
            ],
            &[&dir.join("other.json")],
        )
        .unwrap();
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            2,
            "checks leave no file behind"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_failed_output_does_not_stop_the_others() {
        let dir = scratch("partial");
        let outputs = Outputs {
            json: Some(dir.join("r.json")),
            folded: Some(dir.join("gone/x.folded")),
            html: Some(dir.join("r.html")),
            top: 10,
            ..Default::default()
        };
        let err = Report::default().write_files(&outputs).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "--folded {}/gone/x.folded: cannot write in {}/gone: No such file or directory (os error 2)",
                dir.display(),
                dir.display()
            )
        );
        assert!(dir.join("r.json").exists() && dir.join("r.html").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = scratch("keep");
        let path = dir.join("private.html");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let nobody = 65534;
        if root {
            std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).unwrap();
        }
        write_atomic(&path, |w| w.write_all(b"new")).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        if root {
            assert_eq!((meta.uid(), meta.gid()), (nobody, nobody));
        }
        // Set-id bits are not carried over.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o4755)).unwrap();
        write_atomic(&path, |w| w.write_all(b"newer")).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_up_to_name_max_are_written() {
        use std::os::unix::ffi::OsStrExt;
        let dir = scratch("long");
        for length in [243, 245, 250, 255] {
            let name = "r".repeat(length - ".html".len()) + ".html";
            let path = dir.join(&name);
            assert_eq!(path.file_name().unwrap().as_bytes().len(), length);
            check_destinations(&[("--html", &path)], &[]).unwrap();
            write_atomic(&path, |w| w.write_all(b"x")).unwrap();
            write_atomic(&path, |w| w.write_all(b"y")).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), "y");
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 4, "no temp file left");
        // Not UTF-8: cut by bytes, never mangled.
        let odd = std::ffi::OsStr::from_bytes(&[0xff; 255]);
        write_atomic(&dir.join(odd), |w| w.write_all(b"z")).unwrap();
        assert!(temp_prefix(&dir.join(odd)).as_bytes().len() <= 255 - 10);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_of_the_kernel_are_not_regular_files() {
        for path in ["/proc/sys/vm/drop_caches", "/proc/sys/vm/no-such-knob"] {
            let err = message(check_destinations(&[("--json", Path::new(path))], &[]));
            assert_eq!(
                err,
                format!(
                    "--json {path}: a procfs file (a kernel interface), not a regular file; leaktracer writes only regular files (use `-` for stdout)"
                )
            );
            assert!(write_atomic(Path::new(path), |w| w.write_all(b"3")).is_err());
        }
        let err = message(check_destinations(
            &[("--html", Path::new("/sys/kernel/mm/x.html"))],
            &[],
        ));
        assert!(
            err.contains("a sysfs file (a kernel interface), not a regular file"),
            "{err}"
        );
    }
}
