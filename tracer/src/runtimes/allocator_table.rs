//! An allocator a runtime calls through a table of function pointers in its own memory
//! (CPython's `PyMemAllocatorEx` domains), found and probed in a build whose symbols do not name
//! its functions, and the redirect of a live table that makes every call reach them.
//!
//! - **Finding the table.** The runtime exports small functions that read one slot of the
//!   table each and call through it (`PyObject_Malloc` reads the `malloc` slot, ...): the table
//!   is the address every such reader reads its own slot of, decoded from their code
//!   ([`find_table`]).
//! - **Its functions.** The table's words as the object initializes them ([`initial_words`],
//!   with the relocations of a position-independent object applied) or as the process holds
//!   them now ([`ObjectView::live_words`]: a process can replace its allocator) give the
//!   functions to probe, by address, with no symbol needed.
//! - **Why redirect.** A build made with profile-guided optimization and LTO (Debian's) turns
//!   each hot call through the table into `if (table.malloc == the_usual_function) { its body,
//!   inlined } else { call through the table }`: a probe on the function's entry sees only the
//!   calls the compiler did not inline, a small share. Pointing the table at another entry of
//!   the same function (past its landing pad, or at the no-ops that pad it from the function
//!   before: [`equivalent_entry`]) makes every comparison fail, so every call goes through the
//!   table into the probed function. Both entries run the same instructions from the probe on,
//!   so the process computes exactly what it did; only its speed changes while traced.
//! - **Writing into the target** ([`TableRedirect::apply`], [`AppliedRedirect::restore`]): each
//!   slot is checked to hold what was read, then changed by one aligned 8-byte write through
//!   `/proc/PID/mem`, while every thread of the process is stopped (ptrace, as a reachability
//!   scan does), so no thread can see a half-written pointer; a process already stopped (at its
//!   entry point, at its teardown) is written as it is. Undone at detach (and when the trace
//!   ends in error). If leaktracer is killed first, the table keeps pointing at the other entry
//!   of the same function: the process runs on, correct, a little slower, and the next trace
//!   takes the table back as it finds it.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, MetadataExt},
    path::Path,
    time::{Duration, Instant},
};

use object::{
    Object, ObjectSegment, ObjectSymbol, ObjectSymbolTable, RelocationFlags, RelocationTarget,
};
use tracer_common::programs::Program;

use crate::{
    arch,
    reach::stop::{Frozen, StopError},
    target::maps::read_maps,
};

/// An object file being planned for, as a runtime looking for its allocator there sees it.
pub struct ObjectView<'a> {
    pub elf: &'a object::File<'a>,
    /// The object as the process sees its path, for messages.
    pub display_path: &'a str,
    /// Its device and inode.
    pub file: (u64, u64),
    /// The process the plan is for (0: none yet).
    pub pid: u32,
}

impl<'a> ObjectView<'a> {
    /// The process and where the object is loaded in it (its load bias), when it runs the
    /// object already (a launched command's plan is made before its exec).
    pub fn live(&self) -> Option<(u32, u64)> {
        if self.pid == 0 {
            return None;
        }
        load_bias(self.pid, self.file, self.elf).map(|bias| (self.pid, bias))
    }

    /// `count` words at link-time `address` as the process holds them now, in link-time terms
    /// (the load bias taken off); `None` when the process does not run the object.
    pub fn live_words(&self, address: u64, count: usize) -> Option<Vec<u64>> {
        let (pid, bias) = self.live()?;
        let memory = File::open(format!("/proc/{pid}/mem")).ok()?;
        let mut buf = vec![0u8; count * 8];
        memory
            .read_exact_at(&mut buf, address.wrapping_add(bias))
            .ok()?;
        Some(
            buf.chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()).wrapping_sub(bias))
                .collect(),
        )
    }

    /// A redirect of `slots` of a table in this object, called `what` in messages; `missed`
    /// says what goes unseen without it.
    pub fn redirect(
        &self,
        what: String,
        missed: String,
        slots: Vec<SlotChange>,
    ) -> Option<TableRedirect> {
        Some(TableRedirect {
            what,
            missed,
            file: self.file,
            first_page: first_page(self.elf)?,
            slots,
        })
    }

    /// The bytes of the object's file at link-time `address` (up to `len`), when a segment
    /// maps them from the file.
    fn bytes_at(&self, address: u64, len: u64) -> Option<&'a [u8]> {
        self.elf.segments().find_map(|segment| {
            let start = segment.address();
            let (_, file_size) = segment.file_range();
            if address < start || address >= start + file_size {
                return None;
            }
            let data = segment.data().ok()?;
            let from = (address - start) as usize;
            let to = (from as u64 + len).min(file_size) as usize;
            data.get(from..to)
        })
    }

    /// The file offset of link-time `address` in an executable segment.
    pub fn code_offset(&self, address: u64) -> Option<u64> {
        self.elf.segments().find_map(|segment| {
            let start = segment.address();
            let (offset, file_size) = segment.file_range();
            let executable = matches!(
                segment.flags(),
                object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
            );
            (executable && address >= start && address < start + file_size)
                .then(|| offset + (address - start))
        })
    }

    /// The code of the exported function `symbol`, and its link-time address.
    fn function(&self, symbol: &str) -> Option<(&'a [u8], u64)> {
        let found = self
            .elf
            .dynamic_symbols()
            .chain(self.elf.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(symbol) && s.size() > 0)?;
        Some((
            self.bytes_at(found.address(), found.size())?,
            found.address(),
        ))
    }
}

