//! Unwind tables compiled from an object's call-frame information (`.eh_frame`, or
//! `.debug_frame` without it): for each
//! address range, how to find the canonical frame address and the caller's saved frame
//! pointer, as
//! compact [`UnwindRow`]s sorted by address; and [`step`], the rule the kernel's walker follows
//! (here for tests against real stacks). What the row format cannot express becomes a
//! [`CfaRule::Stop`] row and is counted in [`TableStats`], never dropped silently.

use std::{collections::HashMap, fs, path::Path, sync::Arc};

use gimli::{
    BaseAddresses, CfaRule as GimliCfa, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian,
    RegisterRule, UnwindContext, UnwindSection,
};
use object::{Object, ObjectSection};
use tracer_common::{CfaRule, FpRule, UnwindRow};

use crate::{arch::cfi, target::maps::Mapping};

/// What compiling a table met, besides the rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Function entries (FDEs) compiled.
    pub functions: u64,
    /// Rows whose rules the format cannot express (made [`CfaRule::Stop`]).
    pub unrepresentable: u64,
    /// Address ranges between functions with no CFI (a [`CfaRule::Stop`] row each).
    pub gaps: u64,
}

/// An object's unwind table.
#[derive(Clone, Debug, Default)]
pub struct UnwindTable {
    /// Sorted by `pc`, no two consecutive rows alike.
    pub rows: Vec<UnwindRow>,
    pub stats: TableStats,
}

/// Why a table could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an ELF object: {reason}")]
    NotElf { path: String, reason: String },
    #[error("{path}: malformed .eh_frame: {reason}")]
    BadCfi { path: String, reason: String },
}

fn stop_row(pc: u32) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_rule: CfaRule::Stop as u8,
        fp_rule: FpRule::Lost as u8,
        ..Default::default()
    }
}

/// Compiles the table of the ELF object at `path`.
pub fn compile_file(path: &Path) -> Result<UnwindTable, UnwindError> {
    let display = path.display().to_string();
    let data = crate::target::object_file::read(path).map_err(|source| UnwindError::Read {
        path: display.clone(),
        source,
    })?;
    compile(&data).map_err(|reason| match reason {
        CompileError::Elf(reason) => UnwindError::NotElf {
            path: display,
            reason,
        },
        CompileError::Cfi(reason) => UnwindError::BadCfi {
            path: display,
            reason,
        },
    })
}

enum CompileError {
    Elf(String),
    Cfi(String),
}

/// Compiles the table of an ELF object's bytes, from `.eh_frame`, or else from `.debug_frame`
/// (Go's linker writes only that one, compressed). An object with neither has an empty table
/// (every address is then a gap for the unwinder).
fn compile(data: &[u8]) -> Result<UnwindTable, CompileError> {
    let file = object::File::parse(data).map_err(|e| CompileError::Elf(e.to_string()))?;
    let elf = |e: object::Error| CompileError::Elf(e.to_string());
    let mut bases = BaseAddresses::default();
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(section) = file.section_by_name(".eh_frame") {
        bases = bases.set_eh_frame(section.address());
        if let Some(hdr) = file.section_by_name(".eh_frame_hdr") {
            bases = bases.set_eh_frame_hdr(hdr.address());
        }
        let bytes = section.data().map_err(elf)?;
        return compile_section(&EhFrame::new(bytes, LittleEndian), &bases);
    }
    if let Some(section) = file.section_by_name(".debug_frame") {
        let bytes = section.uncompressed_data().map_err(elf)?;
        let mut debug_frame = DebugFrame::new(&bytes, LittleEndian);
        debug_frame.set_address_size(8);
        return compile_section(&debug_frame, &bases);
    }
    Ok(UnwindTable::default())
}

