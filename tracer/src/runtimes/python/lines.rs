//! CPython's line tables: the source line of an instruction, as `PyCode_Addr2Line` computes it,
//! in the three formats CPython has used ([`LineTable`]): 3.9's `co_lnotab`, 3.10's
//! `co_linetable` (PEP 626) and the location tables of 3.11+ (PEP 657).
//!
//! 3.11+ ([`line_at`]): a sequence of entries, each covering one to eight code units (two bytes
//! each). An entry starts with a byte `1CCCCLLL` (bit 7 set): code `C`, and `L + 1` code units.
//! The bytes after it have bit 7 clear and depend on the code:
//!
//! | code  | form          | line delta         | bytes after the first                          |
//! |-------|---------------|--------------------|------------------------------------------------|
//! | 0–9   | short         | 0                  | 1 (columns)                                    |
//! | 10–12 | one line      | `code - 10`        | 2 (start and end column)                       |
//! | 13    | no columns    | svarint            | the svarint                                    |
//! | 14    | long          | svarint            | the svarint, end-line delta, column, end column |
//! | 15    | no location   | 0 (line is `None`) | none                                           |
//!
//! The line of an entry is the first line plus the deltas of every entry up to it, no-location
//! entries included (theirs is 0). Like CPython's `advance()`, the decoder finds the next entry
//! at the next byte with bit 7 set rather than by parsing the columns, so a malformed column
//! field cannot throw it off.
//!
//! 3.9 and 3.10 ([`line_at_lnotab`], [`line_at_pep626`]): pairs of bytes, a code delta in bytes
//! (unsigned) and a line delta (signed); 3.10's line delta -128 means "no line".
//!
//! The tables read here come from another process's memory: every function takes any bytes,
//! never panics and stops at the end of the slice. A table truncated inside a line delta gives
//! `None` from that entry on (the line is unknown), not a guess.

/// The line-table format of a CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// 3.9 and before: `co_lnotab`.
    Lnotab,
    /// 3.10: `co_linetable`, PEP 626's pairs.
    Pep626,
    /// 3.11+: `co_linetable`, PEP 657's location table.
    Locations,
}

impl LineTable {
    /// The format of CPython `(major, minor)`.
    pub fn of_version((major, minor): (u8, u8)) -> Self {
        match (major, minor) {
            (3, ..=9) => Self::Lnotab,
            (3, 10) => Self::Pep626,
            _ => Self::Locations,
        }
    }

    /// The line of the instruction at byte offset `offset` (negative: before the first
    /// instruction) of a code object whose first line is `first_line` and whose table, in this
    /// format, is `table`.
    pub fn line_at(self, table: &[u8], first_line: i32, offset: i32) -> Option<u32> {
        match self {
            Self::Lnotab => line_at_lnotab(table, first_line, offset),
            Self::Pep626 => line_at_pep626(table, first_line, offset),
            Self::Locations => line_at(table, first_line, offset),
        }
    }
}

/// [`LineTable::line_at`] for CPython `version` (`(major, minor)`).
pub fn line_at_for(version: (u8, u8), table: &[u8], first_line: i32, offset: i32) -> Option<u32> {
    LineTable::of_version(version).line_at(table, first_line, offset)
}

/// 3.9's `co_lnotab`: `(code delta, line delta)` byte pairs; an instruction's line is the first
/// line plus the line deltas of every pair whose code address (the running sum of code deltas)
/// is at or before it (3.9's `PyCode_Addr2Line`). A negative offset gives the first line.
pub fn line_at_lnotab(table: &[u8], first_line: i32, offset: i32) -> Option<u32> {
    let offset = i64::from(offset);
    let mut line = i64::from(first_line);
    let mut address: i64 = 0;
    for pair in table.chunks_exact(2) {
        address += i64::from(pair[0]);
        if address > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    u32::try_from(line).ok()
}

/// 3.10's `co_linetable` (PEP 626): `(code delta, line delta)` byte pairs, each a range of
/// `code delta` bytes after the previous one; its line is the first line plus the line deltas
/// so far, or none when its delta is -128 (which then adds nothing). Empty ranges only carry
/// their delta. A negative offset gives the first line; past the last range, `None` (3.10's
/// `PyCode_Addr2Line` via `_PyCode_CheckLineNumber`).
pub fn line_at_pep626(table: &[u8], first_line: i32, offset: i32) -> Option<u32> {
    if offset < 0 {
        return u32::try_from(first_line).ok();
    }
    let offset = i64::from(offset);
    let mut line = i64::from(first_line);
    let mut end: i64 = 0;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += i64::from(pair[0]);
        let delta = pair[1] as i8;
        let this = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        if start <= offset && offset < end {
            return this.and_then(|l| u32::try_from(l).ok());
        }
    }
    None
}

