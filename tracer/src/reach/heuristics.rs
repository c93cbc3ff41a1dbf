//! Interior pointers that are really start pointers: memcheck's leak-check heuristics, and
//! one for Redis's dynamic strings.
//!
//! A program may keep only a pointer past a block's header: a length-prefixed buffer, a C++
//! array with a cookie, libstdc++'s old reference-counted `std::string`, an sds string (Redis,
//! Valkey, KeyDB, and every C program using the sds library point at the characters, 1 to 17
//! bytes in). memcheck counts such blocks "still reachable via heuristic" when the block's own
//! header confirms the shape; so do we, reading the header of each block only when an interior
//! pointer from reachable memory lands at one of these offsets.

use std::{collections::HashMap, fmt, str::FromStr};

/// One heuristic, named as memcheck's `--leak-check-heuristics` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Heuristic {
    /// A pointer 8 bytes in, where the first 8 bytes hold the length of the rest.
    Length64,
    /// A pointer 8 bytes in, where the first 8 bytes hold an element count that divides the
    /// rest (`new T[n]` of a type with a destructor).
    NewArray,
    /// A pointer 24 bytes in, past libstdc++'s pre-C++11 string header (length, capacity,
    /// reference count), the block exactly header + capacity + 1.
    StdString,
    /// A pointer 1, 3, 5, 9 or 17 bytes in, past an sds header whose type byte (the byte
    /// before the pointer) says that header length, with `len <= alloc` fitting the block.
    Sds,
}

impl Heuristic {
    pub const ALL: [Heuristic; 4] = [
        Heuristic::Length64,
        Heuristic::NewArray,
        Heuristic::StdString,
        Heuristic::Sds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Heuristic::Length64 => "length64",
            Heuristic::NewArray => "newarray",
            Heuristic::StdString => "stdstring",
            Heuristic::Sds => "sds",
        }
    }

    /// Whether a block of `size` bytes starting with `head` (its first bytes, up to 32) is
    /// pointed to at `offset` by this heuristic's shape.
    pub fn accepts(self, head: &[u8], size: u64, offset: u64) -> bool {
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?))
        };
        match self {
            Heuristic::Length64 => offset == 8 && size >= 8 && word(0) == Some(size - 8),
            Heuristic::NewArray => {
                offset == 8
                    && size > 8
                    && word(0).is_some_and(|n| n > 0 && (size - 8).is_multiple_of(n))
            }
            Heuristic::StdString => {
                offset == 24
                    && match (word(0), word(8)) {
                        (Some(len), Some(capacity)) => {
                            len <= capacity && capacity.checked_add(25) == Some(size)
                        }
                        _ => false,
                    }
            }
            Heuristic::Sds => sds(head, size, offset),
        }
    }
}

/// An sds string: `offset` is its header's length, and the header says so.
fn sds(head: &[u8], size: u64, offset: u64) -> bool {
    // Header lengths by type: sdshdr5 (1), sdshdr8 (3), sdshdr16 (5), sdshdr32 (9), sdshdr64 (17).
    let (kind, width) = match offset {
        1 => (0u8, 0usize),
        3 => (1, 1),
        5 => (2, 2),
        9 => (3, 4),
        17 => (4, 8),
        _ => return false,
    };
    let Some(&flags) = head.get(offset as usize - 1) else {
        return false;
    };
    if flags & 7 != kind {
        return false;
    }
    if width == 0 {
        // sdshdr5: the length in the flags' upper bits, then the characters and a NUL.
        return u64::from(flags >> 3) + 2 <= size;
    }
    let field = |at: usize| -> Option<u64> {
        let bytes = head.get(at..at + width)?;
        let mut value = [0u8; 8];
        value[..width].copy_from_slice(bytes);
        Some(u64::from_le_bytes(value))
    };
    match (field(0), field(width)) {
        (Some(len), Some(alloc)) => {
            len <= alloc
                && alloc
                    .checked_add(offset + 1)
                    .is_some_and(|need| need <= size)
        }
        _ => false,
    }
}

