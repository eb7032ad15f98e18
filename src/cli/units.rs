//! The units `serve`'s options are written in: sizes, rates, durations.
//! One parser of each, so every option takes the same spellings.

use std::time::Duration;

/// A size: plain bytes, or a number with a unit: `K`/`KB` (1000), `KiB`
/// (1024), and likewise `M`, `G`, `T` (powers of 1000) and `MiB`, `GiB`,
/// `TiB` (powers of 1024); case does not matter, `B` may follow.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let bad = || format!("{text:?} is not a size: write bytes (1048576) or a number and a unit (500MiB, 10G, 2TB)");
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "ti" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is more bytes than a node can count"));
    }
    Ok(bytes as u64)
}

/// Bytes a second: a size ([`parse_size`]), `/s` allowed after it; at least 1.
pub(super) fn parse_rate(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    match parse_size(trimmed.strip_suffix("/s").unwrap_or(trimmed))? {
        0 => Err(format!("{text:?}: a rate of at least 1 byte a second, please")),
        rate => Ok(rate),
    }
}

/// A duration: a whole number and a unit, `s`, `m`, `h` or `d` (`0s`,
/// `90s`, `10m`, `1h`, `2d`).
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration: write a whole number and s, m, h or d (90s, 10m, 1h, 2d)");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let number: u64 = text[..split].parse().map_err(|_| bad())?;
    let unit: u64 = match &text[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number.checked_mul(unit).map(Duration::from_secs).ok_or_else(bad)
}

/// How often something runs: a duration ([`parse_duration`]) of at least 1 s.
pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?}: an interval of at least 1s, please")),
        interval => Ok(interval),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates_parse_in_both_kinds_of_unit() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("10G"), Ok(10_000_000_000));
        assert_eq!(parse_size("10 gib"), Ok(10 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        for bad in ["", "MiB", "10 furlongs", "1.2.3G", "-5", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_rate("32MiB"), Ok(32 << 20));
        assert_eq!(parse_rate("500k/s"), Ok(500_000));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "10", "h", "1.5h", "10 m", "-1s", "1w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("0s").is_err());
    }
}