/// Where `elf` (the file `file`) is loaded in `pid`: the start of its mapping at file offset 0
/// less the link-time page of its first segment.
fn load_bias(pid: u32, file: (u64, u64), elf: &object::File) -> Option<u64> {
    let first_page = first_page(elf)?;
    read_maps(pid)
        .ok()?
        .iter()
        .find(|m| m.offset == 0 && m.inode == file.1 && m.dev_number() == Some(file.0))
        .map(|m| m.start.wrapping_sub(first_page))
}

/// The link-time page of `elf`'s first segment (the one at file offset 0).
fn first_page(elf: &object::File) -> Option<u64> {
    elf.segments()
        .find(|s| s.file_range().0 == 0)
        .map(|s| s.address() & !0xfff)
}

/// An exported function that reads one slot of a table and calls through it: its symbol and
/// the slot's offset in the table.
#[derive(Clone, Copy, Debug)]
pub struct Reader {
    pub symbol: &'static str,
    pub slot: u64,
}

/// The link-time address of the table each of `readers` reads its own slot of, other than
/// `others` (tables found already: a reader may read another table too, where it calls through
/// it inlined); `None` when the object does not define them all or their code names no such
/// single table.
pub fn find_table(view: &ObjectView, readers: &[Reader], others: &[u64]) -> Option<u64> {
    let mut loads = Vec::new();
    for reader in readers {
        let (code, address) = view.function(reader.symbol)?;
        let words: Vec<u64> = arch::references(code, address)
            .loads
            .into_iter()
            .filter_map(|load| match load {
                arch::Load::At(at) => Some(at),
                arch::Load::Through { pointer, offset } => {
                    let base = initial_words(view, pointer, 1)?;
                    Some(base.first()?.wrapping_add(offset))
                }
            })
            .collect();
        loads.push((reader.slot, words));
    }
    let (first_slot, first_loads) = loads.first()?;
    let mut tables = first_loads.iter().filter_map(|load| {
        let table = load.checked_sub(*first_slot)?;
        (!others.contains(&table)).then_some(())?;
        loads
            .iter()
            .all(|(slot, reads)| reads.contains(&(table + slot)))
            .then_some(table)
    });
    let table = tables.next()?;
    // Two tables that fit alike: the code does not say which.
    tables.all(|other| other == table).then_some(table)
}

/// The address constants `readers`' code compares with or takes: where a build inlined the
/// function it expected in a slot, that function's address is among them.
pub fn compared_constants(view: &ObjectView, readers: &[Reader]) -> Vec<u64> {
    readers
        .iter()
        .filter_map(|reader| view.function(reader.symbol))
        .flat_map(|(code, address)| arch::references(code, address).constants)
        .collect()
}

