//! Human output: sizes, rates, times, tables, and the progress bar.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// `1.00 GiB`, `512 B`: binary units, three significant digits.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if value < 10.0 => format!("{value:.2} {}", UNITS[unit]),
        _ if value < 100.0 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.0} {}", UNITS[unit]),
    }
}

/// Throughput in the binary units of [`size`] (as the progress bar shows it).
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-6);
    format!("{}/s", size((bytes as f64 / seconds) as u64))
}

/// `1 chunk`, `2 chunks`.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `2026-11-27 02:25:35 UTC` from milliseconds since the Unix epoch.
pub fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = row(header, &widths);
    for cells in rows {
        out += &row(&cells.iter().map(String::as_str).collect::<Vec<_>>(), &widths);
    }
    out
}

/// One line of a table whose column widths are known: each cell padded to
/// its width (a longer one pushes the rest along), two spaces between.
pub fn row(cells: &[&str], widths: &[usize]) -> String {
    let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
    padded.join("  ").trim_end().to_owned() + "\n"
}

/// A byte progress bar on stderr when it is a terminal and output is not
/// quiet; otherwise a hidden one that costs nothing.
pub fn progress_bar(total: Option<u64>, quiet: bool, verb: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
                .expect("the template is valid")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix} {spinner} {bytes} {binary_bytes_per_sec}")
                .expect("the template is valid"),
        ),
    };
    bar.set_prefix(verb.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.00 KiB");
        assert_eq!(size(8 << 20), "8.00 MiB");
        assert_eq!(size(300 << 30), "300 GiB");
    }

    #[test]
    fn rates_and_counts_read_as_english() {
        assert_eq!(rate(3 << 20, Duration::from_secs(2)), "1.50 MiB/s");
        assert_eq!(rate(100, Duration::from_secs(1)), "100 B/s");
        assert_eq!(count(1u64, "chunk", "chunks"), "1 chunk");
        assert_eq!(count(0u64, "chunk", "chunks"), "0 chunks");
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_795_746_335_000), "2026-11-27 02:25:35 UTC");
    }

    #[test]
    fn tables_align_columns() {
        let out = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(out, "A    BB\nxyz  1\n");
    }
}