/// Compiles the rows of one call-frame section (`.eh_frame` or `.debug_frame`).
fn compile_section<'data, S>(
    section: &S,
    bases: &BaseAddresses,
) -> Result<UnwindTable, CompileError>
where
    S: UnwindSection<EndianSlice<'data, LittleEndian>>,
{
    let cfi = |e: gimli::Error| CompileError::Cfi(e.to_string());
    let mut ctx = Box::new(UnwindContext::new());
    // Per function: its range and its rows.
    let mut functions: Vec<(u64, u64, Vec<UnwindRow>)> = Vec::new();
    let mut stats = TableStats::default();
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().map_err(cfi)? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial
            .parse(|section, bases, offset| section.cie_from_offset(bases, offset))
            .map_err(cfi)?;
        let mut table = fde.rows(section, bases, &mut ctx).map_err(cfi)?;
        let mut rows = Vec::new();
        while let Some(row) = table.next_row().map_err(cfi)? {
            let compiled = compile_row(row, section);
            if compiled.cfa_rule == CfaRule::Stop as u8 {
                stats.unrepresentable += 1;
            }
            rows.push(UnwindRow {
                pc: object_address(row.start_address())?,
                ..compiled
            });
        }
        stats.functions += 1;
        functions.push((fde.initial_address(), fde.end_address(), rows));
    }
    functions.sort_by_key(|(start, ..)| *start);
    let mut rows: Vec<UnwindRow> = Vec::new();
    let mut covered_to = 0u64;
    for (start, end, function_rows) in functions {
        if start > covered_to && !rows.is_empty() {
            rows.push(stop_row(object_address(covered_to)?));
            stats.gaps += 1;
        }
        rows.extend(function_rows);
        covered_to = covered_to.max(end);
    }
    if !rows.is_empty() {
        rows.push(stop_row(object_address(covered_to)?));
    }
    // One row per change: a row like the one before it adds nothing.
    rows.dedup_by(|next, kept| {
        let same = UnwindRow { pc: 0, ..*next } == UnwindRow { pc: 0, ..*kept };
        same || next.pc == kept.pc && {
            // Two rows at one address (an empty range): the later one holds.
            *kept = *next;
            true
        }
    });
    Ok(UnwindTable { rows, stats })
}

/// An object address as a row's `pc`: tables cover code below 4 GiB (see [`UnwindRow`]).
fn object_address(address: u64) -> Result<u32, CompileError> {
    u32::try_from(address).map_err(|_| {
        CompileError::Elf(format!(
            "code at {address:#x}, above the 4 GiB tables cover"
        ))
    })
}

/// One gimli row as an [`UnwindRow`] (its `pc` left for the caller).
fn compile_row<R: gimli::Reader, S: UnwindSection<R>>(
    row: &gimli::UnwindTableRow<R::Offset>,
    section: &S,
) -> UnwindRow {
    let unrepresentable = stop_row(0);
    // The return address where `call` pushes it; anything else this format cannot follow.
    match row.register(cfi::RETURN_ADDRESS) {
        Some(RegisterRule::Offset(offset)) if offset == cfi::RETURN_ADDRESS_AT => {}
        None => {}
        // The outermost frame (`_start`, `clone`'s child): the stack is complete.
        Some(RegisterRule::Undefined) => {
            return UnwindRow {
                cfa_rule: CfaRule::End as u8,
                ..unrepresentable
            };
        }
        Some(_) => return unrepresentable,
    }
    let (cfa_rule, cfa_offset) = match row.cfa() {
        GimliCfa::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i32::try_from(*offset) else {
                return unrepresentable;
            };
            match *register {
                cfi::STACK_POINTER => (CfaRule::SpOffset, offset),
                cfi::FRAME_POINTER => (CfaRule::FpOffset, offset),
                _ => return unrepresentable,
            }
        }
        GimliCfa::Expression(expression) => {
            let threshold = expression
                .get(section)
                .ok()
                .and_then(|e| e.0.to_slice().ok().and_then(|b| cfi::plt_threshold(&b)));
            match threshold {
                Some(threshold) => (CfaRule::Plt, threshold),
                None => return unrepresentable,
            }
        }
    };
    let (fp_rule, fp_offset) = match row.register(cfi::FRAME_POINTER) {
        None | Some(RegisterRule::SameValue) => (FpRule::Unchanged, 0),
        Some(RegisterRule::Offset(offset)) => match i32::try_from(offset) {
            Ok(offset) => (FpRule::AtCfaOffset, offset),
            Err(_) => (FpRule::Lost, 0),
        },
        Some(_) => (FpRule::Lost, 0),
    };
    UnwindRow {
        pc: 0,
        cfa_rule: cfa_rule as u8,
        fp_rule: fp_rule as u8,
        cfa_offset,
        fp_offset,
        ..Default::default()
    }
}

