//! Reading function symbols out of ELF files and turning their addresses into the file offsets
//! uprobes are placed at.

use std::{collections::HashMap, io, path::Path};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::target::object_file;

/// `data` (read from `path`) as an ELF object; a parse error names the file.
fn parse<'d>(path: &Path, data: &'d [u8]) -> io::Result<object::File<'d>> {
    object::File::parse(data).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// File offsets of the `wanted` function symbols that `path` defines. Names absent from the file
/// are absent from the result.
pub fn function_offsets(path: &Path, wanted: &[&str]) -> io::Result<HashMap<String, u64>> {
    let data = object_file::read(path)?;
    let file = parse(path, &data)?;
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range().0))
        .collect();
    let mut found = HashMap::new();
    // The dynamic table first: it holds exported names; .symtab adds static executables.
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() || symbol.kind() != SymbolKind::Text {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        // Versioned names (`malloc@@GLIBC_2.2.5`) appear in some .symtab entries.
        let name = name.split('@').next().unwrap_or(name);
        if found.contains_key(name) || !wanted.contains(&name) {
            continue;
        }
        let address = symbol.address();
        if let Some((seg_addr, _, seg_offset)) = segments
            .iter()
            .find(|(start, size, _)| address >= *start && address < start + size)
        {
            found.insert(name.to_string(), address - seg_addr + seg_offset);
        }
    }
    Ok(found)
}

/// True when `path` imports `symbol` (an undefined dynamic symbol): its calls to it go through
/// the dynamic linker to whichever object defines it first.
pub fn imports(path: &Path, symbol: &str) -> io::Result<bool> {
    let data = object_file::read(path)?;
    let file = parse(path, &data)?;
    Ok(file
        .dynamic_symbols()
        .any(|s| s.is_undefined() && s.name().is_ok_and(|n| n.split('@').next() == Some(symbol))))
}

/// The file offset of an executable's entry point (`e_entry`), where a uprobe on it goes.
pub fn entry_offset(path: &Path) -> io::Result<u64> {
    let data = object_file::read(path)?;
    let file = parse(path, &data)?;
    let entry = file.entry();
    file.segments()
        .find(|s| entry >= s.address() && entry < s.address() + s.size())
        .map(|s| entry - s.address() + s.file_range().0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: no segment holds the entry point {entry:#x}",
                    path.display()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_malloc_in_this_process_libc() {
        let maps = crate::target::maps::read_maps(std::process::id()).unwrap();
        let libc = maps
            .iter()
            .filter_map(|m| m.clean_path())
            .find(|p| p.contains("libc.so") || p.contains("libc-"))
            .expect("test binary maps a libc");
        let offsets = function_offsets(Path::new(libc), &["malloc", "free", "no_such_fn"]).unwrap();
        assert!(offsets["malloc"] > 0);
        assert!(offsets["free"] > 0);
        assert!(!offsets.contains_key("no_such_fn"));
    }
}
