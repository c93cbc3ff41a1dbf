//! The per-call system call tracepoints the mapping programs prefer (`syscalls/sys_exit_mmap`,
//! ...; see `programs::Role::SyscallEvent`): their ids and record layout from tracefs, and a
//! program attached to one through a perf event. Finding them leaves nothing behind: tracefs
//! is read where it is already mounted, else mounted in a private mount namespace of a
//! short-lived thread, which vanishes with it.

use std::{
    ffi::CString,
    fs, io, mem,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{Ebpf, programs::TracePoint};
use aya_obj::generated::{
    PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, PERF_FLAG_FD_CLOEXEC, perf_event_attr,
    perf_type_id,
};
use tracer_common::programs::{
    self, Program, Role, SYSCALL_EVENT_CATEGORY, SYSCALL_EXIT_RET_OFFSET, SYSCALL_NR_OFFSET,
};

use crate::{error::TraceError, report::MappingProbes};

/// Set (to anything), the raw `sys_enter`/`sys_exit` tracepoints serve even where the
/// per-call ones work: for tests of the fallback.
pub const FORCE_RAW_ENV: &str = "LEAKTRACER_RAW_SYSCALL_TRACEPOINTS";

/// The mapping programs as loaded and attached: the tier, why it is the fallback (when it is),
/// and the perf events holding the per-call programs (closing them detaches).
pub struct MappingAttachment {
    pub tier: MappingProbes,
    pub fallback_reason: Option<String>,
    /// The programs loaded, with how long each took (the verifier, mostly).
    pub loaded: Vec<(&'static str, std::time::Duration)>,
    _events: Vec<OwnedFd>,
}

/// Whether `program` is one of the mapping programs [`load_and_attach`] handles (either tier).
pub fn is_mapping_program(program: &Program) -> bool {
    matches!(program.role, Role::SyscallEvent(_))
        || program.name == programs::SYSCALL_ENTER.name
        || program.name == programs::SYSCALL_EXIT.name
}

/// Loads and attaches the mapping programs machine-wide (each returns at once for a process
/// not traced, so no event of a target is missed, however early): each call's own
/// tracepoint where they can be found and attached, else the raw `sys_enter`/`sys_exit`.
/// `verifier` words a load error.
pub fn load_and_attach(
    ebpf: &mut Ebpf,
    verifier: fn(&aya::programs::ProgramError) -> String,
) -> Result<MappingAttachment, TraceError> {
    let per_call: Vec<(&'static str, &'static [&'static str])> = programs::ALL
        .iter()
        .filter_map(|p| match p.role {
            Role::SyscallEvent(events) => Some((p.name, events)),
            _ => None,
        })
        .collect();
    // Every event's id at once: tracefs is read (mounted, where it must be) one time.
    let events: Vec<&str> = per_call
        .iter()
        .flat_map(|(_, events)| events.iter().copied())
        .collect();
    let mut loaded = Vec::new();
    let attached = event_ids(&events).and_then(|ids| {
        let mut ids = ids.into_iter();
        let mut fds = Vec::new();
        for &(name, events) in &per_call {
            let started = std::time::Instant::now();
            let ids: Vec<u64> = ids.by_ref().take(events.len()).collect();
            fds.extend(attach_program(ebpf, name, &ids, verifier)?);
            loaded.push((name, started.elapsed()));
        }
        Ok(fds)
    });
    let reason = match attached {
        Ok(events) => {
            return Ok(MappingAttachment {
                tier: MappingProbes::SyscallTracepoints,
                fallback_reason: None,
                loaded,
                _events: events,
            });
        }
        Err(reason) => reason,
    };
    for program in [programs::SYSCALL_ENTER, programs::SYSCALL_EXIT] {
        loaded.push((
            program.name,
            super::probes::load_raw_tracepoint(ebpf, &program)?,
        ));
    }
    Ok(MappingAttachment {
        tier: MappingProbes::RawTracepoints,
        fallback_reason: Some(reason),
        loaded,
        _events: Vec::new(),
    })
}

/// Loads the per-call program `name` and attaches it to each event with a tracefs id in `ids`.
fn attach_program(
    ebpf: &mut Ebpf,
    name: &str,
    ids: &[u64],
    verifier: fn(&aya::programs::ProgramError) -> String,
) -> Result<Vec<OwnedFd>, String> {
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))?;
    program
        .load()
        .map_err(|e| format!("{name}: {}", verifier(&e)))?;
    let fd = program.fd().map_err(|e| format!("{name}: {e}"))?;
    ids.iter()
        .map(|&id| attach(fd.as_fd(), id).map_err(|e| format!("attaching {name}: {e}")))
        .collect()
}

/// The tracefs id of each of `events` (`syscalls/<event>`), in order, with their `ret` field
/// (for `sys_exit_*`) where the programs read it; or why they cannot be used.
pub fn event_ids(events: &[&str]) -> Result<Vec<u64>, String> {
    if std::env::var_os(FORCE_RAW_ENV).is_some() {
        return Err(format!("{FORCE_RAW_ENV} is set"));
    }
    if let Some(root) = mounted_tracefs() {
        return read_events(&root, events);
    }
    let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    std::thread::spawn(move || {
        let events: Vec<&str> = events.iter().map(String::as_str).collect();
        in_private_tracefs(|root| read_events(root, &events))
    })
    .join()
    .map_err(|_| "the thread reading tracefs panicked".to_string())?
}

/// Where tracefs is mounted in this process's mount namespace, if it is.
fn mounted_tracefs() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        // An escaped mount point (a space in it) is skipped rather than decoded.
        (kind == "tracefs" && !dir.contains('\\')).then(|| PathBuf::from(dir))
    })
}

