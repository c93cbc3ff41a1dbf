//! Offsets in the kernel's `task_struct` the programs read, from its BTF
//! (`/sys/kernel/btf/vmlinux`), so they are right for the running kernel whatever its
//! configuration: the thread pointer for the Python walk (its member named by
//! [`crate::arch::THREAD_POINTER_MEMBER`]), `tgid` and `exit_code` for the endings, `flags` for
//! the threads a signal killed.

use std::fs;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One struct or union: its name and its members' (name, byte offset).
struct Composite {
    name: String,
    members: Vec<(String, u32)>,
}

/// The kernel's BTF, where the running kernel describes itself.
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The `task_struct` offsets the programs read, from one read of the kernel's BTF (each is
/// `None` when the BTF does not say). Reading it takes tens of milliseconds: once per trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// The thread's thread pointer (inside its `thread`): for the Python walk.
    pub fsbase: Option<u32>,
    /// `tgid` and `exit_code`: how the programs at `mark_victim` and `sched_process_exit` read
    /// the victim's process and the exit status.
    pub exit: Option<(u32, u32)>,
    /// `flags`: how the program at `sched_process_exit` tells a thread killed with its process
    /// (`PF_SIGNALED`).
    pub flags: Option<u32>,
}

/// The offsets in the running kernel.
pub fn task_offsets() -> TaskOffsets {
    let (strukt, field) = crate::arch::THREAD_POINTER_MEMBER;
    let Some(types) = fs::read(VMLINUX)
        .ok()
        .and_then(|data| composites(&data, &["task_struct", strukt]))
    else {
        return TaskOffsets::default();
    };
    let member = |strukt: &str, member: &str| {
        types
            .iter()
            .filter(|t| t.name == strukt)
            .find_map(|t| t.members.iter().find(|(n, _)| n == member).map(|m| m.1))
    };
    let task = |name: &str| member("task_struct", name);
    TaskOffsets {
        fsbase: task("thread")
            .zip(member(strukt, field))
            .map(|(a, b)| a + b),
        exit: task("tgid").zip(task("exit_code")),
        flags: task("flags"),
    }
}

/// The name at `offset` of the string section, without its NUL.
fn name_at(strings: &[u8], offset: u32) -> &[u8] {
    let rest = strings.get(offset as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    &rest[..end]
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The structs and unions of a BTF blob (little-endian, as on x86-64) named in `wanted`.
fn composites(data: &[u8], wanted: &[&str]) -> Option<Vec<Composite>> {
    if u16_at(data, 0)? != BTF_MAGIC {
        return None;
    }
    let header = u32_at(data, 4)? as usize;
    let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
    let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
    let types = data.get(header + type_off..header + type_off + type_len)?;
    let strings = data.get(header + str_off..header + str_off + str_len)?;
    let name = |offset: u32| String::from_utf8_lossy(name_at(strings, offset)).into_owned();
    let mut found = Vec::new();
    let mut at = 0;
    while at + 12 <= types.len() {
        let name_off = u32_at(types, at)?;
        let info = u32_at(types, at + 4)?;
        at += 12;
        let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
        // The bytes that follow each kind's common header.
        let extra = match kind {
            KIND_STRUCT | KIND_UNION => 12 * vlen,
            1 | 14 | 17 => 4,     // int, var, decl tag
            3 => 12,              // array
            6 => 8 * vlen,        // enum
            13 => 8 * vlen,       // func proto
            15 | 19 => 12 * vlen, // datasec, enum64
            _ => 0,
        };
        if (kind == KIND_STRUCT || kind == KIND_UNION)
            && name_off != 0
            && wanted
                .iter()
                .any(|w| name_at(strings, name_off) == w.as_bytes())
        {
            let mut members = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let member = at + 12 * i;
                let offset = u32_at(types, member + 8)?;
                // With kind_flag, the top 8 bits are a bitfield's size.
                let bits = if kind_flag == 1 {
                    offset & 0x00ff_ffff
                } else {
                    offset
                };
                members.push((name(u32_at(types, member)?), bits / 8));
            }
            found.push(Composite {
                name: name(name_off),
                members,
            });
        }
        at += extra;
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_a_fsbase_offset() {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("SKIP: no /sys/kernel/btf/vmlinux");
            return;
        }
        let offset = task_offsets()
            .fsbase
            .expect("task_struct.thread.fsbase in BTF");
        // Far into task_struct (its thread_struct comes last), and 8-aligned.
        assert!(offset > 1024 && offset.is_multiple_of(8), "{offset}");
    }

    #[test]
    fn this_kernel_has_exit_offsets() {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("SKIP: no /sys/kernel/btf/vmlinux");
            return;
        }
        let offsets = task_offsets();
        let (tgid, exit_code) = offsets.exit.expect("task_struct.tgid and exit_code in BTF");
        assert!(
            tgid > 0 && exit_code > 0 && tgid.is_multiple_of(4),
            "{tgid} {exit_code}"
        );
        // `flags` follows the thread info, the stack pointer and the usage count, 4-aligned.
        let flags = offsets.flags.expect("task_struct.flags in BTF");
        assert!(
            flags > 0 && flags < tgid && flags.is_multiple_of(4),
            "{flags}"
        );
    }
}