/// `count` words at link-time `address` as the object initializes them: its file's data, with
/// the relocations the loader applies to a position-independent object taken as if it were
/// loaded at its link-time address.
pub fn initial_words(view: &ObjectView, address: u64, count: usize) -> Option<Vec<u64>> {
    let bytes = view.bytes_at(address, count as u64 * 8);
    let mut words: Vec<u64> = (0..count)
        .map(|i| {
            bytes
                .and_then(|b| b.get(i * 8..i * 8 + 8))
                .map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
        })
        .collect();
    if let Some(relocations) = view.elf.dynamic_relocations() {
        let end = address + count as u64 * 8;
        for (at, relocation) in relocations.filter(|(at, _)| (address..end).contains(at)) {
            let index = ((at - address) / 8) as usize;
            let addend = relocation.addend() as u64;
            let RelocationFlags::Elf { r_type } = relocation.flags() else {
                return None;
            };
            words[index] = match relocation.target() {
                _ if r_type == arch::RELATIVE_RELOCATION => addend,
                RelocationTarget::Symbol(symbol) if arch::SYMBOL_RELOCATIONS.contains(&r_type) => {
                    let symbol = view
                        .elf
                        .dynamic_symbol_table()?
                        .symbol_by_index(symbol)
                        .ok()?;
                    if !symbol.is_definition() {
                        return None; // points into another object
                    }
                    symbol.address().wrapping_add(addend)
                }
                _ => return None,
            };
        }
    }
    // A table whose words the file leaves out (zero-filled data) starts empty.
    bytes.is_some().then_some(words)
}

/// Another entry of a function that runs exactly what the function runs, and where a probe
/// must go to see calls through either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EquivalentEntry {
    /// The function (link-time address).
    pub function: u64,
    /// The other entry.
    pub entry: u64,
    /// The first address every call through either entry runs: the probe goes there or later.
    pub probe_from: u64,
}

/// The longest run of no-ops that may pad a function from the one before it.
const MAX_PADDING: u64 = 15;

/// An entry of `function` other than its address: past its landing pad (`endbr64`), when the
/// instruction there may carry a probe; else a run of no-ops that ends at the function (the
/// padding before it), the one whose address differs from the function's in the fewest bytes
/// (one byte: no read of it can ever see a mixture). `None` when there is neither.
pub fn equivalent_entry(view: &ObjectView, function: u64) -> Option<EquivalentEntry> {
    let code = view.bytes_at(function, 32)?;
    let mut instructions = arch::decode(code);
    let first = instructions.next()?;
    if first.is_landing_pad
        && let Some(next) = instructions.next()
        && !next.kernel_rewrites_probe
        && (next.emulated || next.falls_through)
    {
        let entry = function + first.length;
        return Some(EquivalentEntry {
            function,
            entry,
            probe_from: entry,
        });
    }
    let before = view
        .bytes_at(function.checked_sub(MAX_PADDING)?, MAX_PADDING)
        .filter(|before| before.len() as u64 == MAX_PADDING)?;
    (1..=MAX_PADDING)
        .map(|back| function - back)
        .filter(|start| only_no_ops_until(&before[(start + MAX_PADDING - function) as usize..]))
        .min_by_key(|start| (differing_bytes(*start, function), function - start))
        .map(|entry| EquivalentEntry {
            function,
            entry,
            probe_from: function,
        })
}

/// True when `code` decodes as no-ops that end exactly at its end.
fn only_no_ops_until(code: &[u8]) -> bool {
    let mut end = 0;
    for instruction in arch::decode(code) {
        if !instruction.is_nop {
            return false;
        }
        end = instruction.offset + instruction.length;
        if end >= code.len() as u64 {
            break;
        }
    }
    !code.is_empty() && end == code.len() as u64
}

/// How many of the 8 bytes of two pointers differ.
fn differing_bytes(a: u64, b: u64) -> u32 {
    (a ^ b)
        .to_le_bytes()
        .iter()
        .filter(|byte| **byte != 0)
        .count() as u32
}

/// A function of the runtime's allocator found through its table, to probe.
#[derive(Clone, Debug)]
pub struct LocatedFunction {
    /// What `--verbose` calls it (its name in the runtime's source, where that is known).
    pub name: String,
    pub program: &'static Program,
    /// The function's file offset.
    pub offset: u64,
    /// The file offset from which its probe may go (past the entries calls reach it by).
    pub probe_from: u64,
}

/// What a runtime found of its allocator in one object.
#[derive(Clone, Debug, Default)]
pub struct Located {
    pub functions: Vec<LocatedFunction>,
    /// The redirect to make once the probes are in, if the build needs one.
    pub redirect: Option<TableRedirect>,
    /// Said once for each process the plan is for (what is not seen, and why).
    pub note: Option<String>,
}

/// One slot to change: link-time addresses and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotChange {
    pub address: u64,
    pub original: u64,
    pub redirected: u64,
}

