//! A process that outlives leaktracer to resume the targets the kernel stopped for it.
//!
//! The probes stop a target (SIGSTOP, sent by the kernel side) where its picture freezes: at
//! CPython's `Py_FinalizeEx`, or at `exit()` with `--reachability`. Only the tracer's next poll
//! lets it go. A leaktracer killed in between (SIGKILL, the OOM killer, a crash) would leave
//! the target stopped forever: nothing in the kernel undoes a SIGSTOP when its sender dies.
//!
//! So every trace starts a guard first: leaktracer itself, exec'd again as the hidden
//! `resume-guard` command, in a session of its own (Ctrl-C, a closed terminal and a kill of
//! leaktracer's process group do not reach it). It holds two of the eBPF object's maps (no
//! program and no link: the probes still go when leaktracer goes) and the read end of a pipe
//! whose write end only leaktracer holds. When the pipe closes without a goodbye, leaktracer
//! died: the guard turns every program off (no new stop), then continues each process the
//! probes froze that is still stopped, for a second (a program already past its check may
//! stop one more), and exits. A trace that ends normally says goodbye after resuming its
//! targets itself; the guard then checks once and exits.

use std::{
    fs,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData};

/// Where the guard finds what it is given (fixed, so nothing is parsed from its arguments).
const PIPE_FD: i32 = 3;
const STOPPED_FD: i32 = 4;
const FROZEN_FD: i32 = 5;

/// The byte a trace that ends normally writes before closing the pipe.
const GOODBYE: u8 = b'G';

/// After leaktracer died: how long the guard keeps looking for stopped targets, and how often.
const WATCH_AFTER_DEATH: Duration = Duration::from_secs(1);
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// The hidden subcommand that runs the guard.
pub const SUBCOMMAND: &str = "resume-guard";

/// The tracer's end of a running guard.
#[derive(Debug)]
pub struct ResumeGuard {
    child: Child,
    pipe: Option<fs::File>,
}

impl ResumeGuard {
    /// Starts the guard over `stopped` (slot 0 set turns every program off) and `frozen` (the
    /// processes the programs froze: tgid -> when).
    pub fn spawn(stopped: BorrowedFd<'_>, frozen: BorrowedFd<'_>) -> io::Result<Self> {
        let (read_end, write_end) = pipe()?;
        let fds = [
            (read_end.as_raw_fd(), PIPE_FD),
            (stopped.as_raw_fd(), STOPPED_FD),
            (frozen.as_raw_fd(), FROZEN_FD),
        ];
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0("leaktracer")
            .arg(SUBCOMMAND)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe calls (dup, dup2, close, setsid) on descriptors it was given.
        unsafe {
            command.pre_exec(move || {
                // Out of leaktracer's session and process group: what kills or stops them
                // (Ctrl-C, a hang-up, `kill -- -PGID`) does not reach the guard.
                libc::setsid();
                // Moved above the targets first, so no dup2 below overwrites a source.
                let mut high = [0; 3];
                for (slot, (from, _)) in high.iter_mut().zip(fds) {
                    *slot = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 10);
                    if *slot < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (from, (_, to)) in high.into_iter().zip(fds) {
                    // dup2 clears close-on-exec on `to`: only these three cross the exec.
                    if libc::dup2(from, to) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(from);
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(read_end);
        Ok(Self {
            child,
            pipe: Some(fs::File::from(write_end)),
        })
    }
}

impl Drop for ResumeGuard {
    /// The trace ended (normally or by an error): goodbye, and the guard's last check is waited
    /// for, so it is gone before leaktracer is.
    fn drop(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(&[GOODBYE]);
        }
        let _ = self.child.wait();
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The guard itself (`leaktracer resume-guard`, started by [`ResumeGuard::spawn`] only).
pub fn run() -> ExitCode {
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string; setting
    // dispositions to SIG_IGN runs no handler.
    unsafe {
        // Named in `ps` and `top` for what it is (exec'd through /proc/self/exe, it was "exe").
        libc::prctl(libc::PR_SET_NAME, c"lt-resume-guard".as_ptr());
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // SAFETY: spawn() placed these descriptors; nothing else in this process owns them.
    let (pipe, stopped, frozen) = unsafe {
        (
            OwnedFd::from_raw_fd(PIPE_FD),
            OwnedFd::from_raw_fd(STOPPED_FD),
            OwnedFd::from_raw_fd(FROZEN_FD),
        )
    };
    let maps = MapData::from_fd(stopped).and_then(|stopped| {
        let stopped = Array::<MapData, u32>::try_from(Map::Array(stopped))?;
        let frozen =
            HashMap::<MapData, u32, u64>::try_from(Map::HashMap(MapData::from_fd(frozen)?))?;
        Ok((stopped, frozen))
    });
    let (mut stopped, frozen) = match maps {
        Ok(maps) => maps,
        Err(e) => {
            say(&format!("cannot open the maps it watches: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut pipe = fs::File::from(pipe);
    let mut byte = [0u8; 1];
    let said_goodbye = loop {
        match pipe.read(&mut byte) {
            Ok(0) => break false,
            Ok(_) => break byte[0] == GOODBYE,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    if said_goodbye {
        // leaktracer resumed its targets itself; a last look for one it could not.
        resume_stopped(&frozen, None);
        return ExitCode::SUCCESS;
    }
    // leaktracer died: no program may stop anything from now on, then whatever is stopped goes.
    let _ = stopped.set(0, 1, 0);
    let until = Instant::now() + WATCH_AFTER_DEATH;
    let mut resumed = Vec::new();
    while Instant::now() < until {
        resume_stopped(&frozen, Some(&mut resumed));
        std::thread::sleep(WATCH_EVERY);
    }
    ExitCode::SUCCESS
}

/// Continues every frozen process that is stopped (state `T`; not one a debugger holds, `t`),
/// saying so once per process when `resumed` keeps count (leaktracer died).
fn resume_stopped(frozen: &HashMap<MapData, u32, u64>, mut resumed: Option<&mut Vec<u32>>) {
    for pid in frozen.keys().filter_map(Result::ok) {
        if !is_group_stopped(pid) {
            continue;
        }
        // SAFETY: kill with a pid and a signal number.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        if let Some(resumed) = resumed.as_deref_mut()
            && !resumed.contains(&pid)
        {
            resumed.push(pid);
            say(&format!(
                "leaktracer ended without resuming pid {pid}, which its probes had stopped where its picture froze; resumed it"
            ));
        }
    }
}

/// Whether `pid` is in a group stop (`State: T`), as a SIGSTOP leaves it.
fn is_group_stopped(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may itself hold ") ".
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
}

/// One line on stderr (a closed terminal is no error here).
fn say(message: &str) {
    let _ = writeln!(io::stderr(), "leaktracer (resume guard): {message}");
}