impl UnwindTable {
    /// The row that covers `pc` (the last one starting at or before it), if any.
    pub fn row_for(&self, pc: u64) -> Option<&UnwindRow> {
        let index = self.rows.partition_point(|row| u64::from(row.pc) <= pc);
        index.checked_sub(1).map(|i| &self.rows[i])
    }
}

/// The load bias of a mapping (runtime address - ELF virtual address): from the loadable
/// segment whose page-aligned file offset is where the mapping starts in the file.
pub fn load_bias(elf: &object::File, mapping_start: u64, mapping_offset: u64) -> Option<u64> {
    use object::ObjectSegment;
    const PAGE: u64 = 4096;
    elf.segments().find_map(|segment| {
        let (file_offset, _) = segment.file_range();
        (file_offset & !(PAGE - 1) == mapping_offset)
            .then(|| mapping_start.wrapping_sub(segment.address() & !(PAGE - 1)))
    })
}

/// An executable mapping of a process, with its object's table.
#[derive(Clone, Debug)]
pub struct MappedTable {
    pub start: u64,
    pub end: u64,
    /// Runtime address - the object's virtual address.
    pub bias: u64,
    pub path: String,
    /// The object's device and inode (its key in the cache).
    pub object: (u64, u64),
    /// None when the object could not be read or has no usable CFI.
    pub table: Option<Arc<UnwindTable>>,
}

/// What `/proc/PID/maps` says of a process's code: its executable mappings (start, end, file
/// offset, inode) and where the uretprobe trampoline page is. Equal layouts have equal tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeLayout {
    pub mappings: Vec<(u64, u64, u64, u64)>,
    /// The kernel's `[uprobes]` page, once a uretprobe fired in the process.
    pub trampoline: Option<(u64, u64)>,
}

impl CodeLayout {
    /// The layout of `maps`.
    pub fn of(maps: &[Mapping]) -> Self {
        let mut layout = Self::default();
        for mapping in maps {
            if mapping.is_file() && mapping.is_executable() {
                layout
                    .mappings
                    .push((mapping.start, mapping.end, mapping.offset, mapping.inode));
            } else if mapping.path.as_deref() == Some("[uprobes]") {
                layout.trampoline = Some((mapping.start, mapping.end));
            }
        }
        layout
    }
}

/// Tables of the objects processes map, each compiled once however many processes map it
/// (keyed by device and inode: 20 processes sharing libc compile it once).
#[derive(Default)]
pub struct TableCache {
    tables: HashMap<(u64, u64), Option<Arc<UnwindTable>>>,
    /// Objects compiled so far.
    pub compiled: u64,
    /// Objects whose table could not be compiled (unreadable, not ELF, malformed CFI).
    pub failed: u64,
}