/// Slots of a runtime's allocator table to point at equivalent entries of the same functions
/// while the trace runs (see the module's documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRedirect {
    /// What the table is, for messages: `python3.11: object allocator`.
    pub what: String,
    /// What goes unseen when it cannot be made, for the note that says so.
    pub missed: String,
    /// The object holding it: device and inode, and the link-time page of its first segment.
    pub file: (u64, u64),
    pub first_page: u64,
    pub slots: Vec<SlotChange>,
}

/// Why a table was not changed.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("the process no longer maps {0}")]
    NotMapped(String),
    #[error("cannot stop it to write: {0}")]
    Stop(#[from] StopError),
    #[error(
        "a slot at {address:#x} holds {found:#x}, neither the function read before nor its other entry: left as it is"
    )]
    Changed { address: u64, found: u64 },
    #[error("its indirect branches are tracked (IBT): another entry would fault")]
    BranchTracking,
    #[error("a slot at {0:#x} is not 8-byte aligned")]
    Unaligned(u64),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A redirect made in a process: undone by [`AppliedRedirect::restore`].
#[derive(Clone, Debug)]
pub struct AppliedRedirect {
    pub pid: u32,
    /// Where the object was loaded (its mapping at file offset 0, and the load bias).
    mapping_start: u64,
    bias: u64,
    pub redirect: TableRedirect,
    /// How many slots the apply changed (the others held the other entry already: a process
    /// forked from a traced one, or one a killed trace left redirected).
    pub changed: usize,
}

/// How long a redirect waits for the target's threads to stop.
const STOP_WAIT: Duration = Duration::from_millis(500);

impl TableRedirect {
    /// Points the slots of `pid`'s table at the other entries, each slot that still holds the
    /// function read when the plan was made (one already at the other entry is left alone).
    pub fn apply(&self, pid: u32) -> Result<AppliedRedirect, RedirectError> {
        if arch::tracks_indirect_branches(pid) {
            return Err(RedirectError::BranchTracking);
        }
        let (mapping_start, bias) = self.loaded_in(pid)?;
        let writes: Vec<(u64, u64, u64)> = self
            .slots
            .iter()
            .map(|s| {
                (
                    s.address.wrapping_add(bias),
                    s.original.wrapping_add(bias),
                    s.redirected.wrapping_add(bias),
                )
            })
            .collect();
        let (changed, _) = self.swap_words(pid, (mapping_start, bias), &writes, true)?;
        Ok(AppliedRedirect {
            pid,
            mapping_start,
            bias,
            redirect: self.clone(),
            changed,
        })
    }

    /// The start of the object's mapping at file offset 0 in `pid`, and its load bias.
    fn loaded_in(&self, pid: u32) -> Result<(u64, u64), RedirectError> {
        read_maps(pid)?
            .iter()
            .find(|m| {
                m.offset == 0 && m.inode == self.file.1 && m.dev_number() == Some(self.file.0)
            })
            .map(|m| (m.start, m.start.wrapping_sub(self.first_page)))
            .ok_or_else(|| RedirectError::NotMapped(self.what.clone()))
    }

    /// Under a hold on `pid` (its threads stopped), checks that the object is still loaded as
    /// `loaded`, then writes `to` in each slot of `writes` (address, from, to) that holds
    /// `from`. A slot that holds neither `from` nor `to` (someone else changed it: tracemalloc,
    /// a debugger) is left as it is; with `all_or_nothing`, nothing is written then (a redirect
    /// of some slots and not others would see allocations whose frees it misses). Returns how
    /// many slots were written and how many left.
    fn swap_words(
        &self,
        pid: u32,
        loaded: (u64, u64),
        writes: &[(u64, u64, u64)],
        all_or_nothing: bool,
    ) -> Result<(usize, usize), RedirectError> {
        if let Some(&(address, ..)) = writes.iter().find(|(address, ..)| address % 8 != 0) {
            return Err(RedirectError::Unaligned(address));
        }
        // Checked before stopping anything (a process gone or exec'd is left alone), and
        // again once it is stopped.
        if self.loaded_in(pid)? != loaded {
            return Err(RedirectError::NotMapped(self.what.clone()));
        }
        let _held = hold(pid)?;
        if self.loaded_in(pid)? != loaded {
            return Err(RedirectError::NotMapped(self.what.clone()));
        }
        let memory = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        let (mut pending, mut left) = (Vec::new(), 0);
        for &(address, from, to) in writes {
            let mut word = [0u8; 8];
            memory.read_exact_at(&mut word, address)?;
            match u64::from_le_bytes(word) {
                found if found == from => pending.push((address, to)),
                found if found == to => {}
                found if all_or_nothing => return Err(RedirectError::Changed { address, found }),
                _ => left += 1,
            }
        }
        for &(address, value) in &pending {
            store_pointer_in_target(&memory, address, value)?;
        }
        Ok((pending.len(), left))
    }
}

