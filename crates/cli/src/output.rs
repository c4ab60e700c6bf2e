//! Rendering answers: aligned tables for people, the server's JSON for scripts.

use std::io::Write as _;

use anyhow::Context as _;
use serde_json::Value;

/// Output format for data on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header row.
    #[default]
    Table,
    /// The server's JSON, pretty-printed.
    Json,
}

/// A table: a header row and data rows of the same width.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Render with columns separated by two spaces and no trailing blanks.
    pub fn render(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let lines: Vec<Vec<String>> = std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(|r| r.iter().map(|c| clean(c)).collect())
            .collect();
        let mut widths = vec![0; self.headers.len()];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                let pad = w - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Write text to stdout (a closed pipe is not an error worth a panic).
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// Pretty-print JSON on stdout.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    text.push('\n');
    print_stdout(&text)
}

/// Print a table on stdout.
pub fn print_table(table: &Table) -> anyhow::Result<()> {
    print_stdout(&table.render())
}

/// Format epoch milliseconds as UTC, `2024-05-01 13:45:07Z`.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An optional timestamp, or `none_text` when absent.
pub fn format_opt_ms(ms: Option<i64>, none_text: &str) -> String {
    ms.map_or_else(|| none_text.to_owned(), format_ms)
}

/// Scopes as one cell.
pub fn scopes_cell(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "-".to_owned()
    } else {
        scopes.join(",")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is in 1..=31 and m in 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let mut t = Table::new(&["ID", "NAME", "SCOPES"]);
        t.row(vec!["1".into(), "short".into(), "*".into()]);
        t.row(vec![
            "22".into(),
            "a longer name".into(),
            "kv:read,kv:write".into(),
        ]);
        assert_eq!(
            t.render(),
            "ID  NAME           SCOPES\n\
             1   short          *\n\
             22  a longer name  kv:read,kv:write\n"
        );
    }

    #[test]
    fn empty_tables_keep_the_header_and_cells_are_sanitised() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x\ny".into()]);
        t.row(vec!["é".into(), "z".into(), "dropped".into()]);
        assert_eq!(t.render(), "A    B\nx y\né    z\n");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(format_ms(1_732_278_065_123), "2024-11-22 12:21:05Z");
        assert_eq!(format_opt_ms(None, "never"), "never");
    }
}
