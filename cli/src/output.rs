//! What commands print: human text or JSON, and the formatting helpers both use.
//!
//! A command returns an [`Output`]; `main` writes it to stdout in one go (a closed pipe, as in
//! `zap store ls | head`, ends the output quietly instead of failing). Human output uses binary
//! units for sizes (`1.5 MiB`), decimal GB/s for throughput and UTC times; JSON output gives raw
//! numbers and ids as full hex strings.
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use zap_store::{CheckpointId, CheckpointSummary};

use crate::error::{CliError, Result};

/// Appends one formatted line to a `String`.
macro_rules! outln {
    ($buf:expr) => {
        $buf.push('\n')
    };
    ($buf:expr, $($arg:tt)*) => {{
        $buf.push_str(&format!($($arg)*));
        $buf.push('\n');
    }};
}
pub(crate) use outln;

/// What a command prints on stdout, and whether it found the problem it looked for.
#[derive(Debug)]
pub struct Output {
    /// The text, ending with a newline unless empty.
    pub text: String,
    /// True when the command ran but its answer is "something is wrong" (exit status 1).
    pub failed: bool,
}

impl Output {
    /// Human-readable text.
    pub fn text(text: String) -> Self {
        Output { text, failed: false }
    }

    /// A value as pretty-printed JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let mut text =
            serde_json::to_string_pretty(value).map_err(|e| CliError::Invalid(format!("encode JSON output: {e}")))?;
        text.push('\n');
        Ok(Output { text, failed: false })
    }

    /// Marks the output as reporting a failure.
    pub fn failed(mut self, failed: bool) -> Self {
        self.failed = failed;
        self
    }
}

/// The short form of a checkpoint id shown in tables (a unique prefix in all but huge stores).
pub fn short_id(id: &CheckpointId) -> String {
    id.to_hex()[..8].to_string()
}

/// A byte count in binary units: `0 B`, `512 B`, `1.5 KiB`, `64.0 MiB`, `2.00 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 || unit == 0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// Decimal gigabytes per second of moving `n` bytes in `elapsed`.
pub fn gb_per_s(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9) / 1e9
}

/// A duration for humans: `850 ms`, `12.3 s`.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A percentage of `part` in `whole`, or `-` when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / whole as f64)
    }
}

/// Splits milliseconds since the Unix epoch into UTC (year, month, day, hour, minute, second, ms).
fn civil(ms: u64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rem / 3600) as u32, (rem / 60 % 60) as u32, (rem % 60) as u32, (ms % 1000) as u32)
}

/// UTC time for tables: `2025-03-01 14:05:09`.
pub fn utc(ms: u64) -> String {
    let (y, mo, d, h, mi, s, _) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// UTC time in RFC 3339 form with milliseconds: `2025-03-01T14:05:09.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let (y, mo, d, h, mi, s, milli) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// A checkpoint summary as JSON: every field of [`CheckpointSummary`], ids as hex strings, plus
/// `created` in RFC 3339 form.
pub fn summary_json(s: &CheckpointSummary) -> Result<Value> {
    let mut v = serde_json::to_value(s).map_err(|e| CliError::Invalid(format!("encode summary of {}: {e}", s.id)))?;
    if let Value::Object(map) = &mut v {
        map.insert("id".into(), json!(s.id.to_hex()));
        map.insert("parent".into(), json!(s.parent.map(|p| p.to_hex())));
        map.insert("created".into(), json!(rfc3339(s.created_ms)));
    }
    Ok(v)
}

/// Labels as `k=v, k=v`, or `-` when there are none.
pub fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// Column alignment in a [`Table`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A plain-text table with a header row and aligned columns.
pub struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(headers: &[(&'static str, Align)]) -> Self {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines of text.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, ((cell, w), (_, align))) in row.iter().zip(&widths).zip(&self.headers).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = w.saturating_sub(cell.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                }
            }
            outln!(out, "{}", line.trim_end());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.00 MiB");
        assert_eq!(bytes(300 << 30), "300.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_740_837_909_000), "2025-03-01 14:05:09");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28 23:59:59");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right)]);
        t.row(vec!["a".into(), "1 B".into()]);
        t.row(vec!["longer".into(), "10.00 KiB".into()]);
        assert_eq!(t.render(), "NAME         SIZE\na             1 B\nlonger  10.00 KiB\n");
    }
}