impl TableCache {
    /// The tables of every executable file mapping in `maps` (of `pid`), the objects opened as
    /// the process maps them (through `/proc/PID/map_files`, or its root, checked by device
    /// and inode). An object that cannot be read or parsed has no table: frames in it stop
    /// the unwinder, counted.
    pub fn process_tables(&mut self, pid: u32, maps: &[Mapping]) -> Vec<MappedTable> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for mapping in maps {
            if !(mapping.is_file() && mapping.is_executable()) {
                continue;
            }
            let (Some(path), Some(dev)) = (mapping.clean_path(), mapping.dev_number()) else {
                continue;
            };
            let key = (dev, mapping.inode);
            let map_file = format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                mapping.start, mapping.end
            );
            let opened = [
                std::path::PathBuf::from(map_file),
                crate::target::process::path_in_root(pid, path),
            ]
            .into_iter()
            .find_map(|candidate| {
                let meta = fs::metadata(&candidate).ok()?;
                ((meta.dev(), meta.ino()) == key).then_some(candidate)
            });
            let data = opened.and_then(|file| fs::read(file).ok());
            let elf = data.as_deref().and_then(|d| object::File::parse(d).ok());
            let bias = elf
                .as_ref()
                .and_then(|elf| load_bias(elf, mapping.start, mapping.offset));
            let table = match (self.tables.get(&key), data.as_deref()) {
                (Some(table), _) => table.clone(),
                (None, Some(data)) => {
                    let table = compile(data).ok().map(Arc::new);
                    match table {
                        Some(_) => self.compiled += 1,
                        None => self.failed += 1,
                    }
                    self.tables.insert(key, table.clone());
                    table
                }
                (None, None) => None,
            };
            out.push(MappedTable {
                start: mapping.start,
                end: mapping.end,
                bias: bias.unwrap_or(0),
                path: path.to_string(),
                object: key,
                table: table.filter(|_| bias.is_some()),
            });
        }
        out
    }

    /// Forgets objects no process maps any more (`in_use` lists those still mapped).
    pub fn retain(&mut self, in_use: &std::collections::HashSet<(u64, u64)>) {
        self.tables
            .retain(|key, table| table.is_none() || in_use.contains(key));
    }
}

/// The registers an unwind step follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registers {
    pub pc: u64,
    pub sp: u64,
    /// The frame pointer; 0 once it is lost (see [`FpRule::Lost`]).
    pub fp: u64,
}

/// Why an unwind step could not go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepError {
    /// The row says stop: no CFI, the outermost frame, or a rule the format cannot follow.
    Stop,
    /// The CFA needs a register that is lost.
    RegisterLost,
    /// The CFA is not above the stack pointer: corrupt or misread, never followed.
    CfaNotAboveSp,
    /// A memory read failed.
    Unreadable,
}

