//! Launching a command stopped, so probes are in place before its first allocation.
//!
//! The child stops itself (SIGSTOP) between fork and exec. The probes are attached for its pid:
//! a uprobe on a file registered for a process is installed into whatever maps that file later,
//! so the libc the program loads after exec is probed before any of its code runs.

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs,
    io::{self, Read},
    os::{
        fd::FromRawFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    process::Command,
};

use crate::error::TraceError;

/// Makes leaktracer the subreaper of the processes it starts: one that its command leaves
/// behind (a daemon's double fork: the parent exits, its child with it) becomes leaktracer's
/// child, not init's, so it can still be found and followed. They are reaped with
/// [`Orphans`], and go on to init if leaktracer exits first.
pub fn adopt_orphans() -> io::Result<()> {
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The processes leaktracer adopted (see [`adopt_orphans`]) that still run: its children other
/// than the `launched` command and its own helpers (leaktracer's executable re-run).
pub fn adopted(launched: u32) -> Vec<u32> {
    let executable = |pid: &str| {
        fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let own = executable("self");
    crate::target::process::children(std::process::id())
        .into_iter()
        .filter(|pid| {
            *pid != launched
                && crate::target::process::is_alive(*pid)
                && executable(&pid.to_string()) != own
        })
        .collect()
}

/// The processes leaktracer adopted from its command, remembered while they run so that
/// exactly those are reaped once they exit: never the command (whose status [`LaunchedChild`]
/// keeps), never a helper of leaktracer's own. No zombie of theirs stays for a whole trace.
#[derive(Debug, Default)]
pub struct Orphans(BTreeSet<u32>);

impl Orphans {
    /// Notes the orphans running now, and reaps those noted before that have exited.
    pub fn reap_exited(&mut self, launched: u32) {
        self.0.extend(adopted(launched));
        self.0.retain(|pid| {
            let mut status = 0;
            // SAFETY: waitpid on one of our own children, never blocking.
            let waited = unsafe { libc::waitpid(*pid as i32, &mut status, libc::WNOHANG) };
            // 0: it still runs. Its pid: reaped now. -1: not ours any more.
            waited == 0
        });
    }
}

/// A command started by leaktracer, stopped before exec until [`LaunchedChild::resume`].
#[derive(Debug)]
pub struct LaunchedChild {
    pub pid: u32,
    pub program: PathBuf,
    /// Read end of a close-on-exec pipe: EOF means exec succeeded, 4 bytes are exec's errno.
    exec_status: fs::File,
    exit_status: Option<i32>,
}

fn launch_error(argv: &[String], reason: impl ToString) -> TraceError {
    TraceError::Launch {
        command: argv.join(" "),
        reason: reason.to_string(),
    }
}

/// Why a command's program cannot be run, found before anything is started.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("{0}: no such file")]
    Missing(PathBuf),
    #[error("{0} is not found on PATH; give its path (./{0} for one in this directory)")]
    NotOnPath(String),
    #[error("{0} is {1}, not a program")]
    NotAFile(PathBuf, &'static str),
    #[error(
        "{0} is not executable (it has no execute permission): make it executable (chmod +x), or run it through its interpreter"
    )]
    NoExecuteBit(PathBuf),
    #[error(
        "{0} cannot be executed here (execute permission denied: a file system mounted noexec, or permissions that exclude this user)"
    )]
    ExecuteDenied(PathBuf),
}

/// Whether `path` is a program this process may execute, and why not.
fn check_executable(path: &Path) -> Result<(), ProgramError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = fs::metadata(path).map_err(|_| ProgramError::Missing(path.to_path_buf()))?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else {
            "not a regular file"
        };
        return Err(ProgramError::NotAFile(path.to_path_buf(), what));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ProgramError::NoExecuteBit(path.to_path_buf()));
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ProgramError::Missing(path.to_path_buf()))?;
    // SAFETY: a valid NUL-terminated path; access only reads it.
    if unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } != 0 {
        return Err(ProgramError::ExecuteDenied(path.to_path_buf()));
    }
    Ok(())
}

/// Finds the program the way `execvp` would: a name with a slash as is, otherwise the first
/// executable along `PATH`. When none is, says why: a file found but not executable is named
/// as such, not as missing.
pub fn resolve_program(name: &str) -> Result<PathBuf, ProgramError> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return check_executable(&path).map(|()| path);
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut first_refusal = None;
    for candidate in std::env::split_paths(&search).map(|dir| dir.join(name)) {
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(ProgramError::Missing(_)) => {}
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    Err(first_refusal.unwrap_or_else(|| ProgramError::NotOnPath(name.to_string())))
}

