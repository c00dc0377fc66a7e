//! Human-friendly quantities on the command line — byte sizes such as
//! `256`, `4KiB`, `1MiB` or `2MB`, durations such as `10s`, `500ms` or
//! `2m` — and the matching formatting used in report tables.

use std::time::Duration;

/// Why a size or duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("{0:?} does not start with a number")]
    NotANumber(String),
    #[error("unknown unit {unit:?} in {text:?}; use {allowed}")]
    UnknownUnit {
        text: String,
        unit: String,
        allowed: &'static str,
    },
    #[error("{0:?} is out of range")]
    OutOfRange(String),
}

/// Splits `"1.5MiB"` into `(1.5, "MiB")`.
fn split_number(text: &str) -> Result<(f64, &str), UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let value: f64 = number
        .parse()
        .map_err(|_| UnitError::NotANumber(text.to_owned()))?;
    Ok((value, unit.trim()))
}

/// Parses a byte size: a number with an optional unit. `K`, `KB`, `M`,
/// `MB`, `G`, `GB` are powers of 1000; `KiB`, `MiB`, `GiB` powers of 1024;
/// no unit or `B` means bytes. Units are case-insensitive.
pub fn parse_byte_size(text: &str) -> Result<u64, UnitError> {
    let (value, unit) = split_number(text)?;
    const KI: f64 = 1024.0;
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => KI,
        "m" | "mb" => 1e6,
        "mi" | "mib" => KI * KI,
        "g" | "gb" => 1e9,
        "gi" | "gib" => KI * KI * KI,
        _ => {
            return Err(UnitError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
                allowed: "B, KB, KiB, MB, MiB, GB or GiB",
            });
        }
    };
    let bytes = (value * multiplier).round();
    // 2^53: every integer below it is exact in an f64.
    if !bytes.is_finite() || bytes > 9_007_199_254_740_992.0 {
        return Err(UnitError::OutOfRange(text.to_owned()));
    }
    Ok(bytes as u64)
}

/// Parses a duration: a number with an optional unit — `us`, `ms`, `s`,
/// `m` (or `min`), `h`; no unit means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (value, unit) = split_number(text)?;
    let seconds_per_unit = match unit.to_ascii_lowercase().as_str() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(UnitError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
                allowed: "us, ms, s, m or h",
            });
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| UnitError::OutOfRange(text.to_owned()))
}

/// `1048576` → `"1.00 MiB"`, `256` → `"256 B"`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.2} {unit}")
}

/// `1234567` → `"1,234,567"`.
pub fn format_count(count: u64) -> String {
    let digits = count.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// A rate or other real number with a sensible number of decimals.
pub fn format_real(value: f64) -> String {
    if value < 0.0 {
        return format!("-{}", format_real(-value));
    }
    let magnitude = value;
    if magnitude == 0.0 {
        "0".to_owned()
    } else if magnitude >= 1000.0 {
        format_count(value.round() as u64)
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// Milliseconds with a unit, for latency cells.
pub fn format_ms(ms: f64) -> String {
    format!("{} ms", format_real(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("256"), Ok(256));
        assert_eq!(parse_byte_size("256B"), Ok(256));
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("1mib"), Ok(1 << 20));
        assert_eq!(parse_byte_size("4 KiB"), Ok(4096));
        assert_eq!(parse_byte_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_byte_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("3k"), Ok(3000));
    }

    #[test]
    fn byte_sizes_reject_nonsense() {
        assert_eq!(parse_byte_size(""), Err(UnitError::Empty));
        assert!(matches!(
            parse_byte_size("MiB"),
            Err(UnitError::NotANumber(_))
        ));
        assert!(matches!(
            parse_byte_size("-5"),
            Err(UnitError::NotANumber(_))
        ));
        assert!(matches!(
            parse_byte_size("10 parsecs"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_byte_size("1e30"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_byte_size("99999999999GiB"),
            Err(UnitError::OutOfRange(_))
        ));
    }

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn durations_reject_unknown_units() {
        assert!(matches!(
            parse_duration("3 fortnights"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert_eq!(parse_duration("  "), Err(UnitError::Empty));
    }

    #[test]
    fn formatting_is_readable() {
        assert_eq!(format_bytes(256), "256 B");
        assert_eq!(format_bytes(1 << 20), "1.00 MiB");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1000), "1,000");
        assert_eq!(format_count(1_234_567), "1,234,567");
        assert_eq!(format_real(12345.4), "12,345");
        assert_eq!(format_real(4.256), "4.26");
        assert_eq!(format_real(0.25), "0.250");
        assert_eq!(format_real(0.0), "0");
        assert_eq!(format_real(-1500.0), "-1,500");
    }
}
