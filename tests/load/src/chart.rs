//! Comparing runs: an SVG chart and a markdown table from run records.
//!
//! The chart has one row per kind of throughput (appends/s, read MB/s,
//! deliveries/s, churn cycles/s). Each row holds two grouped bar charts —
//! throughput on the left, p99 latency on the right — with one group per
//! target label and one bar per case (parameter set). When several runs
//! share a label and case (a matrix repeated in rounds), each figure is the
//! median of their figures, and the table also gives the throughput's range:
//! on a shared machine one run can be far off, and the median of a few
//! interleaved runs is a steadier basis for comparing targets.

use crate::report::{Headline, RunRecord};
use crate::units::format_real;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

const WIDTH: u32 = 1400;
const ROW_HEIGHT: u32 = 400;
const TITLE_HEIGHT: u32 = 60;
const FONT: &str = "sans-serif";
/// Up to this many labels, throughput and latency panels sit side by side.
const WIDE_LAYOUT_LABELS: usize = 5;
/// Width per label group when panels take a whole row.
const PIXELS_PER_GROUP: u32 = 150;

/// Options of `chart`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChartOptions {
    /// Where to write the SVG chart.
    #[arg(long, default_value = "chart.svg")]
    pub out: PathBuf,
    /// Also write a markdown table of all runs to FILE.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Also write every input record to FILE as one JSON array.
    #[arg(long, value_name = "FILE")]
    pub combined: Option<PathBuf>,
    /// Title at the top of the chart.
    #[arg(long, default_value = "ds-load results")]
    pub title: String,
    /// Files of run records written with --json (JSON lines, one record,
    /// or an array).
    #[arg(required = true, value_name = "RESULTS")]
    pub inputs: Vec<PathBuf>,
}

/// Why the chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("no run has a throughput to chart")]
    NoData,
    #[error("drawing the chart failed: {0}")]
    Draw(String),
}

/// Turns a plotters result into ours.
fn drawn<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, ChartError> {
    result.map_err(|error| ChartError::Draw(error.to_string()))
}

/// Runs sharing a throughput unit: one row of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// E.g. `appends/s`.
    pub unit: String,
    /// What the latency measures, e.g. `append`.
    pub latency_of: String,
    /// Target labels: the bar groups.
    pub labels: Vec<String>,
    /// Cases: the bars within a group.
    pub cases: Vec<String>,
    /// `throughput[case][label]`.
    pub throughput: Vec<Vec<Option<f64>>>,
    /// `latency_p99_ms[case][label]`.
    pub latency_p99_ms: Vec<Vec<Option<f64>>>,
}

/// Groups records into chart rows, in order of first appearance; repeated
/// runs of a label and case count with their median.
pub fn families(records: &[RunRecord]) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    for group in run_groups(records) {
        let record = group.runs[0];
        let (Some(unit), Some(throughput)) = (
            record.headline.throughput_unit.as_ref(),
            group.median(|headline| headline.throughput),
        ) else {
            continue;
        };
        let index = match families.iter().position(|family| &family.unit == unit) {
            Some(index) => index,
            None => {
                families.push(Family {
                    unit: unit.clone(),
                    latency_of: record.headline.latency_of.clone().unwrap_or_default(),
                    labels: Vec::new(),
                    cases: Vec::new(),
                    throughput: Vec::new(),
                    latency_p99_ms: Vec::new(),
                });
                families.len() - 1
            }
        };
        let family = &mut families[index];
        let label = position_or_push(&mut family.labels, &record.label);
        let case = position_or_push(&mut family.cases, &record.case);
        for values in [&mut family.throughput, &mut family.latency_p99_ms] {
            values.resize(family.cases.len(), Vec::new());
            for row in values.iter_mut() {
                row.resize(family.labels.len(), None);
            }
        }
        family.throughput[case][label] = Some(throughput);
        family.latency_p99_ms[case][label] =
            group.median(|headline| headline.latency.map(|l| l.p99_ms));
    }
    families
}

