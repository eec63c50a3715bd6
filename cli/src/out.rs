//! Output: tables for people, JSON for scripts, progress bars on stderr, durations and
//! sizes in a readable form.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints a table (people) or `json` (scripts).
    pub fn table(&self, table: Table, json: Value) {
        if self.json {
            self.json(json);
        } else {
            table.print();
        }
    }

    /// Prints a key/value list (people) or `json`.
    pub fn fields(&self, rows: Vec<(&str, String)>, json: Value) {
        if self.json {
            self.json(json);
            return;
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
    }

    /// Prints one line for people, or `json`.
    pub fn line(&self, text: &str, json: Value) {
        if self.json {
            self.json(json);
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
    }

    pub fn json(&self, v: Value) {
        let text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "null".to_owned());
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }

    /// A progress bar on stderr (drawn only on a terminal, never with `--json`): `total`
    /// when known, a spinner otherwise.
    pub fn progress(&self, what: &str, total: Option<u64>) -> ProgressBar {
        if self.json {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg} {pos}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(what.to_owned());
        bar
    }
}

/// A table of text cells, columns sized to fit.
pub struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: Vec<&'static str>) -> Table {
        Table {
            head,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print_to_stdout(&self) {
        self.print();
    }

    fn print(&self) {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let mut out = std::io::stdout().lock();
        let line = |cells: Vec<String>| -> String {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  "));
                }
            }
            s.trim_end().to_owned()
        };
        let _ = writeln!(
            out,
            "{}",
            line(self.head.iter().map(|h| h.to_uppercase()).collect())
        );
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r.clone()));
        }
        if self.rows.is_empty() {
            let _ = writeln!(out, "(none)");
        }
    }
}

/// A duration for people: `1.5s`, `250ms`, `3m20s`, `2h5m`, `4d3h`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s < 60 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    if s < 3600 {
        return format!("{}m{}s", s / 60, s % 60);
    }
    if s < 86_400 {
        return format!("{}h{}m", s / 3600, (s % 3600) / 60);
    }
    format!("{}d{}h", s / 86_400, (s % 86_400) / 3600)
}

pub fn opt_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), duration)
}

/// Milliseconds for JSON (`null` when absent).
pub fn ms(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        Value::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// Bytes for people: `512B`, `1.5KiB`, `3.2MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// A time as seconds since the epoch, for JSON.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How long ago, for people.
pub fn ago(t: SystemTime) -> String {
    match SystemTime::now().duration_since(t) {
        Ok(d) => format!("{} ago", duration(d)),
        Err(_) => "now".to_owned(),
    }
}

/// Bytes shown as text: UTF-8 as is (cut to `max` characters), other bytes escaped.
pub fn preview(b: &[u8], max: usize) -> String {
    let text = match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => b.escape_ascii().to_string(),
    };
    let text = text.replace('\n', "\\n");
    if text.chars().count() > max {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Bytes for JSON: a string when UTF-8, else `{"base16": "..."}`.
pub fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::from(s),
        Err(_) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            serde_json::json!({ "base16": hex })
        }
    }
}

/// Parses `250ms`, `1.5s`, `2m`, `1h`, `1d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (250ms, 1.5s, 2m, 1h, 1d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(200)), "3m20s");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(preview(b"a\nb", 10), "a\\nb");
        assert_eq!(preview(b"abcdef", 3), "abc…");
        assert_eq!(bytes_json(&[0xff]), serde_json::json!({ "base16": "ff" }));
    }
}
