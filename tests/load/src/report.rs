//! What a run reports: the JSON record written with `--json` (scenario,
//! parameters, target label, results and a headline the chart uses), the
//! readable table printed on stdout, and reading records back.
//!
//! `--json FILE` appends one record per line (JSON Lines), so one file can
//! collect a whole matrix; [`read_records`] also accepts a file holding a
//! single record or an array of records.

use crate::stats::LatencySummary;
use crate::units::{format_ms, format_real};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// A table row: metric name and formatted value.
pub type Row = (String, String);

/// What every scenario's results offer beyond their own fields.
pub trait Outcome: Serialize {
    /// The rows of the stdout table.
    fn rows(&self) -> Vec<Row>;
    /// The numbers the chart and markdown table compare.
    fn headline(&self) -> Headline;
    /// Lines printed under the table: examples of errors and anomalies.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The comparable numbers of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    /// The main rate, e.g. appends per second.
    pub throughput: Option<f64>,
    /// Its unit, e.g. `appends/s`; runs with the same unit share a chart
    /// panel.
    pub throughput_unit: Option<String>,
    /// What the latency measures, e.g. `append` or `delivery`.
    pub latency_of: Option<String>,
    pub latency: Option<LatencySummary>,
    /// Errors, lost or duplicated messages and corrupt reads: anything
    /// that should be zero.
    pub problems: u64,
}

/// One run, as written with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub tool: String,
    pub version: String,
    pub scenario: String,
    /// A short description of the parameters, e.g. `16c×16s×256B plain`.
    pub case: String,
    /// The `--label` of the target (server and mode under test).
    pub label: String,
    pub url: String,
    pub started_unix_s: u64,
    /// The requested load duration.
    pub duration_s: f64,
    pub parameters: serde_json::Value,
    pub results: serde_json::Value,
    pub headline: Headline,
}

/// Why records could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: not a run record, an array of them, or JSON lines of them: {cause}")]
    Parse {
        path: String,
        cause: serde_json::Error,
    },
}

/// The identifying parts of a record, before the results are known.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub scenario: &'static str,
    pub case: String,
    pub label: String,
    pub url: String,
    pub started_unix_s: u64,
    pub duration_s: f64,
}

impl RunRecord {
    pub fn new(
        info: RunInfo,
        parameters: &impl Serialize,
        outcome: &impl Outcome,
    ) -> Result<RunRecord, serde_json::Error> {
        Ok(RunRecord {
            tool: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            scenario: info.scenario.to_owned(),
            case: info.case,
            label: info.label,
            url: info.url,
            started_unix_s: info.started_unix_s,
            duration_s: info.duration_s,
            parameters: serde_json::to_value(parameters)?,
            results: serde_json::to_value(outcome)?,
            headline: outcome.headline(),
        })
    }
}

/// Rows for a latency summary: p50, p99, p999 and max.
pub fn latency_rows(what: &str, summary: &LatencySummary) -> Vec<Row> {
    vec![
        (format!("{what} p50"), format_ms(summary.p50_ms)),
        (format!("{what} p99"), format_ms(summary.p99_ms)),
        (format!("{what} p999"), format_ms(summary.p999_ms)),
        (format!("{what} max"), format_ms(summary.max_ms)),
    ]
}

/// Error examples of a tally, as notes.
pub fn errors_as_notes(errors: &crate::stats::ErrorTally) -> Vec<String> {
    errors
        .examples
        .iter()
        .map(|example| format!("error: {example}"))
        .collect()
}

/// A row with a real-valued rate.
pub fn rate_row(name: &str, value: f64) -> Row {
    (name.to_owned(), format_real(value))
}

/// The stdout table of a run, with notes below it.
pub fn render_table(record: &RunRecord, rows: &[Row], notes: &[String]) -> String {
    let mut out = format!("\n{} {} — {}", record.scenario, record.case, record.label);
    if record.label != record.url {
        out.push_str(&format!(" ({})", record.url));
    }
    out.push('\n');
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|(_, value)| value.len()).max().unwrap_or(0);
    let rule = "─".repeat(width + value_width + 4);
    out.push_str(&format!("  {rule}\n"));
    for (name, value) in rows {
        out.push_str(&format!("  {name:<width$}    {value:>value_width$}\n"));
    }
    out.push_str(&format!("  {rule}\n"));
    for note in notes {
        out.push_str(&format!("  • {note}\n"));
    }
    out
}

/// Appends `record` as one line of JSON to `path`, creating the file.
pub fn append_json_line(path: &Path, record: &RunRecord) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(&line)
}

/// Reads the records in `path`: JSON lines, one record, or an array.
pub fn read_records(path: &Path) -> Result<Vec<RunRecord>, RecordsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|cause| RecordsError::Read {
        path: shown.clone(),
        cause,
    })?;
    parse_records(&text).map_err(|cause| RecordsError::Parse { path: shown, cause })
}

fn parse_records(text: &str) -> Result<Vec<RunRecord>, serde_json::Error> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed);
    }
    if let Ok(record) = serde_json::from_str::<RunRecord>(trimmed) {
        return Ok(vec![record]);
    }
    trimmed
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Fake {
        rate: f64,
    }

    impl Outcome for Fake {
        fn rows(&self) -> Vec<Row> {
            vec![rate_row("things/s", self.rate)]
        }
        fn headline(&self) -> Headline {
            Headline {
                throughput: Some(self.rate),
                throughput_unit: Some("things/s".into()),
                ..Headline::default()
            }
        }
    }

    fn record(label: &str) -> RunRecord {
        let info = RunInfo {
            scenario: "append",
            case: "1c".into(),
            label: label.into(),
            url: "http://127.0.0.1:1".into(),
            started_unix_s: 1,
            duration_s: 1.0,
        };
        RunRecord::new(
            info,
            &serde_json::json!({"connections": 1}),
            &Fake { rate: 2.5 },
        )
        .unwrap()
    }

    #[test]
    fn records_round_trip_as_lines_single_and_array() {
        let a = record("a");
        let b = record("b");
        let lines = format!(
            "{}\n{}\n",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let parsed = parse_records(&lines).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].label, "b");
        assert_eq!(parsed[0].headline.throughput, Some(2.5));

        let single = serde_json::to_string_pretty(&a).unwrap();
        assert_eq!(parse_records(&single).unwrap().len(), 1);

        let array = serde_json::to_string_pretty(&vec![a, b]).unwrap();
        assert_eq!(parse_records(&array).unwrap().len(), 2);

        assert!(parse_records("{\"nope\": 1}").is_err());
    }

    #[test]
    fn table_lists_rows() {
        let record = record("ours");
        let table = render_table(&record, &Fake { rate: 2.5 }.rows(), &["a note".into()]);
        assert!(table.contains("• a note"));
        assert!(table.contains("append 1c — ours"));
        assert!(table.contains("things/s"));
        assert!(table.contains("2.50"));
    }
}