/// Reads a location-table varint at the start of `bytes`: 6-bit chunks, least significant
/// first, bit 6 (`0x40`) set when another chunk follows. Returns the value and the number of
/// bytes read, or `None` when `bytes` ends before the last chunk. As in CPython (an `unsigned
/// int`), bits beyond the 32nd are dropped.
pub fn read_varint(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    let mut shift: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        value |= u32::from(byte & 0x3f).checked_shl(shift).unwrap_or(0);
        if byte & 0x40 == 0 {
            return Some((value, i + 1));
        }
        shift = shift.saturating_add(6);
    }
    None
}

/// Reads a location-table signed varint at the start of `bytes`: a [`read_varint`] value `v`
/// standing for `-(v >> 1)` when its low bit is set, `v >> 1` otherwise. Returns the value and
/// the number of bytes read, or `None` when `bytes` ends before the last chunk.
pub fn read_svarint(bytes: &[u8]) -> Option<(i32, usize)> {
    let (raw, len) = read_varint(bytes)?;
    // `raw >> 1` is below 2^31, so it fits an i32 either way.
    let magnitude = (raw >> 1) as i32;
    Some((if raw & 1 == 1 { -magnitude } else { magnitude }, len))
}

/// The line delta of the entry whose first byte is `table[0]`: `None` when the table ends
/// inside it.
fn line_delta(entry: &[u8]) -> Option<i64> {
    let code = (entry[0] >> 3) & 0x0f;
    Some(match code {
        13 | 14 => i64::from(read_svarint(&entry[1..])?.0),
        10..=12 => i64::from(code - 10),
        _ => 0,
    })
}

