//! Where CPython's eval loop is, as the native walk must stop there: `_PyEval_EvalFrameDefault`
//! (exported, so named on stripped builds too) and the part of it GCC splits off
//! (`_PyEval_EvalFrameDefault.cold`), which only `.symtab` names. On Debian's stripped LTO
//! builds that part holds most of the loop (3.13's: 77 KB of it beside a 2 KB entry part; a
//! frame of the loop is there more often than not), so it is found without a name: the range
//! of call-frame information (`.eh_frame`) that the eval loop's own jumps lead to, that no
//! symbol names, and that continues a frame set up elsewhere (its first row's CFA is not a
//! function entry's).

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, LittleEndian, UnwindContext, UnwindSection,
};
use object::{Object, ObjectSection};

use crate::arch::{cfi, decode};

/// The split-off part of the function at `hot` (`[start, end)` in the object's addresses) in
/// `file`, found from its jumps and the object's `.eh_frame`; `named(address)` tells whether a
/// symbol covers an address (a function of its own, never the part).
pub fn split_part(
    file: &object::File,
    hot: [u64; 2],
    named: &dyn Fn(u64) -> bool,
) -> Option<[u64; 2]> {
    let [start, end] = hot;
    let code = code_at(file, start, end)?;
    let targets: Vec<u64> = decode(code)
        .filter_map(|i| i.jump_target)
        .map(|target| start.wrapping_add(target))
        .filter(|target| !(start..end).contains(target))
        .collect();
    if targets.is_empty() {
        return None;
    }
    // GCC splits a function in two: the part most of its jumps go to.
    fdes(file)?
        .into_iter()
        .filter(|fde| fde.continues_a_frame && !named(fde.range[0]))
        .map(|fde| {
            let [start, end] = fde.range;
            let jumps = targets.iter().filter(|t| (start..end).contains(*t)).count();
            (fde.range, jumps)
        })
        .filter(|(_, jumps)| *jumps > 0)
        .max_by_key(|(_, jumps)| *jumps)
        .map(|(range, _)| range)
}

/// The bytes of `[start, end)` in the section that holds them.
fn code_at<'a>(file: &'a object::File, start: u64, end: u64) -> Option<&'a [u8]> {
    file.sections()
        .find(|s| s.address() <= start && end <= s.address() + s.size())
        .and_then(|s| s.data_range(start, end - start).ok().flatten())
}

/// One range of call-frame information.
struct Fde {
    /// `[start, end)`.
    range: [u64; 2],
    /// Its first row's CFA is not a function entry's (the stack pointer plus the return
    /// address): it continues a frame set up elsewhere.
    continues_a_frame: bool,
}

/// Every FDE of `file`'s `.eh_frame`.
fn fdes(file: &object::File) -> Option<Vec<Fde>> {
    let section = file.section_by_name(".eh_frame")?;
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(hdr) = file.section_by_name(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(hdr.address());
    }
    let eh_frame = EhFrame::new(section.data().ok()?, LittleEndian);
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = eh_frame.entries(&bases);
    let mut fdes = Vec::new();
    while let Some(entry) = entries.next().ok()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        let start = fde.initial_address();
        let continues_a_frame = fde
            .unwind_info_for_address(&eh_frame, &bases, &mut ctx, start)
            .is_ok_and(|row| {
                !matches!(row.cfa(), CfaRule::RegisterAndOffset { register, offset }
                    if *register == cfi::STACK_POINTER && *offset == cfi::ENTRY_CFA_OFFSET)
            });
        fdes.push(Fde {
            range: [start, start + fde.len()],
            continues_a_frame,
        });
    }
    Some(fdes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use object::ObjectSymbol;

    use super::*;

    /// The eval loop's ranges in an object.
    struct Ranges {
        hot: [u64; 2],
        /// As `.symtab` names it.
        named: Option<[u64; 2]>,
        /// As found without names.
        found: [u64; 2],
    }

    fn ranges(path: &str) -> Option<Ranges> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).unwrap();
        let mut symbols: HashMap<String, [u64; 2]> = HashMap::new();
        let mut functions = Vec::new();
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            let name = symbol.name().unwrap_or_default().to_string();
            let range = [symbol.address(), symbol.address() + symbol.size()];
            if symbol.kind() == object::SymbolKind::Text && !name.ends_with(".cold") {
                functions.push(range);
            }
            symbols.insert(name, range);
        }
        let hot = symbols["_PyEval_EvalFrameDefault"];
        let named = |a: u64| {
            functions
                .iter()
                .any(|[s, e]| *s <= a && a < (*e).max(*s + 1))
        };
        let found = split_part(&file, hot, &named)?;
        Some(Ranges {
            hot,
            named: symbols.get("_PyEval_EvalFrameDefault.cold").copied(),
            found,
        })
    }

    #[test]
    fn the_split_part_found_from_jumps_and_cfi_is_the_one_symbols_name() {
        // pyenv's 3.11 and 3.12 name theirs in .symtab: the same range must be found without.
        let pyenv = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
        let mut checked = 0;
        for version in [
            "3.11.7/lib/libpython3.11.so.1.0",
            "3.12.1/lib/libpython3.12.so.1.0",
        ] {
            let path = format!("{pyenv}/versions/{version}");
            let Some(ranges) = ranges(&path) else {
                eprintln!("SKIP for {path}: not installed (or not readable)");
                continue;
            };
            assert_eq!(Some(ranges.found), ranges.named, "{path}");
            checked += 1;
        }
        // Debian's stripped python3.11: a part outside every exported symbol, entered with the
        // eval loop's frame already set up.
        match ranges("/usr/bin/python3.11") {
            Some(Ranges {
                hot,
                named: None,
                found,
            }) => {
                assert!(found[1] <= hot[0] || found[0] >= hot[1]);
                assert!(found[1] - found[0] > 4096, "{found:x?}");
                checked += 1;
            }
            _ => eprintln!("SKIP for /usr/bin/python3.11: not installed (or not readable)"),
        }
        eprintln!("{checked} interpreters checked");
    }
}