impl AppliedRedirect {
    /// Each slot as the process sees it: (address, original, redirected).
    pub fn slots_in_process(&self) -> Vec<(u64, u64, u64)> {
        self.redirect
            .slots
            .iter()
            .map(|s| {
                (
                    s.address.wrapping_add(self.bias),
                    s.original.wrapping_add(self.bias),
                    s.redirected.wrapping_add(self.bias),
                )
            })
            .collect()
    }

    /// Points the slots back at the functions, each that still holds the other entry; returns
    /// how many were written, and how many were left as someone else set them. Nothing is
    /// written where the object is no longer loaded as it was (the process exec'd or exited).
    pub fn restore(&self) -> Result<(usize, usize), RedirectError> {
        // Each slot from the redirected entry back to the original one.
        let writes: Vec<(u64, u64, u64)> = self
            .slots_in_process()
            .into_iter()
            .map(|(address, original, redirected)| (address, redirected, original))
            .collect();
        self.redirect
            .swap_words(self.pid, (self.mapping_start, self.bias), &writes, false)
    }
}

/// The one write leaktracer makes into a target: the aligned 8-byte pointer `value` at
/// `address`, in a single write to its memory file.
fn store_pointer_in_target(memory: &File, address: u64, value: u64) -> io::Result<()> {
    let written = memory.write_at(&value.to_le_bytes(), address)?;
    if written != 8 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("wrote {written} of 8 bytes at {address:#x}"),
        ));
    }
    Ok(())
}

/// What keeps a target from running while its table is written: nothing when every thread is
/// stopped already (at its entry point, at its teardown), else its threads stopped by ptrace.
enum Hold {
    AlreadyStopped,
    /// Dropping it lets the threads go.
    Stopped {
        _threads: Frozen,
    },
}

fn hold(pid: u32) -> Result<Hold, StopError> {
    if every_thread_stopped(pid) {
        return Ok(Hold::AlreadyStopped);
    }
    Frozen::stop(pid, Instant::now() + STOP_WAIT).map(|threads| Hold::Stopped { _threads: threads })
}

/// True when every thread of `pid` is stopped (by a signal or a tracer).
fn every_thread_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name's closing parenthesis.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if !matches!(state, Some('T' | 't')) {
            return false;
        }
        any = true;
    }
    any
}

/// The device and inode of `path`.
pub fn file_identity(path: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_op_runs_must_end_exactly_where_the_code_does() {
        // An 8-byte nopl, a 2-byte xchg no-op, a 1-byte nop.
        assert!(only_no_ops_until(&[
            0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0x66, 0x90, 0x90
        ]));
        assert!(only_no_ops_until(&[0x90]));
        // The tail of `jmp` then `nop`: not only no-ops.
        assert!(!only_no_ops_until(&[0xeb, 0xe0, 0x90]));
        // A no-op that runs past the end: the function would not start where it should.
        assert!(!only_no_ops_until(&[0x0f, 0x1f, 0x84, 0, 0]));
        // `pause` (f3 90) is no no-op.
        assert!(!only_no_ops_until(&[0xf3, 0x90]));
        assert!(!only_no_ops_until(&[]));
    }

    #[test]
    fn pointers_differ_by_the_bytes_that_differ() {
        assert_eq!(differing_bytes(0x4fb450, 0x4fb448), 1);
        assert_eq!(differing_bytes(0x506400, 0x5063ff), 2);
        assert_eq!(differing_bytes(0x571510, 0x571514), 1);
        assert_eq!(differing_bytes(7, 7), 0);
    }

    #[test]
    fn every_thread_of_a_stopped_process_is_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!every_thread_stopped(pid));
        // SAFETY: signals to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !every_thread_stopped(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(every_thread_stopped(pid));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!every_thread_stopped(pid), "a reaped process has no thread");
    }
}
