//! CPython 3.11-3.13's location table (`co_linetable`, PEP 626/657): the source line of an
//! instruction, as `PyCode_Addr2Line` gives it. Fed bytes read from another process, so it
//! never panics and always ends.

/// Reads a varint (6-bit chunks, least significant first, 0x40 = more) at `*at`.
fn varint(table: &[u8], at: &mut usize) -> Option<u32> {
    let mut value: u32 = 0;
    let mut shift = 0;
    loop {
        let byte = *table.get(*at)?;
        *at += 1;
        value |= u32::from(byte & 0x3f).checked_shl(shift)?;
        if byte & 0x40 == 0 {
            return Some(value);
        }
        shift += 6;
        if shift > 30 {
            return None;
        }
    }
}

/// A signed varint: the low bit is the sign.
fn svarint(table: &[u8], at: &mut usize) -> Option<i64> {
    let value = varint(table, at)?;
    let magnitude = i64::from(value >> 1);
    Some(if value & 1 != 0 {
        -magnitude
    } else {
        magnitude
    })
}

/// The source line of the instruction at byte offset `offset` (LASTI * 2; negative: before
/// the first instruction) of a code object whose first line is `first_line` and whose
/// `co_linetable` is `table`: what `PyCode_Addr2Line` gives (`None` for "no location" and
/// past the table's end).
pub fn line_at(table: &[u8], first_line: i32, offset: i32) -> Option<u32> {
    if offset < 0 {
        return u32::try_from(first_line).ok();
    }
    let offset = i64::from(offset);
    let mut line = i64::from(first_line);
    let mut start: i64 = 0;
    let mut at = 0;
    while at < table.len() {
        let first = table[at];
        at += 1;
        if first & 0x80 == 0 {
            // Not the first byte of an entry: the table is damaged.
            return None;
        }
        let code = (first >> 3) & 15;
        let end = start + (i64::from(first & 7) + 1) * 2;
        let mut no_location = false;
        let delta = match code {
            15 => {
                no_location = true;
                0
            }
            14 => {
                let delta = svarint(table, &mut at)?;
                for _ in 0..3 {
                    varint(table, &mut at)?;
                }
                delta
            }
            13 => svarint(table, &mut at)?,
            10..=12 => {
                at += 2;
                i64::from(code) - 10
            }
            _ => {
                at += 1;
                0
            }
        };
        line += delta;
        if (start..end).contains(&offset) {
            return if no_location {
                None
            } else {
                u32::try_from(line).ok()
            };
        }
        start = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_kind() {
        // Short form (code 0, 2 units), one-line +1 (code 11, 1 unit), no column -3 (code 13,
        // svarint 7 = -3, 1 unit), long +5 (code 14), no location (code 15).
        let table = [
            0x80 | 1,
            0x00,
            0x80 | (11 << 3),
            1,
            2,
            0x80 | (13 << 3),
            7,
            0x80 | (14 << 3),
            10,
            0,
            0,
            0,
            0x80 | (15 << 3),
        ];
        assert_eq!(line_at(&table, 10, -2), Some(10));
        assert_eq!(line_at(&table, 10, 0), Some(10));
        assert_eq!(line_at(&table, 10, 2), Some(10));
        assert_eq!(line_at(&table, 10, 4), Some(11));
        assert_eq!(line_at(&table, 10, 6), Some(8));
        assert_eq!(line_at(&table, 10, 8), Some(13));
        assert_eq!(line_at(&table, 10, 10), None);
        assert_eq!(line_at(&table, 10, 12), None);
        // Damaged or cut short: no line, no panic.
        assert_eq!(line_at(&table[..8], 10, 8), None);
        assert_eq!(line_at(&[0x7f, 0xff, 0xff], 10, 0), None);
        assert_eq!(
            line_at(
                &[0x80 | (13 << 3), 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f],
                1,
                0
            ),
            None
        );
    }
}