/// The runs of one scenario, case and label.
#[derive(Debug)]
struct RunGroup<'a> {
    runs: Vec<&'a RunRecord>,
}

impl RunGroup<'_> {
    /// The median of a figure over the runs that have it.
    fn median(&self, figure: impl Fn(&Headline) -> Option<f64>) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|run| figure(&run.headline))
                .collect(),
        )
    }

    /// The lowest and highest throughput of the runs.
    fn throughput_range(&self) -> Option<(f64, f64)> {
        let mut values = self.runs.iter().filter_map(|run| run.headline.throughput);
        let first = values.next()?;
        Some(values.fold((first, first), |(low, high), v| (low.min(v), high.max(v))))
    }
}

/// Records grouped by scenario, case and label, in order of first
/// appearance, each group's runs in input order.
fn run_groups(records: &[RunRecord]) -> Vec<RunGroup<'_>> {
    let mut groups: Vec<RunGroup> = Vec::new();
    for record in records {
        let same = |group: &&mut RunGroup| {
            let first = group.runs[0];
            first.scenario == record.scenario
                && first.case == record.case
                && first.label == record.label
        };
        match groups.iter_mut().find(same) {
            Some(group) => group.runs.push(record),
            None => groups.push(RunGroup { runs: vec![record] }),
        }
    }
    groups
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

fn position_or_push(items: &mut Vec<String>, item: &str) -> usize {
    match items.iter().position(|existing| existing == item) {
        Some(index) => index,
        None => {
            items.push(item.to_owned());
            items.len() - 1
        }
    }
}

/// Draws the chart of `records` to the SVG file `out`.
pub fn draw_chart(records: &[RunRecord], title: &str, out: &Path) -> Result<(), ChartError> {
    let families = families(records);
    if families.is_empty() {
        return Err(ChartError::NoData);
    }
    // Throughput and latency side by side while the groups fit; one panel
    // per row, wider with more groups, when they do not.
    let most_labels = families.iter().map(|f| f.labels.len()).max().unwrap_or(1);
    let side_by_side = most_labels <= WIDE_LAYOUT_LABELS;
    let (grid_rows, grid_columns, width) = if side_by_side {
        (families.len(), 2, WIDTH)
    } else {
        let width = WIDTH.max(most_labels as u32 * PIXELS_PER_GROUP);
        (families.len() * 2, 1, width)
    };
    let height = TITLE_HEIGHT + ROW_HEIGHT * grid_rows as u32;
    let root = SVGBackend::new(out, (width, height)).into_drawing_area();
    drawn(root.fill(&WHITE))?;
    let body = drawn(root.titled(title, (FONT, 28)))?;
    // Row-major, so each family's two panels are consecutive either way.
    let panels = body.split_evenly((grid_rows, grid_columns));
    for (family, pair) in families.iter().zip(panels.chunks(2)) {
        if let [throughput, latency] = pair {
            draw_bars(
                throughput,
                &format!("{} (higher is better)", family.unit),
                family,
                &family.throughput,
            )?;
            draw_bars(
                latency,
                &format!("{} latency p99, ms (lower is better)", family.latency_of),
                family,
                &family.latency_p99_ms,
            )?;
        }
    }
    drawn(root.present())
}