/// One unwind step, as the kernel-side walker will take it: from a frame's registers and the
/// row covering its pc, the caller's registers (its pc is the return address). `read` reads one
/// u64 of the target's memory.
pub fn step(
    row: &UnwindRow,
    regs: Registers,
    read: impl Fn(u64) -> Option<u64>,
) -> Result<Registers, StepError> {
    let offset = i64::from(row.cfa_offset);
    let cfa = match row.cfa_rule {
        r if r == CfaRule::SpOffset as u8 => regs.sp.wrapping_add_signed(offset),
        r if r == CfaRule::FpOffset as u8 => {
            if regs.fp == 0 {
                return Err(StepError::RegisterLost);
            }
            regs.fp.wrapping_add_signed(offset)
        }
        r if r == CfaRule::Plt as u8 => cfi::plt_cfa(regs.sp, regs.pc, offset),
        _ => return Err(StepError::Stop),
    };
    if cfa <= regs.sp {
        return Err(StepError::CfaNotAboveSp);
    }
    let pc = read(cfa.wrapping_add_signed(cfi::RETURN_ADDRESS_AT)).ok_or(StepError::Unreadable)?;
    let fp = match row.fp_rule {
        r if r == FpRule::Unchanged as u8 => regs.fp,
        r if r == FpRule::AtCfaOffset as u8 => {
            read(cfa.wrapping_add_signed(i64::from(row.fp_offset))).ok_or(StepError::Unreadable)?
        }
        _ => 0,
    };
    Ok(Registers { pc, sp: cfa, fp })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// What readelf says at one address: the CFA, frame-pointer and ra columns.
    struct ReadelfRow {
        pc: u64,
        cfa: String,
        fp: String,
        ra: String,
    }

    /// The stack and frame pointers' names, as readelf spells them.
    fn sp_name() -> &'static str {
        cfi::register_name(cfi::STACK_POINTER)
    }
    fn fp_name() -> &'static str {
        cfi::register_name(cfi::FRAME_POINTER)
    }

    /// Every interpreted row of `readelf --debug-dump=frames-interp`: an independent reading of
    /// the same CFI. An FDE that prints no table keeps its CIE's initial rules.
    fn readelf_rows(path: &str) -> Option<Vec<ReadelfRow>> {
        let out = Command::new("readelf")
            .args(["--debug-dump=frames-interp", path])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut rows = Vec::new();
        // Initial (cfa, fp, ra) of each CIE, by its offset.
        let mut cies: std::collections::HashMap<String, (String, String, String)> =
            Default::default();
        let mut columns: Vec<String> = Vec::new();
        // The entry whose table follows: Some(cie offset) for a CIE, None for an FDE.
        let mut current_cie: Option<String> = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.contains(" CIE ") {
                current_cie = fields.first().map(|f| f.to_string());
                columns.clear();
            } else if line.contains(" FDE ") {
                current_cie = None;
                columns.clear();
                let cie = line.split("cie=").nth(1)?.split_whitespace().next()?;
                let range = line.split("pc=").nth(1)?;
                let pc = u64::from_str_radix(range.split("..").next()?, 16).ok()?;
                let (cfa, fp, ra) = cies
                    .get(cie)
                    .cloned()
                    .unwrap_or_else(|| (format!("{}+8", sp_name()), "u".into(), "c-8".into()));
                rows.push(ReadelfRow { pc, cfa, fp, ra });
            } else if fields.first() == Some(&"LOC") {
                columns = fields.iter().map(|f| f.to_string()).collect();
            } else if !columns.is_empty() && fields.len() == columns.len() {
                let Ok(pc) = u64::from_str_radix(fields[0], 16) else {
                    continue;
                };
                let column = |name: &str, default: &'static str| {
                    columns
                        .iter()
                        .position(|c| c == name)
                        .map_or(default.to_string(), |i| fields[i].to_string())
                };
                let row = ReadelfRow {
                    pc,
                    cfa: fields[1].to_string(),
                    fp: column(fp_name(), "u"),
                    ra: column("ra", "c-8"),
                };
                match &current_cie {
                    Some(cie) => {
                        cies.entry(cie.clone()).or_insert((row.cfa, row.fp, row.ra));
                    }
                    None => {
                        // The first row of a table restates the FDE's start.
                        if rows.last().is_some_and(|r: &ReadelfRow| r.pc == pc) {
                            rows.pop();
                        }
                        rows.push(row);
                    }
                }
            }
        }
        Some(rows)
    }

    fn describe(row: &UnwindRow) -> (String, String) {
        let cfa = match row.cfa_rule {
            r if r == CfaRule::SpOffset as u8 => format!("{}+{}", sp_name(), row.cfa_offset),
            r if r == CfaRule::FpOffset as u8 => format!("{}+{}", fp_name(), row.cfa_offset),
            r if r == CfaRule::Plt as u8 => "exp".to_string(),
            _ => "stop".to_string(),
        };
        let fp = match row.fp_rule {
            r if r == FpRule::AtCfaOffset as u8 => format!("c{}", row.fp_offset),
            r if r == FpRule::Unchanged as u8 => "u".to_string(),
            _ => "lost".to_string(),
        };
        (cfa, fp)
    }

    /// `path`'s table, compiled and checked row by row against readelf's interpretation of the
    /// same CFI: more than `functions` FDEs and more than `rows` rows compared. None when
    /// readelf (binutils) or the object is missing.
    fn assert_agrees_with_readelf(path: &str, functions: u64, rows: usize) -> Option<()> {
        let expected = readelf_rows(path).filter(|rows| !rows.is_empty())?;
        let table = compile_file(Path::new(path)).unwrap();
        assert!(
            table.stats.functions > functions,
            "{path}: {:?}",
            table.stats
        );
        let (mut compared, mut mismatches) = (0, Vec::new());
        for row in &expected {
            // readelf's own spellings for rules outside the format (other registers,
            // expressions other than the PLT's) are not compared.
            let representable = (row.cfa.starts_with(&format!("{}+", sp_name()))
                || row.cfa.starts_with(&format!("{}+", fp_name()))
                || row.cfa == "exp")
                && (row.fp == "u" || row.fp.starts_with("c-"))
                && (row.ra == "c-8" || row.ra == "u");
            if !representable {
                continue;
            }
            let ours = table.row_for(row.pc).map(describe);
            compared += 1;
            // An undefined return address marks the outermost frame (thread entry, _start):
            // the unwinder must stop there.
            let expected = if row.ra == "u" {
                ("stop".to_string(), "lost".to_string())
            } else {
                (row.cfa.clone(), row.fp.clone())
            };
            if ours.as_ref() != Some(&expected) {
                mismatches.push(format!(
                    "{:#x}: readelf {} {}, ours {ours:?}",
                    row.pc, row.cfa, row.fp
                ));
            }
        }
        assert!(compared > rows, "{path}: only {compared} rows compared");
        assert!(
            mismatches.is_empty(),
            "{path}: {} of {compared} rows differ, e.g. {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        );
        Some(())
    }

    /// This machine's C library and a C++ library, compiled and checked row by row against
    /// readelf's interpretation of the same CFI.
    #[test]
    fn tables_agree_with_readelf_row_by_row() {
        for path in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            // A Debian program built without frame pointers (installed for trials, may be absent).
            "/usr/bin/redis-check-rdb",
        ] {
            if assert_agrees_with_readelf(path, 1000, 10_000).is_none() {
                eprintln!("skipped {path}: readelf (binutils) or the library is missing");
            }
        }
    }

    /// An object whose only CFI is a compressed `.debug_frame` (as Go's linker writes; here gcc
    /// without unwind tables and with `-gz`) gets its table from it, row for row as readelf
    /// reads it.
    #[test]
    fn a_compressed_debug_frame_is_read_when_there_is_no_eh_frame() {
        let dir =
            std::env::temp_dir().join(format!("leaktracer-debug-frame-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let source = dir.join("frames.c");
        fs::write(
            &source,
            "int leaf(int x) { return x * 3; }\n\
             __attribute__((noinline)) int middle(int *v, int n) {\n\
                 int buf[64]; int s = 0;\n\
                 for (int i = 0; i < n && i < 64; i++) { buf[i] = v[i] + leaf(i); s += buf[i]; }\n\
                 return s + leaf(buf[n % 64]);\n\
             }\n\
             int main(int argc, char **argv) { int v[64] = {argc}; (void)argv; return middle(v, argc); }\n",
        )
        .unwrap();
        let binary = dir.join("frames");
        let built = Command::new("gcc")
            .args([
                "-O1",
                "-g",
                "-gz",
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
                "-o",
            ])
            .arg(&binary)
            .arg(&source)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            eprintln!("skipped: gcc cannot build the test object");
            return;
        }
        // The C runtime's start files bring a little .eh_frame of their own: strip it, so the
        // object has only the one it is about.
        let stripped = dir.join("frames-debug-frame-only");
        let status = Command::new("objcopy")
            .args([
                "--remove-section=.eh_frame",
                "--remove-section=.eh_frame_hdr",
            ])
            .arg(&binary)
            .arg(&stripped)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("skipped: objcopy (binutils) is missing");
            return;
        }
        let data = fs::read(&stripped).unwrap();
        let file = object::File::parse(&*data).unwrap();
        assert!(file.section_by_name(".eh_frame").is_none());
        let debug_frame = file.section_by_name(".debug_frame").expect(".debug_frame");
        assert!(
            matches!(
                debug_frame.compressed_file_range().unwrap().format,
                object::CompressionFormat::Zlib
            ),
            "-gz compresses it"
        );
        let path = stripped.to_str().unwrap();
        assert_agrees_with_readelf(path, 2, 5).expect("readelf reads it");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn lookups_find_the_row_covering_an_address() {
        let row = |pc, offset| UnwindRow {
            pc,
            cfa_rule: CfaRule::SpOffset as u8,
            cfa_offset: offset,
            ..Default::default()
        };
        let table = UnwindTable {
            rows: vec![row(0x1000, 8), row(0x1004, 16), stop_row(0x1010)],
            stats: TableStats::default(),
        };
        assert_eq!(table.row_for(0xfff), None);
        assert_eq!(table.row_for(0x1000).unwrap().cfa_offset, 8);
        assert_eq!(table.row_for(0x1003).unwrap().cfa_offset, 8);
        assert_eq!(table.row_for(0x100f).unwrap().cfa_offset, 16);
        assert_eq!(table.row_for(0x2000).unwrap().cfa_rule, CfaRule::Stop as u8);
    }

    /// This executable's load bias (runtime address - ELF virtual address), from where
    /// `innermost` is now and where its symbol says it is.
    fn own_bias() -> u64 {
        use object::ObjectSymbol;
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let file = object::File::parse(&*exe).unwrap();
        let symbol = file
            .symbols()
            .find(|s| s.name().is_ok_and(|n| n.contains("5tests9innermost")))
            .expect("innermost has a symbol");
        innermost as *const () as u64 - symbol.address()
    }

    /// The function of this executable whose code contains `vaddr`.
    fn function_at(vaddr: u64) -> Option<String> {
        use object::ObjectSymbol;
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let file = object::File::parse(&*exe).unwrap();
        file.symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
            .find(|s| (s.address()..s.address() + s.size()).contains(&vaddr))
            .and_then(|s| s.name().ok().map(str::to_string))
    }

    #[inline(never)]
    fn innermost(depth: &mut u32) -> (Vec<String>, u32) {
        let (pc, sp, fp) = crate::arch::own_registers!();
        *depth += 1;
        let table = compile_file(Path::new("/proc/self/exe")).unwrap();
        let bias = own_bias();
        // Only this thread's live stack is read: every frame walked is above `sp`.
        let read = |address: u64| {
            (address >= sp && address < sp + (8 << 20))
                // SAFETY: inside this thread's stack, below its frames' live data.
                .then(|| unsafe { std::ptr::read(address as *const u64) })
        };
        let mut regs = Registers { pc, sp, fp };
        let mut callers = Vec::new();
        for frame in 0..16 {
            // A return address points after its call: look up the call itself.
            let lookup = if frame == 0 { regs.pc } else { regs.pc - 1 };
            let Some(row) = table.row_for(lookup - bias) else {
                break;
            };
            match step(row, regs, read) {
                Ok(caller) => {
                    regs = caller;
                    match function_at(regs.pc - 1 - bias) {
                        Some(name) => callers.push(name),
                        None => break,
                    }
                }
                Err(_) => break,
            }
        }
        (callers, *depth)
    }

    #[inline(never)]
    fn middle(depth: &mut u32) -> (Vec<String>, u32) {
        let result = innermost(std::hint::black_box(depth));
        // Work after the call keeps it from being a tail call.
        (result.0, std::hint::black_box(result.1 + 1))
    }

    #[inline(never)]
    fn outer(depth: &mut u32) -> (Vec<String>, u32) {
        let result = middle(std::hint::black_box(depth));
        (result.0, std::hint::black_box(result.1 + 1))
    }

    #[inline(never)]
    fn outermost(depth: &mut u32) -> (Vec<String>, u32) {
        let result = outer(std::hint::black_box(depth));
        (result.0, std::hint::black_box(result.1 + 1))
    }

    /// The rows unwind a real stack: from inside `innermost`, the callers found through this
    /// test binary's own CFI are `middle`, `outer`, then `outermost`, in order (the test
    /// function itself may be inlined into the harness's shim, so it is not asked for).
    #[test]
    fn rows_unwind_this_threads_own_stack() {
        let mut depth = 0;
        let (callers, _) = outermost(&mut depth);
        // Mangled names (no demangler needed): each contains its function's name.
        let at = |name: &str| callers.iter().position(|n| n.contains(name));
        let (middle, outer, outermost) = (at("6middle"), at("5outer"), at("9outermost"));
        assert_eq!(middle, Some(0), "{callers:?}");
        assert_eq!(outer, Some(1), "{callers:?}");
        assert_eq!(outermost, Some(2), "{callers:?}");
    }

    #[test]
    fn a_step_refuses_what_it_cannot_follow() {
        let regs = Registers {
            pc: 0x1000,
            sp: 0x7000,
            fp: 0,
        };
        let read = |_| Some(0xdead);
        let row = |cfa_rule: CfaRule, cfa_offset| UnwindRow {
            cfa_rule: cfa_rule as u8,
            cfa_offset,
            ..Default::default()
        };
        assert_eq!(
            step(&row(CfaRule::Stop, 0), regs, read),
            Err(StepError::Stop)
        );
        assert_eq!(
            step(&row(CfaRule::FpOffset, 16), regs, read),
            Err(StepError::RegisterLost)
        );
        assert_eq!(
            step(&row(CfaRule::SpOffset, 0), regs, read),
            Err(StepError::CfaNotAboveSp)
        );
        assert_eq!(
            step(&row(CfaRule::SpOffset, 16), regs, |_| None),
            Err(StepError::Unreadable)
        );
        let caller = step(&row(CfaRule::SpOffset, 16), regs, read).unwrap();
        assert_eq!(
            caller,
            Registers {
                pc: 0xdead,
                sp: 0x7010,
                fp: 0
            }
        );
        // A PLT stub: 8 more once its push has run (pc & 15 >= 11).
        let plt = row(CfaRule::Plt, 11);
        let before = Registers { pc: 0x1006, ..regs };
        let after = Registers { pc: 0x100b, ..regs };
        assert_eq!(step(&plt, before, read).unwrap().sp, 0x7008);
        assert_eq!(step(&plt, after, read).unwrap().sp, 0x7010);
    }

    /// A process's tables: its own executable's mapping found with the bias its symbols give,
    /// and a second look compiles nothing again.
    #[test]
    fn process_tables_are_biased_right_and_compiled_once() {
        let mut cache = TableCache::default();
        let maps = crate::target::maps::read_maps(std::process::id()).unwrap();
        let tables = cache.process_tables(std::process::id(), &maps);
        let here = innermost as *const () as u64;
        let own = tables
            .iter()
            .find(|t| (t.start..t.end).contains(&here))
            .expect("this executable's code is mapped");
        assert_eq!(own.bias, own_bias());
        assert!(
            own.table
                .as_ref()
                .unwrap()
                .row_for(here - own.bias)
                .is_some()
        );
        assert!(
            tables.iter().any(|t| t.path.contains("libc.so")),
            "libc is mapped: {:?}",
            tables.iter().map(|t| &t.path).collect::<Vec<_>>()
        );
        let compiled = cache.compiled;
        assert!(compiled >= 2, "{compiled}");
        cache.process_tables(std::process::id(), &maps);
        assert_eq!(cache.compiled, compiled, "the second look compiled again");
    }
}
