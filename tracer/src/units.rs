//! Units, read and written: durations (`30s`, `10m`, `1h`, `500ms`, `1.5s`, or a bare number of
//! seconds) and byte sizes (`512`, `64K`, `10MiB`, `1G`) as the command line takes them, and
//! bytes, rates and durations as reports show them (`1.50 KiB`, `+1.50 KiB/s`, `1h 23m`).

use std::time::Duration;

/// Parses a duration such as `30s`, `10m`, `1h30m`, `250ms` or `45` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs, text);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!(
                "`{text}` is not a duration (try 30s, 10m, 1h or 500ms)"
            ));
        }
        let value: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("`{text}` is not a duration (try 30s, 10m, 1h or 500ms)"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            unit => {
                return Err(format!(
                    "unknown unit `{unit}` in `{text}` (use ms, s, m, h or d)"
                ));
            }
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    seconds(total, text)
}

/// The longest duration any flag takes: ten years, beyond any trace, and far from the limits of
/// the clocks it is added to.
pub const MAX_DURATION_SECS: f64 = 10.0 * 365.0 * 86400.0;

fn seconds(secs: f64, text: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration `{text}` must be positive"));
    }
    if secs < 0.001 {
        // Shorter rounds towards nothing: a zero sampling interval cannot tick.
        return Err(format!(
            "duration `{text}` is shorter than a millisecond: give at least 1ms"
        ));
    }
    if secs > MAX_DURATION_SECS {
        return Err(format!(
            "duration `{text}` is longer than ten years: give one that ends (e.g. 30d)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte count such as `512`, `64K`, `64KiB`, `10M` or `1.5G` (binary units).
pub fn parse_bytes(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let value: f64 = text[..split]
        .parse()
        .map_err(|_| format!("`{text}` is not a size (try 512, 64K, 10M or 1G)"))?;
    let scale = match text[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        unit => {
            return Err(format!(
                "unknown size unit `{unit}` in `{text}` (use K, M or G)"
            ));
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() {
        return Err(format!("`{text}` is too large a size"));
    }
    Ok(bytes)
}

/// `1536` -> `1.50 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// A rate in bytes per second, signed: `+1.50 KiB/s`.
pub fn human_rate(bytes_per_sec: f64) -> String {
    let sign = if bytes_per_sec < 0.0 { "-" } else { "+" };
    format!(
        "{sign}{}/s",
        human_bytes(bytes_per_sec.abs().round() as u64)
    )
}

/// A duration in the largest two units: `2d 3h`, `1h 23m`, `4m 10s`, `12s`.
pub fn human_duration(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(1 << 20), "1.00 MiB");
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("512").unwrap(), 512.0);
        assert_eq!(parse_bytes("64K").unwrap(), 65536.0);
        assert_eq!(parse_bytes("10MiB").unwrap(), 10.0 * 1048576.0);
        assert_eq!(parse_bytes("1.5g").unwrap(), 1.5 * 1073741824.0);
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("5X").is_err());
    }

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("nan").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_duration("1e-10").is_err());
        assert!(parse_duration("0.0001s").is_err());
        assert_eq!(parse_duration("1ms").unwrap(), Duration::from_millis(1));
        assert_eq!(
            parse_duration("3650d").unwrap(),
            Duration::from_secs(315_360_000)
        );
    }
}