/// The source line of the instruction at byte offset `offset` (LASTI*2; negative = before the
/// first instruction) of a code object whose first line is `first_line` and whose
/// `co_linetable` bytes are `table`: what `PyCode_Addr2Line` gives (`None` for "no location"
/// and past the end).
///
/// A negative offset (a frame just pushed, in 3.11 and 3.12) gives `first_line`. Besides
/// CPython's `-1` cases, `None` also stands for what garbage input makes unknowable: a table
/// cut inside the line delta of an entry up to the one holding `offset`, or a line below 0.
/// Linear in the table's length: cache the result per (code object, offset).
pub fn line_at(table: &[u8], first_line: i32, offset: i32) -> Option<u32> {
    if offset < 0 {
        return u32::try_from(first_line).ok();
    }
    let offset = i64::from(offset);
    // i64: at most 2^31 per delta and 16 bytes of code per table byte cannot overflow it.
    let mut line = i64::from(first_line);
    let mut start: i64 = 0;
    let mut i = 0;
    while i < table.len() {
        let entry = &table[i..];
        let head = entry[0];
        let end = start + (i64::from(head & 7) + 1) * 2;
        line += line_delta(entry)?;
        if offset < end {
            // CPython's is_no_line_marker(): code 15 with the entry bit set.
            if head >> 3 == 0x1f {
                return None;
            }
            return u32::try_from(line).ok();
        }
        start = end;
        // The next entry starts at the next byte with bit 7 set.
        i += 1;
        while i < table.len() && table[i] & 0x80 == 0 {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry's first byte: code `code`, covering `units` code units (1..=8).
    fn head(code: u8, units: u8) -> u8 {
        assert!(code < 16 && (1..=8).contains(&units));
        0x80 | code << 3 | (units - 1)
    }

    /// Encodes a varint the way CPython's `write_varint` does.
    fn varint(mut v: u32) -> Vec<u8> {
        let mut out = Vec::new();
        while v >= 64 {
            out.push(0x40 | (v & 0x3f) as u8);
            v >>= 6;
        }
        out.push(v as u8);
        out
    }

    /// Encodes a signed varint the way CPython's `write_signed_varint` does.
    fn svarint(v: i32) -> Vec<u8> {
        if v < 0 {
            varint((v.unsigned_abs() << 1) | 1)
        } else {
            varint((v as u32) << 1)
        }
    }

    /// The lines of every even offset from 0 to `bytes` (exclusive).
    fn lines(table: &[u8], first_line: i32, bytes: i32) -> Vec<Option<u32>> {
        (0..bytes)
            .step_by(2)
            .map(|o| line_at(table, first_line, o))
            .collect()
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 5, 63, 64, 100, 4095, 4096, 1 << 20, 1 << 31, u32::MAX] {
            let bytes = varint(v);
            assert_eq!(read_varint(&bytes), Some((v, bytes.len())), "{v}");
        }
        let signed = [0, 1, -1, 31, -32, 100, -100, 1 << 20, -(1 << 20)];
        for v in signed.into_iter().chain([i32::MAX, -i32::MAX]) {
            let bytes = svarint(v);
            assert_eq!(read_svarint(&bytes), Some((v, bytes.len())), "{v}");
        }
        // 100 = 36 + 1 * 64: chunk 36 with "more", then 1. Trailing bytes are not read.
        assert_eq!(read_varint(&[0x64, 0x01, 0x7f]), Some((100, 2)));
        // svarint 7 = -3, 10 = +5.
        assert_eq!(read_svarint(&[0x07]), Some((-3, 1)));
        assert_eq!(read_svarint(&[0x0a]), Some((5, 1)));
    }

    #[test]
    fn varints_cut_short_or_too_long() {
        assert_eq!(read_varint(&[]), None);
        assert_eq!(read_varint(&[0x40]), None);
        assert_eq!(read_varint(&[0x7f, 0x7f]), None);
        assert_eq!(read_svarint(&[0x41]), None);
        // Forty continuation chunks: bits past the 32nd are dropped, no overflow.
        let mut long = vec![0x7f; 40];
        long.push(0x00);
        assert_eq!(read_varint(&long), Some((u32::MAX, 41)));
        // The largest magnitude an svarint holds, negative: no overflow.
        assert_eq!(read_svarint(&varint(u32::MAX)), Some((-i32::MAX, 6)));
    }

    #[test]
    fn short_forms_keep_the_line() {
        for code in 0..=9 {
            // Two entries of 3 and 1 units, each with its column byte.
            let table = [head(code, 3), 0x05, head(code, 1), 0x22];
            assert_eq!(lines(&table, 7, 8), vec![Some(7); 4], "code {code}");
            assert_eq!(line_at(&table, 7, 8), None, "code {code}");
        }
    }

    #[test]
    fn one_line_forms_add_their_delta() {
        for (code, delta) in [(10, 0), (11, 1), (12, 2)] {
            let table = [head(code, 2), 4, 9, head(code, 1), 1, 2];
            assert_eq!(
                lines(&table, 10, 6),
                vec![Some(10 + delta), Some(10 + delta), Some(10 + 2 * delta)],
                "code {code}"
            );
        }
    }

    #[test]
    fn no_column_form_adds_its_svarint() {
        let mut table = vec![head(13, 1)];
        table.extend(svarint(5));
        table.push(head(13, 2));
        table.extend(svarint(-3));
        table.push(head(13, 1));
        table.extend(svarint(100)); // two chunks
        assert_eq!(
            lines(&table, 20, 8),
            vec![Some(25), Some(22), Some(22), Some(122)]
        );
    }

    #[test]
    fn long_form_adds_its_svarint_and_skips_the_columns() {
        let mut table = vec![head(14, 2)];
        table.extend(svarint(-4));
        table.extend(varint(3)); // end line delta
        table.extend(varint(200)); // column: two chunks
        table.extend(varint(1000)); // end column: two chunks
        table.extend([head(10, 1), 0, 1]);
        assert_eq!(lines(&table, 50, 6), vec![Some(46), Some(46), Some(46)]);
    }

    #[test]
    fn no_location_gives_none_but_keeps_counting() {
        // Line 3, then no location (the running line stays 3), then +1: line 4.
        let table = [head(11, 1), 0, 1, head(15, 2), head(11, 1), 0, 1];
        assert_eq!(lines(&table, 2, 8), vec![Some(3), None, None, Some(4)]);
    }

    #[test]
    fn negative_offsets_give_the_first_line() {
        let table = [head(12, 1), 0, 1];
        assert_eq!(line_at(&table, 42, -2), Some(42));
        assert_eq!(line_at(&table, 42, -1), Some(42));
        assert_eq!(line_at(&table, 42, i32::MIN), Some(42));
        assert_eq!(line_at(&[], 42, -2), Some(42));
        assert_eq!(line_at(&[], -1, -2), None);
    }

    #[test]
    fn past_the_end_is_none() {
        let table = [head(0, 4), 0, head(11, 8), 0, 0];
        assert_eq!(line_at(&table, 1, 7), Some(1)); // odd offsets: the unit they fall in
        assert_eq!(line_at(&table, 1, 8), Some(2));
        assert_eq!(line_at(&table, 1, 23), Some(2));
        assert_eq!(line_at(&table, 1, 24), None);
        assert_eq!(line_at(&table, 1, i32::MAX), None);
        assert_eq!(line_at(&[], 1, 0), None);
    }

    /// CPython 3.12.1's table for
    /// `def f(x):\n    y = x + 1\n\n    return (y,\n            x)\n`, and what co_lines()
    /// gives: [(0, 2, 1), (2, 12, 2), (12, 14, 4), (14, 16, 5), (16, 20, 4)].
    #[test]
    fn a_real_table() {
        let table = [
            0x80, 0x00, 0xd8, 0x08, 0x09, 0x88, 0x41, 0x89, 0x05, 0x80, 0x41, 0xe0, 0x0c, 0x0d,
            0xd8, 0x0c, 0x0d, 0xf0, 0x03, 0x01, 0x0c, 0x0f, 0xf0, 0x00, 0x01, 0x05, 0x0f,
        ];
        let expected = [1, 2, 2, 2, 2, 2, 4, 5, 4, 4].map(Some);
        assert_eq!(lines(&table, 1, 20), expected);
        assert_eq!(line_at(&table, 1, 20), None);
        assert_eq!(line_at(&table, 1, -2), Some(1));
    }

    #[test]
    fn truncated_tables_do_not_panic() {
        let mut full = vec![head(12, 1), 0, 1];
        full.push(head(14, 1));
        full.extend(svarint(300));
        full.extend([1, 2, 3]);
        full.push(head(13, 1));
        full.extend(svarint(-1));
        full.extend([head(5, 1), 7]);
        for cut in 0..=full.len() {
            let table = &full[..cut];
            for offset in -2..12 {
                let _ = line_at(table, 1, offset);
            }
        }
        // Cut inside the long form's svarint: that entry and the ones after it are unknown,
        // the ones before it are not.
        let cut = &full[..5];
        assert_eq!(line_at(cut, 1, 0), Some(3));
        assert_eq!(line_at(cut, 1, 2), None);
        assert_eq!(line_at(cut, 1, 4), None);
        // Cut inside the long form's columns: its line is known.
        assert_eq!(line_at(&full[..7], 1, 2), Some(303));
        // Cut right after a one-line form's head: columns missing, delta known.
        assert_eq!(line_at(&full[..1], 1, 0), Some(3));
        // Cut after a no-column form's head: no svarint at all.
        assert_eq!(line_at(&full[..10], 1, 4), None);
    }

    #[test]
    fn garbage_never_panics() {
        // xorshift: deterministic bytes.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in 0..300 {
            let table: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for offset in [-2, 0, 1, 2, 100, 1000, i32::MAX] {
                for first in [0, 1, i32::MAX, i32::MIN] {
                    let _ = line_at(&table, first, offset);
                }
            }
        }
        // No entry byte after the first: one entry of 8 units, with a line (CPython takes the
        // first byte for an entry's, and only code 15 *with* bit 7 for "no location").
        assert_eq!(line_at(&[0x7f; 64], 1, 0), Some(1));
        assert_eq!(line_at(&[0x7f; 64], 1, 14), Some(1));
        assert_eq!(line_at(&[0x7f; 64], 1, 16), None);
        // Long-form entries with huge deltas: the line leaves u32's range, no overflow.
        let mut huge = Vec::new();
        for _ in 0..1000 {
            huge.push(head(14, 8));
            huge.extend(svarint(i32::MAX));
        }
        assert_eq!(line_at(&huge, i32::MAX, 16 * 999), None);
        let mut deep = Vec::new();
        for _ in 0..10 {
            deep.push(head(13, 1));
            deep.extend(svarint(-i32::MAX));
        }
        assert_eq!(line_at(&deep, 0, 18), None);
        // All 0xff: code 15 entries of 8 units each.
        assert_eq!(line_at(&[0xff; 16], 5, 200), None);
        assert_eq!(line_at(&[0xff; 16], 5, 300), None);
    }

    #[test]
    fn lnotab_adds_the_deltas_of_the_pairs_at_or_before_the_offset() {
        // 3.9: `def f():\n    a = 1\n\n    b = 2\n` has firstlineno 1 and lnotab
        // 00 01 04 02: offsets 0-3 on line 2, 4+ on line 4.
        let table = [0, 1, 4, 2];
        let got: Vec<_> = (0..10)
            .step_by(2)
            .map(|o| line_at_lnotab(&table, 1, o))
            .collect();
        assert_eq!(got, [2, 2, 4, 4, 4].map(Some));
        assert_eq!(line_at_lnotab(&table, 1, -2), Some(1));
        // Signed line deltas (3.8+), and a code delta of 0 that only moves the line.
        let table = [6, 0x80, 0, 0x7f, 2, 0xfe];
        assert_eq!(line_at_lnotab(&table, 200, 0), Some(200));
        assert_eq!(line_at_lnotab(&table, 200, 6), Some(199));
        assert_eq!(line_at_lnotab(&table, 200, 8), Some(197));
        // Odd lengths and garbage do not panic; a line below 0 is unknown.
        assert_eq!(line_at_lnotab(&[0, 0xff, 3], 0, 4), None);
        assert_eq!(line_at_lnotab(&[], 7, 100), Some(7));
    }

    #[test]
    fn pep626_ranges_carry_their_line_or_none() {
        // 3.10: firstlineno 1; [0, 2) line 2, an empty range +1, [2, 6) line 4, [6, 8) no
        // line, [8, 10) line 5.
        let table = [2, 1, 0, 1, 4, 1, 2, 0x80, 2, 1];
        let got: Vec<_> = (0..12)
            .step_by(2)
            .map(|o| line_at_pep626(&table, 1, o))
            .collect();
        assert_eq!(got, vec![Some(2), Some(4), Some(4), None, Some(5), None]);
        assert_eq!(line_at_pep626(&table, 1, -2), Some(1));
        assert_eq!(line_at_pep626(&[], 1, 0), None);
        assert_eq!(line_at_pep626(&[254, 0x81], 0, 0), None);
    }

    #[test]
    fn versions_pick_their_format() {
        assert_eq!(LineTable::of_version((3, 9)), LineTable::Lnotab);
        assert_eq!(LineTable::of_version((3, 10)), LineTable::Pep626);
        for minor in 11..=16 {
            assert_eq!(LineTable::of_version((3, minor)), LineTable::Locations);
        }
        assert_eq!(line_at_for((3, 10), &[2, 1], 1, 0), Some(2));
    }
}