/// Runs `read` on tracefs mounted on a temporary directory, in a mount namespace of this
/// thread only (made private first, so the mount propagates nowhere). The directory is removed
/// afterwards; the mount goes with the namespace when the thread ends, whatever happens.
fn in_private_tracefs<T>(read: impl FnOnce(&Path) -> Result<T, String>) -> Result<T, String> {
    // SAFETY: unshare and mount take no pointers we do not own for the call; the new mount
    // namespace is this thread's alone (CLONE_NEWNS unshares CLONE_FS too).
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    if unshared != 0 {
        return Err(format!(
            "cannot make a private mount namespace: {}",
            io::Error::last_os_error()
        ));
    }
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    let dir = std::env::temp_dir().join(format!(
        "leaktracer-tracefs-{}-{}",
        std::process::id(),
        // SAFETY: gettid takes no arguments.
        unsafe { libc::gettid() }
    ));
    fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = match mount(Some("nodev"), &dir, Some("tracefs"), 0) {
        Ok(()) => {
            let result = read(&dir);
            let path = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: a NUL-terminated path we own. Only this namespace sees the mount.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            result
        }
        Err(e) => Err(format!("cannot mount tracefs: {e}")),
    };
    let _ = fs::remove_dir(&dir);
    result
}

/// mount(2) with optional source and type, no data.
fn mount(source: Option<&str>, target: &Path, kind: Option<&str>, flags: u64) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let source = source.map(c).transpose()?;
    let kind = kind.map(c).transpose()?;
    let target = c(&target.to_string_lossy())?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NUL-terminated and lives across the call, or is null where
    // mount(2) allows it.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&kind),
            flags,
            std::ptr::null(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Each event's id under `root`, checking that a `sys_exit_*` record holds `ret` where the
/// programs read it.
fn read_events(root: &Path, events: &[&str]) -> Result<Vec<u64>, String> {
    let category = root.join("events").join(SYSCALL_EVENT_CATEGORY);
    if !category.is_dir() {
        return Err(
            "the kernel has no per-system-call tracepoints (CONFIG_FTRACE_SYSCALLS)".into(),
        );
    }
    events
        .iter()
        .map(|event| {
            let dir = category.join(event);
            let id = fs::read_to_string(dir.join("id"))
                .map_err(|e| format!("{}: {e}", dir.join("id").display()))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("{}: not an id", dir.join("id").display()))?;
            let format = fs::read_to_string(dir.join("format")).unwrap_or_default();
            let nr = field_offset(&format, "__syscall_nr");
            if nr != Some(SYSCALL_NR_OFFSET) {
                return Err(format!(
                    "{event}'s `__syscall_nr` is at {nr:?} in its format, not {SYSCALL_NR_OFFSET}"
                ));
            }
            if event.starts_with("sys_exit_") {
                let offset = field_offset(&format, "ret");
                if offset != Some(SYSCALL_EXIT_RET_OFFSET) {
                    return Err(format!(
                        "{event}'s `ret` is at {offset:?} in its format, not {SYSCALL_EXIT_RET_OFFSET}"
                    ));
                }
            }
            Ok(id)
        })
        .collect()
}

/// The offset of field `name` in a tracefs `format` file
/// (`field:long ret;\toffset:16;\tsize:8;\tsigned:1;`).
fn field_offset(format: &str, name: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        if declaration.split_whitespace().last()? != name {
            return None;
        }
        parts
            .find_map(|part| part.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

/// Attaches the loaded tracepoint program `program` to the event with tracefs id `id`, for
/// every process on every CPU: a perf event whose fd holds the attachment.
pub fn attach(program: BorrowedFd<'_>, id: u64) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is a C struct of integers and unions of integers, for which all
    // zeroes is valid (and what the kernel expects of unused fields).
    let mut attr: perf_event_attr = unsafe { mem::zeroed() };
    attr.type_ = perf_type_id::PERF_TYPE_TRACEPOINT as u32;
    attr.size = mem::size_of::<perf_event_attr>() as u32;
    attr.config = id;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: the attribute is initialized and outlives the call; pid -1 with cpu 0 is one
    // event for all processes (a tracepoint's program then runs on every CPU).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::from_ref(&attr),
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: perf_event_open returned this fd to us and nothing else owns it.
    let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for (request, arg) in [
        (PERF_EVENT_IOC_SET_BPF, program.as_raw_fd() as libc::c_ulong),
        (PERF_EVENT_IOC_ENABLE, 0),
    ] {
        // SAFETY: both requests take an integer argument, no pointer.
        if unsafe { libc::ioctl(event.as_raw_fd(), request as libc::Ioctl, arg) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets_are_read_from_a_format_file() {
        let format = "name: sys_exit_mmap\nID: 123\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        assert_eq!(field_offset(format, "ret"), Some(16));
        assert_eq!(field_offset(format, "__syscall_nr"), Some(8));
        assert_eq!(field_offset(format, "addr"), None);
    }
}