impl fmt::Display for Heuristic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--reachability-heuristics`: `all`, `none`, or names separated by commas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeuristicSet(pub Vec<Heuristic>);

impl Default for HeuristicSet {
    fn default() -> Self {
        Self(Heuristic::ALL.to_vec())
    }
}

impl FromStr for HeuristicSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => return Ok(Self::default()),
            "none" => return Ok(Self(Vec::new())),
            _ => {}
        }
        let mut set = Vec::new();
        for name in text.split(',').map(str::trim) {
            let heuristic = Heuristic::ALL
                .into_iter()
                .find(|h| h.name() == name)
                .ok_or_else(|| {
                    format!(
                        "`{name}` is not a heuristic: use all, none, or some of length64, newarray, stdstring, sds"
                    )
                })?;
            if !set.contains(&heuristic) {
                set.push(heuristic);
            }
        }
        Ok(Self(set))
    }
}

/// The heuristics asked of one process's blocks, with each block's header read (once) from
/// the process when first needed.
pub struct Checker<'a> {
    pid: u32,
    heuristics: &'a [Heuristic],
    heads: HashMap<u64, Vec<u8>>,
    /// Blocks a heuristic accepted, by heuristic.
    pub accepted: HashMap<Heuristic, std::collections::HashSet<u64>>,
}

/// Bytes of a block's header the heuristics look at.
const HEAD: u64 = 32;

impl<'a> Checker<'a> {
    pub fn new(pid: u32, heuristics: &'a [Heuristic]) -> Self {
        Self {
            pid,
            heuristics,
            heads: HashMap::new(),
            accepted: HashMap::new(),
        }
    }

    /// Whether a pointer `offset` bytes into the block at `start` of `size` bytes is accepted.
    pub fn accepts(&mut self, start: u64, size: u64, offset: u64) -> bool {
        if self.heuristics.is_empty() || !matches!(offset, 1 | 3 | 5 | 8 | 9 | 17 | 24) {
            return false;
        }
        let pid = self.pid;
        let head = self
            .heads
            .entry(start)
            .or_insert_with(|| read_head(pid, start, size.min(HEAD)));
        let Some(heuristic) = self
            .heuristics
            .iter()
            .copied()
            .find(|h| h.accepts(head, size, offset))
        else {
            return false;
        };
        self.accepted.entry(heuristic).or_default().insert(start);
        true
    }
}

/// The first `len` bytes of the block at `start` (empty when they cannot be read).
fn read_head(pid: u32, start: u64, len: u64) -> Vec<u8> {
    let mut head = vec![0u8; len as usize];
    if super::scan::read_pieces(pid, std::slice::from_ref(&(start..start + len)), &mut head)
        != head.len()
    {
        head.clear();
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sds_headers_are_told_by_their_type_byte() {
        // sdshdr8: len 5, alloc 10, flags 1, then "hello\0": a block of at least 3 + 10 + 1.
        let head = [5u8, 10, 1, b'h', b'e', b'l', b'l', b'o', 0];
        assert!(Heuristic::Sds.accepts(&head, 14, 3));
        assert!(
            !Heuristic::Sds.accepts(&head, 13, 3),
            "alloc must fit the block"
        );
        assert!(
            !Heuristic::Sds.accepts(&head, 14, 5),
            "wrong header length for the type"
        );
        // sdshdr5: the length in the flags' upper bits.
        let head = [(4 << 3), b'a', b'b', b'c', b'd', 0];
        assert!(Heuristic::Sds.accepts(&head, 6, 1));
        assert!(!Heuristic::Sds.accepts(&head, 5, 1));
        // sdshdr32: len 100, alloc 200 (4-byte fields), flags 3.
        let mut head = vec![0u8; 9];
        head[..4].copy_from_slice(&100u32.to_le_bytes());
        head[4..8].copy_from_slice(&200u32.to_le_bytes());
        head[8] = 3;
        assert!(Heuristic::Sds.accepts(&head, 210, 9));
        head[..4].copy_from_slice(&201u32.to_le_bytes());
        assert!(!Heuristic::Sds.accepts(&head, 210, 9), "len > alloc");
    }

    #[test]
    fn memchecks_heuristics_check_the_header() {
        let mut head = vec![0u8; 32];
        head[..8].copy_from_slice(&92u64.to_le_bytes());
        assert!(Heuristic::Length64.accepts(&head, 100, 8));
        assert!(!Heuristic::Length64.accepts(&head, 101, 8));
        assert!(!Heuristic::Length64.accepts(&head, 100, 16));
        head[..8].copy_from_slice(&4u64.to_le_bytes());
        assert!(Heuristic::NewArray.accepts(&head, 8 + 4 * 24, 8));
        assert!(!Heuristic::NewArray.accepts(&head, 8 + 4 * 24 + 1, 8));
        head[..8].copy_from_slice(&5u64.to_le_bytes());
        head[8..16].copy_from_slice(&15u64.to_le_bytes());
        assert!(Heuristic::StdString.accepts(&head, 24 + 15 + 1, 24));
        assert!(!Heuristic::StdString.accepts(&head, 24 + 16 + 1, 24));
    }

    #[test]
    fn sets_parse_from_the_command_line() {
        assert_eq!(
            "all".parse::<HeuristicSet>().unwrap(),
            HeuristicSet::default()
        );
        assert!("none".parse::<HeuristicSet>().unwrap().0.is_empty());
        assert_eq!(
            "sds,length64,sds".parse::<HeuristicSet>().unwrap().0,
            vec![Heuristic::Sds, Heuristic::Length64]
        );
        assert!(
            "sds,bogus"
                .parse::<HeuristicSet>()
                .unwrap_err()
                .contains("bogus")
        );
    }
}