/// One grouped bar chart: groups are labels, bars are cases.
fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    family: &Family,
    values: &[Vec<Option<f64>>],
) -> Result<(), ChartError> {
    let highest = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .fold(0.0, f64::max);
    // Headroom above the highest bar for its value and the legend.
    let headroom = 1.2 + 0.12 * family.cases.len() as f64;
    let top = if highest > 0.0 {
        highest * headroom
    } else {
        1.0
    };
    let groups = family.labels.len().max(1);
    let mut chart = drawn(
        ChartBuilder::on(area)
            .caption(title, (FONT, 18))
            .margin(14)
            .x_label_area_size(34)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..groups as f64, 0.0..top),
    )?;
    // Group names are drawn below the axis by hand, centred under their
    // group, instead of numeric x labels.
    drawn(
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(RGBColor(242, 242, 242))
            .x_labels(0)
            .y_label_formatter(&|y| format_real(*y))
            .label_style((FONT, 13))
            .draw(),
    )?;
    let name_style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    drawn(
        chart.draw_series(family.labels.iter().enumerate().map(|(group, label)| {
            EmptyElement::at((group as f64 + 0.5, 0.0))
                + Text::new(label.clone(), (0, 8), name_style.clone())
        })),
    )?;

    let slot = 0.8 / family.cases.len().max(1) as f64;
    for (case_index, case) in family.cases.iter().enumerate() {
        let color = Palette99::pick(case_index).to_rgba();
        let bars: Vec<(f64, f64, f64)> = values
            .get(case_index)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .filter_map(|(label, value)| {
                        let left = label as f64 + 0.1 + slot * case_index as f64;
                        value.map(|value| (left, left + slot, value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        drawn(chart.draw_series(bars.iter().map(|&(left, right, value)| {
            Rectangle::new([(left, 0.0), (right, value)], color.filled())
        })))?
        .label(case.as_str())
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let value_style =
            TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        drawn(chart.draw_series(bars.iter().map(|&(left, right, value)| {
            Text::new(
                format_real(value),
                ((left + right) / 2.0, value),
                value_style.clone(),
            )
        })))?;
    }
    drawn(
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw(),
    )
}

/// A markdown table with a row per scenario, case and label (grouped by
/// scenario and case): the number of runs, then the median of each figure,
/// the throughput's range and the problems of all runs together.
pub fn markdown_table(records: &[RunRecord]) -> String {
    let mut groups = run_groups(records);
    let mut cases: Vec<(&str, &str)> = Vec::new();
    for group in &groups {
        let first = group.runs[0];
        if !cases.contains(&(&first.scenario, &first.case)) {
            cases.push((&first.scenario, &first.case));
        }
    }
    // Stable: labels keep their order of appearance within a case.
    groups.sort_by_key(|group| {
        let first = group.runs[0];
        cases
            .iter()
            .position(|&case| case == (first.scenario.as_str(), first.case.as_str()))
    });
    let mut table = String::from(
        "| scenario | case | label | runs | throughput | range | unit | p50 ms | p99 ms | p999 ms | problems |\n\
         |---|---|---|---:|---:|---:|---|---:|---:|---:|---:|\n",
    );
    let cell = |value: Option<f64>| value.map(format_real).unwrap_or_else(|| "–".to_owned());
    for group in groups {
        let first = group.runs[0];
        let range = match group.throughput_range() {
            Some((low, high)) if group.runs.len() > 1 => {
                format!("{}–{}", format_real(low), format_real(high))
            }
            _ => "–".to_owned(),
        };
        let problems: u64 = group.runs.iter().map(|run| run.headline.problems).sum();
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            first.scenario,
            first.case,
            first.label,
            group.runs.len(),
            cell(group.median(|h| h.throughput)),
            range,
            first.headline.throughput_unit.as_deref().unwrap_or(""),
            cell(group.median(|h| h.latency.map(|l| l.p50_ms))),
            cell(group.median(|h| h.latency.map(|l| l.p99_ms))),
            cell(group.median(|h| h.latency.map(|l| l.p999_ms))),
            problems,
        ));
    }
    table
}

/// Writes [`markdown_table`] to `path`.
pub fn write_markdown(records: &[RunRecord], path: &Path) -> std::io::Result<()> {
    std::fs::write(path, markdown_table(records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LatencySummary;

    fn record(label: &str, scenario: &str, case: &str, unit: &str, value: f64) -> RunRecord {
        RunRecord {
            tool: "ds-load".into(),
            version: "0".into(),
            scenario: scenario.into(),
            case: case.into(),
            label: label.into(),
            url: "http://127.0.0.1:1".into(),
            started_unix_s: 0,
            duration_s: 1.0,
            parameters: serde_json::Value::Null,
            results: serde_json::Value::Null,
            headline: Headline {
                throughput: Some(value),
                throughput_unit: Some(unit.into()),
                latency_of: Some("op".into()),
                latency: Some(LatencySummary {
                    p99_ms: value / 100.0,
                    ..LatencySummary::default()
                }),
                problems: 0,
            },
        }
    }

    fn sample() -> Vec<RunRecord> {
        vec![
            record("ours", "append", "16c", "appends/s", 1000.0),
            record("ours", "append", "64c", "appends/s", 2000.0),
            record("ours", "read", "1MiB", "read MB/s", 300.0),
            record("node", "append", "16c", "appends/s", 500.0),
            record("node", "read", "1MiB", "read MB/s", 100.0),
            record("ours", "append", "16c", "appends/s", 1100.0),
        ]
    }

    #[test]
    fn families_group_by_unit_label_and_case() {
        let families = families(&sample());
        assert_eq!(families.len(), 2);
        let append = &families[0];
        assert_eq!(append.unit, "appends/s");
        assert_eq!(append.labels, vec!["ours", "node"]);
        assert_eq!(append.cases, vec!["16c", "64c"]);
        // Two runs of the same label and case: the mean of the middle two.
        assert_eq!(append.throughput[0], vec![Some(1050.0), Some(500.0)]);
        assert_eq!(append.throughput[1], vec![Some(2000.0), None]);
        assert_eq!(append.latency_p99_ms[0], vec![Some(10.5), Some(5.0)]);
        assert_eq!(families[1].labels, vec!["ours", "node"]);
    }

    #[test]
    fn chart_is_an_svg_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("chart.svg");
        draw_chart(&sample(), "test chart", &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("test chart"));
        assert!(svg.contains("node"));
        assert!(svg.contains("read MB/s"));
    }

    #[test]
    fn many_labels_stack_the_panels() {
        let records: Vec<RunRecord> = (0..8)
            .map(|n| {
                record(
                    &format!("target-{n}"),
                    "append",
                    "16c",
                    "appends/s",
                    100.0 * n as f64,
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("wide.svg");
        draw_chart(&records, "wide", &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.contains("target-7"));
    }

    #[test]
    fn chart_needs_data() {
        let mut lonely = record("x", "live", "c", "u", 1.0);
        lonely.headline.throughput = None;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("never-written.svg");
        assert!(matches!(
            draw_chart(&[lonely], "t", &out),
            Err(ChartError::NoData)
        ));
    }

    #[test]
    fn markdown_has_a_row_per_case_and_label() {
        let table = markdown_table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 5);
        assert!(lines[2].starts_with("| append | 16c | ours | 2 | 1,050 | 1,000–1,100 |"));
        assert!(lines[3].starts_with("| append | 16c | node | 1 | 500 | – |"));
        assert!(lines[4].starts_with("| append | 64c | ours | 1 |"));
        assert!(lines[5].starts_with("| read | 1MiB | ours |"));
        assert!(lines[6].starts_with("| read | 1MiB | node |"));
    }

    #[test]
    fn one_run_far_off_does_not_move_the_median() {
        let mut records: Vec<RunRecord> = [900.0, 5000.0, 1000.0]
            .into_iter()
            .map(|value| record("ours", "append", "16c", "appends/s", value))
            .collect();
        records[1].headline.problems = 3;
        let family = &families(&records)[0];
        assert_eq!(family.throughput[0], vec![Some(1000.0)]);
        assert_eq!(family.latency_p99_ms[0], vec![Some(10.0)]);
        let table = markdown_table(&records);
        let row = table.lines().nth(2).expect("a row");
        assert_eq!(
            row,
            "| append | 16c | ours | 3 | 1,000 | 900–5,000 | appends/s | 0 | 10.00 | 0 | 3 |"
        );
    }

    #[test]
    fn medians_of_odd_even_and_no_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![7.0]), Some(7.0));
        assert_eq!(median(Vec::new()), None);
    }
}