/// How a launched command ended: its exit code, or the signal that killed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
}

impl ChildExit {
    /// From a `waitpid` status.
    pub fn from_wait_status(status: i32) -> Self {
        let signaled = libc::WIFSIGNALED(status);
        Self {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: signaled.then(|| libc::WTERMSIG(status)),
            core_dumped: signaled && libc::WCOREDUMP(status),
        }
    }
}

/// A signal's name, e.g. `SIGKILL`, or its number when it is not a common one.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

impl LaunchedChild {
    /// Forks a child that stops itself and, once resumed, execs `argv`. Returns when the child is
    /// stopped. Call before starting threads that hold locks the child might need (none are
    /// touched between fork and exec here).
    pub fn spawn_stopped(argv: &[String]) -> Result<Self, TraceError> {
        let name = argv
            .first()
            .ok_or_else(|| launch_error(argv, "empty command"))?;
        let program = resolve_program(name).map_err(|why| launch_error(argv, why))?;
        let c_program = CString::new(program.as_os_str().as_bytes())
            .map_err(|_| launch_error(argv, "NUL byte in program path"))?;
        let c_args = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| launch_error(argv, "NUL byte in an argument"))?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());

        let mut pipe_fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(pipe_fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(launch_error(argv, io::Error::last_os_error()));
        }
        let [read_fd, write_fd] = pipe_fds;
        // SAFETY: getpid has no preconditions.
        let tracer_pid = unsafe { libc::getpid() };
        // SAFETY: no other thread exists yet (see above), so the child inherits no held lock.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(launch_error(argv, io::Error::last_os_error()));
        }
        if pid == 0 {
            // Child: only async-signal-safe calls from here on.
            // SAFETY: each call is async-signal-safe and takes valid arguments.
            unsafe {
                libc::close(read_fd);
                // The tracer's handlers (which end a trace with its report) are not the
                // command's: it gets the default dispositions, as a shell would give it.
                for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    libc::signal(signal, libc::SIG_DFL);
                }
                // Dies with the tracer, whenever that is: never left stopped, never orphaned.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != tracer_pid {
                    libc::_exit(127);
                }
                libc::raise(libc::SIGSTOP);
                libc::execv(c_program.as_ptr(), c_argv.as_ptr());
                let errno = *libc::__errno_location();
                libc::write(write_fd, (&raw const errno).cast(), 4);
                libc::_exit(127);
            }
        }
        // SAFETY: the pipe's write end is the child's now; this process never uses it again.
        unsafe { libc::close(write_fd) };
        // SAFETY: the pipe's read end, owned by nothing else: the File closes it.
        let exec_status = unsafe { fs::File::from_raw_fd(read_fd) };
        let mut status = 0;
        // SAFETY: waits for our own child, writing only `status`.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
        if waited != pid || !libc::WIFSTOPPED(status) {
            return Err(launch_error(argv, "the child did not stop before exec"));
        }
        Ok(Self {
            pid: pid as u32,
            program,
            exec_status,
            exit_status: None,
        })
    }

    /// Lets the child exec its command; fails when exec failed.
    pub fn resume(&mut self, argv: &[String]) -> Result<(), TraceError> {
        // SAFETY: a signal to our own child, not yet reaped, so its pid is still its own.
        unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
        let mut errno = [0u8; 4];
        match self.exec_status.read(&mut errno) {
            Ok(4) => {
                self.reap_blocking();
                Err(launch_error(
                    argv,
                    io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Sends `signal` to the child if it still runs.
    pub fn signal(&self, signal: i32) {
        if self.exit_status.is_none() {
            // SAFETY: a signal to our own child, not yet reaped, so its pid is still its own.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    /// Reaps the child if it has exited; returns its status once known.
    pub fn try_reap(&mut self) -> Option<i32> {
        if self.exit_status.is_none() {
            let mut status = 0;
            // SAFETY: waits for our own child, writing only `status`.
            if unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) }
                == self.pid as i32
            {
                self.exit_status = Some(status);
            }
        }
        self.exit_status
    }

    /// Stops the child like timeout(1) would: SIGTERM, `grace` to exit, then SIGKILL; always
    /// reaps it.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.try_reap().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        self.reap_blocking();
    }

    /// How the child ended, once reaped.
    pub fn exit(&self) -> Option<ChildExit> {
        self.exit_status.map(ChildExit::from_wait_status)
    }

    /// Waits up to `timeout` for the running child to stop (SIGSTOP); false when it did not,
    /// or exited instead.
    pub fn wait_stopped(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.exit_status.is_none() && std::time::Instant::now() < deadline {
            if self.has_stopped() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        false
    }

    /// True when the child has stopped since the last look (without waiting); an exit seen
    /// meanwhile is kept for [`Self::try_reap`].
    pub fn has_stopped(&mut self) -> bool {
        if self.exit_status.is_some() {
            return false;
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid status pointer.
        let waited = unsafe {
            libc::waitpid(
                self.pid as i32,
                &mut status,
                libc::WUNTRACED | libc::WNOHANG,
            )
        };
        if waited != self.pid as i32 {
            return false;
        }
        if libc::WIFSTOPPED(status) {
            return true;
        }
        self.exit_status = Some(status);
        false
    }

    /// Lets a stopped child go on.
    pub fn continue_stopped(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Waits for the child to exit.
    pub fn reap_blocking(&mut self) -> Option<i32> {
        if self.exit_status.is_none() {
            let mut status = 0;
            // SAFETY: waits for our own child, writing only `status`.
            if unsafe { libc::waitpid(self.pid as i32, &mut status, 0) } == self.pid as i32 {
                self.exit_status = Some(status);
            }
        }
        self.exit_status
    }
}

/// The objects a program will load, in the order the dynamic linker searches them for symbols:
/// the program, its LD_PRELOADs, then its libraries. A statically linked program is only itself.
pub fn predict_loaded_objects(program: &Path) -> io::Result<Vec<PathBuf>> {
    let data = fs::read(program)?;
    if let Some(rest) = data.strip_prefix(b"#!") {
        // A script: the interpreter is what runs.
        let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
        let interpreter = String::from_utf8_lossy(line);
        if let Some(interpreter) = interpreter.split_whitespace().next() {
            return predict_loaded_objects(Path::new(interpreter));
        }
    }
    let Some(interp) = elf_interpreter(data.as_slice()) else {
        return Ok(vec![program.to_path_buf()]);
    };
    let output = Command::new(&interp).arg("--list").arg(program).output()?;
    let mut objects = vec![program.to_path_buf()];
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, target)) => target.trim(),
            None => line.trim(),
        };
        let path = path.split(" (0x").next().unwrap_or("").trim();
        if path.starts_with('/') {
            let path = PathBuf::from(path);
            if !objects.contains(&path) {
                objects.push(path);
            }
        }
    }
    if objects.len() == 1 && !output.status.success() {
        return Err(io::Error::other(format!(
            "`{} --list {}` failed: {}",
            interp.display(),
            program.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(objects)
}

/// True when the ELF at `path` names a dynamic linker (PT_INTERP): its libraries are mapped
/// by that loader after the exec, not by the kernel. Reads only the headers.
pub fn is_dynamically_linked(path: &Path) -> bool {
    fs::File::open(path)
        .is_ok_and(|file| elf_interpreter(&object::read::ReadCache::new(file)).is_some())
}

/// The dynamic linker named by an ELF's PT_INTERP, if it has one (read from the ELF and program
/// headers only, as the kernel does).
fn elf_interpreter<'data>(data: impl object::ReadRef<'data>) -> Option<PathBuf> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    for program_header in header.program_headers(endian, data).ok()? {
        if program_header.p_type(endian) == object::elf::PT_INTERP {
            let bytes = program_header.data(endian, data).ok()?;
            let path = bytes.split(|b| *b == 0).next()?;
            return Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_program_that_cannot_run_is_named_by_why() {
        let dir = std::env::temp_dir().join(format!("lt-launch-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
        let name = script.to_str().unwrap();
        assert_eq!(
            resolve_program(name),
            Err(ProgramError::NoExecuteBit(script.clone()))
        );
        assert_eq!(
            resolve_program(name).unwrap_err().to_string(),
            format!(
                "{name} is not executable (it has no execute permission): make it executable (chmod +x), or run it through its interpreter"
            )
        );
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve_program(name), Ok(script.clone()));
        assert_eq!(
            resolve_program(dir.to_str().unwrap()),
            Err(ProgramError::NotAFile(dir.clone(), "a directory"))
        );
        let missing = dir.join("missing");
        assert_eq!(
            resolve_program(missing.to_str().unwrap()),
            Err(ProgramError::Missing(missing.clone()))
        );
        assert_eq!(
            resolve_program("leaktracer-no-such-program"),
            Err(ProgramError::NotOnPath("leaktracer-no-such-program".into()))
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
