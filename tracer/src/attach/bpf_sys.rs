//! The few bpf(2) commands aya 0.14 has no API for: loading a program with the
//! `BPF_TRACE_UPROBE_MULTI` attach type, its BTF, a `uprobe_multi` link, and a program's
//! run-time figures by fd. The attribute layouts are the kernel's, from aya-obj's bindings.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya_obj::generated::{
    BPF_F_UPROBE_MULTI_RETURN, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_info,
    bpf_prog_type,
};

/// bpf(2) with a zeroed-then-filled attribute union.
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: the attribute is a fully initialized bpf_attr of the size passed; every pointer
    // in it points to memory the caller keeps alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            std::ptr::from_mut(attr),
            mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A new fd returned by bpf(2).
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: bpf(2) returned this fd to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of integers, for which all zeroes is valid (and what the
    // kernel requires of unused fields).
    unsafe { mem::zeroed() }
}

/// What [`prog_load`] loads.
pub struct ProgLoad<'a> {
    pub name: &'a str,
    pub instructions: &'a [bpf_insn],
    pub license: &'a CString,
    pub kernel_version: u32,
    pub btf: Option<BorrowedFd<'a>>,
    pub func_info: &'a [u8],
    pub func_info_rec_size: usize,
    pub func_info_count: usize,
    pub line_info: &'a [u8],
    pub line_info_rec_size: usize,
    pub line_info_count: usize,
}

/// Loads a kprobe-type program for `uprobe_multi` links (`BPF_TRACE_UPROBE_MULTI`, which
/// aya 0.14 never passes). On a verifier rejection the error carries its log's last lines.
pub fn prog_load(program: &ProgLoad<'_>) -> io::Result<OwnedFd> {
    let attempt = |log: &mut [u8]| {
        let mut attr = zeroed_attr();
        // SAFETY: writing plain integers into the prog-load member of the zeroed union.
        let u = unsafe { &mut attr.__bindgen_anon_3 };
        u.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
        u.expected_attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
        u.insns = program.instructions.as_ptr() as u64;
        u.insn_cnt = program.instructions.len() as u32;
        u.license = program.license.as_ptr() as u64;
        u.kern_version = program.kernel_version;
        // The kernel keeps 15 bytes of the name (aya truncates the same way).
        for (slot, byte) in u.prog_name.iter_mut().zip(program.name.bytes().take(15)) {
            *slot = byte as libc::c_char;
        }
        if let Some(btf) = program.btf {
            u.prog_btf_fd = btf.as_raw_fd() as u32;
            if program.func_info_rec_size > 0 {
                u.func_info = program.func_info.as_ptr() as u64;
                u.func_info_cnt = program.func_info_count as u32;
                u.func_info_rec_size = program.func_info_rec_size as u32;
            }
            if program.line_info_rec_size > 0 {
                u.line_info = program.line_info.as_ptr() as u64;
                u.line_info_cnt = program.line_info_count as u32;
                u.line_info_rec_size = program.line_info_rec_size as u32;
            }
        }
        if !log.is_empty() {
            u.log_level = 1;
            u.log_buf = log.as_mut_ptr() as u64;
            u.log_size = log.len() as u32;
        }
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(owned)
    };
    // Without a log first (the kernel verifies faster); with one to say why it failed.
    attempt(&mut []).or_else(|first| {
        let mut log = vec![0u8; 1 << 20];
        match attempt(&mut log) {
            Ok(fd) => Ok(fd),
            Err(_) => {
                let text = String::from_utf8_lossy(&log);
                let text = text.trim_end_matches('\0');
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(io::Error::new(
                    first.kind(),
                    format!("{first}: {}", tail.join(" / ")),
                ))
            }
        }
    })
}

/// Loads an object's BTF (for the programs' function and line info).
pub fn btf_load(btf: &[u8]) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the BTF-load member of the zeroed union.
    let u = unsafe { &mut attr.__bindgen_anon_7 };
    u.btf = btf.as_ptr() as u64;
    u.btf_size = btf.len() as u32;
    sys_bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr).map(owned)
}

/// One `uprobe_multi` link: `program` at every one of `offsets` in the file at `path`, in
/// process `pid` only; at their returns with `is_return`. Closing the fd detaches them all.
pub fn link_uprobe_multi(
    program: BorrowedFd<'_>,
    path: &Path,
    offsets: &[u64],
    pid: u32,
    is_return: bool,
) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the link-create member of the zeroed union.
    let u = unsafe { &mut attr.link_create };
    u.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
    u.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: as above, the uprobe_multi member of the link-create union.
    let multi = unsafe { &mut u.__bindgen_anon_3.uprobe_multi };
    multi.path = path.as_ptr() as u64;
    multi.offsets = offsets.as_ptr() as u64;
    multi.cnt = offsets.len() as u32;
    multi.flags = if is_return {
        BPF_F_UPROBE_MULTI_RETURN
    } else {
        0
    };
    multi.pid = pid;
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned)
}

/// A loaded program's run count and summed run time (while BPF statistics are on), and the
/// instructions its verifier processed.
pub fn prog_run_figures(program: BorrowedFd<'_>) -> io::Result<(u64, u64, u32)> {
    // SAFETY: bpf_prog_info is plain integers; all zeroes asks the kernel for no arrays.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the get-info member of the zeroed union.
    let u = unsafe { &mut attr.info };
    u.bpf_fd = program.as_raw_fd() as u32;
    u.info_len = mem::size_of::<bpf_prog_info>() as u32;
    u.info = std::ptr::from_mut(&mut info) as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((info.run_cnt, info.run_time_ns, info.verified_insns))
}
