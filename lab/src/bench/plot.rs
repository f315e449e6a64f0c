//! PNG plots of a bench (plotters, bitmap backend): latency quantiles and p99 per window.

use super::report::{quantile_ms, RunOutcome};
use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::register_font;
use std::path::Path;

/// Font used for labels; plots are skipped when it is missing.
const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Registers the label font once (plotters needs a font to draw any text).
fn register_label_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT_FILE).with_context(|| format!("reading {FONT_FILE}"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT_FILE} is not a usable font"))
}

/// What the plots show of one policy's run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSeries {
    /// Policy name.
    pub policy: String,
    /// p50, p90, p99 and p99.9 in milliseconds.
    pub quantiles: Vec<f64>,
    /// p99 per window, milliseconds.
    pub windows: Vec<f64>,
}

impl PlotSeries {
    /// The plotted figures of a finished run.
    pub fn of(run: &RunOutcome) -> Self {
        Self {
            policy: run.policy.clone(),
            quantiles: [0.5, 0.9, 0.99, 0.999]
                .iter()
                .map(|quantile| quantile_ms(&run.load.overall, *quantile))
                .collect(),
            windows: run
                .load
                .windows
                .iter()
                .map(|window| quantile_ms(window, 0.99))
                .collect(),
        }
    }
}

fn cells(line: &str) -> Vec<&str> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

/// Reads the series back from a bench `report.md` (summary and p99-per-window tables), so
/// plots can be redrawn from the kept record.
pub fn series_from_report(text: &str) -> Vec<PlotSeries> {
    let mut series: Vec<PlotSeries> = Vec::new();
    let mut section = "";
    let mut names: Vec<String> = Vec::new();
    // Columns of p50, p90, p99 and p99.9 in the summary, found by name: reports written
    // before the error columns existed have p99.9 next to p99, newer ones do not.
    let mut quantile_columns: Vec<usize> = Vec::new();
    for line in text.lines() {
        if line.starts_with("| policy | p50 ms") {
            section = "summary";
            let header = cells(line);
            quantile_columns = ["p50 ms", "p90 ms", "p99 ms", "p99.9 ms"]
                .iter()
                .filter_map(|name| header.iter().position(|cell| cell == name))
                .collect();
            continue;
        }
        if line.starts_with("| window |") {
            section = "windows";
            names = cells(line)
                .iter()
                .skip(1)
                .map(|name| (*name).to_owned())
                .collect();
            continue;
        }
        if !line.starts_with('|') || line.starts_with("|---") {
            if !line.starts_with('|') {
                section = if line.trim().is_empty() { section } else { "" };
            }
            continue;
        }
        let row = cells(line);
        match section {
            "summary" if row.len() > 4 => series.push(PlotSeries {
                policy: row[0].to_owned(),
                quantiles: quantile_columns
                    .iter()
                    .filter_map(|&column| row.get(column)?.parse().ok())
                    .collect(),
                windows: Vec::new(),
            }),
            "windows" => {
                for (name, cell) in names.iter().zip(row.iter().skip(1)) {
                    let value = cell.parse().unwrap_or(0.0);
                    if let Some(entry) = series.iter_mut().find(|entry| &entry.policy == name) {
                        entry.windows.push(value);
                    }
                }
            }
            _ => {}
        }
    }
    series
}

/// Writes `quantiles.png` and `p99-windows.png` into `directory`.
pub fn write_plots(series: &[PlotSeries], directory: &Path) -> anyhow::Result<()> {
    register_label_font()?;
    let quantiles: Vec<(String, Vec<f64>)> = series
        .iter()
        .map(|entry| (entry.policy.clone(), entry.quantiles.clone()))
        .collect();
    chart(
        &directory.join("quantiles.png"),
        "latency by quantile: p50, p90, p99, p99.9 (ms)",
        "quantile (0 = p50 .. 3 = p99.9)",
        &quantiles,
    )?;
    let windows: Vec<(String, Vec<f64>)> = series
        .iter()
        .map(|entry| (entry.policy.clone(), entry.windows.clone()))
        .collect();
    chart(
        &directory.join("p99-windows.png"),
        "p99 per 5 s window after the warm-up (ms)",
        "window",
        &windows,
    )
}

/// Writes one line chart (x: the index of each value) to `path`, e.g. p99 by load per policy.
pub fn write_line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    register_label_font()?;
    chart(path, title, x_label, series)
}

fn chart(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let draw = |path: &Path| -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let points = series
            .iter()
            .map(|(_, values)| values.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let highest = series
            .iter()
            .flat_map(|(_, values)| values.iter().copied())
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..(points - 1) as f64, 0f64..highest * 1.1)?;
        chart.configure_mesh().x_desc(x_label).y_desc("ms").draw()?;
        for (index, (name, values)) in series.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    values.iter().enumerate().map(|(x, y)| (x as f64, *y)),
                    color.stroke_width(2),
                ))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw(path).map_err(|error| anyhow!("drawing {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_series_back_from_a_report() {
        let report = "| policy | p50 ms | p90 ms | p99 ms | p99.9 ms | p99 / LR |\n|---|---|---|---|---|---|\n| a | 1.00 | 2.00 | 3.00 | 4.00 | 1.00 |\n| b | 1.50 | 2.50 | 3.50 | 4.50 | 1.17 |\n\nMachine\n\n| policy | envoy |\n|---|---|\n| a | 0.1 |\n\np99 ms per window\n\n| window | a | b |\n|---|---|---|\n| 0 | 3.10 | 3.60 |\n| 1 | 2.90 | 3.40 |\n";
        let series = series_from_report(report);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].quantiles, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(series[1].windows, [3.6, 3.4]);
        let with_errors = "| policy | p50 ms | p90 ms | p99 ms | non-2xx | client errors / timeouts | p99.9 ms |\n|---|---|---|---|---|---|---|\n| a | 1.00 | 2.00 | 3.00 | 0.5% | 0 / 0 | 4.00 |\n\n| window (errors %) | a |\n|---|---|\n| 0 | 9% |\n";
        let series = series_from_report(with_errors);
        assert_eq!(series[0].quantiles, [1.0, 2.0, 3.0, 4.0]);
        assert!(series[0].windows.is_empty());
    }
}
