//! The figures of `bench stragglers`, one of each per k: each
//! configuration's latency tail (median to p99.99, log scale) at one load
//! (the first seed's run), and p99.9 against load (the median over seeds,
//! with a bar from the lowest to the highest).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::spread::Spread;
use super::stragglers::Report;
use crate::eval::plot::{PlotError, draw_err, register_font};

/// Quantile q on the tail axis: its number of nines (p90 = 1, p99.9 = 3).
fn nines(q: f64) -> f64 {
    -(1.0 - q).log10()
}

fn label(nines: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-nines));
    // Rounded first: -log10(1 - 0.9999) is 4.000000000000001.
    let digits = ((nines * 1e6).round() / 1e6 - 2.0).ceil().max(0.0) as usize;
    format!("p{q:.digits$}")
}

/// Latency against quantile for every configuration of group size `k` at
/// one load (`Report::levels`), in the first seed's runs.
pub fn tail(report: &Report, level: f64, k: usize, out: &Path) -> Result<(), PlotError> {
    let seed = report.seeds.first().copied().unwrap_or_default();
    let rows: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.level() == level && r.config.k == k && r.seed == seed)
        .collect();
    let points = |r: &super::stragglers::Row| -> Vec<(f64, f64)> {
        r.tail
            .iter()
            .filter(|(q, _)| *q < 1.0)
            .map(|&(q, us)| (nines(q), us.max(1) as f64 / 1000.0))
            .collect()
    };
    let all: Vec<(f64, f64)> = rows.iter().flat_map(|r| points(r)).collect();
    if all.is_empty() {
        return Err(PlotError::Empty);
    }
    register_font()?;
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let y_min = all.iter().map(|p| p.1).fold(f64::MAX, f64::min) / 1.5;
    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "k = {k}: latency tail at {}, {}% of {} ms windows slow ({:?})",
                report.level_label(level),
                report.slow_probability * 100.0,
                report.window_ms,
                report.mode
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(nines(0.5)..x_max + 0.1, (y_min..y_max).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("quantile")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|x| label(*x))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(draw_err)?;
    for (i, row) in rows.iter().enumerate() {
        line(&mut chart, i, &row.config.name, points(row), false)?;
    }
    finish(chart, &root)
}

/// A chart of these figures: linear x, latency on a log y axis.
type Chart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, LogCoord<f64>>>;

/// Series `i` of a figure, with its legend entry (and a dot per point).
fn line(
    chart: &mut Chart<'_>,
    i: usize,
    name: &str,
    points: Vec<(f64, f64)>,
    dots: bool,
) -> Result<(), PlotError> {
    let color = Palette99::pick(i).to_rgba();
    let style = ShapeStyle::from(&color).stroke_width(2);
    chart
        .draw_series(LineSeries::new(points.clone(), style))
        .map_err(draw_err)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    if dots {
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(draw_err)?;
    }
    Ok(())
}

/// The legend, then the file.
fn finish(
    mut chart: Chart<'_>,
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)
}

/// p99.9 against offered load, one line per configuration of group size
/// `k`: the median over seeds, a bar over their range.
pub fn load(report: &Report, k: usize, out: &Path) -> Result<(), PlotError> {
    let rows: Vec<_> = report.rows.iter().filter(|r| r.config.k == k).collect();
    let levels = report.levels();
    if levels.len() < 2 || rows.is_empty() {
        return Err(PlotError::Empty);
    }
    register_font()?;
    let mut names: Vec<&str> = Vec::new();
    for r in &rows {
        if !names.contains(&r.config.name.as_str()) {
            names.push(&r.config.name);
        }
    }
    let ms = |us: u64| us.max(1) as f64 / 1000.0;
    let y_max = rows
        .iter()
        .map(|r| ms(r.latency.p999_us))
        .fold(1.0, f64::max)
        * 1.5;
    let y_min = rows
        .iter()
        .map(|r| ms(r.latency.p999_us))
        .fold(f64::MAX, f64::min)
        / 1.5;
    let x_min = levels.iter().copied().fold(f64::MAX, f64::min);
    let x_max = levels.iter().copied().fold(0.0, f64::max);
    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("k = {k}: p99.9 latency against offered load"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min * 0.9..x_max * 1.05, (y_min..y_max).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(if report.loads.is_empty() {
            "offered load (requests/s, Poisson)"
        } else {
            "offered load (share of equal-resources capacity, Poisson)"
        })
        .y_desc("p99.9 (ms, log scale)")
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(draw_err)?;
    for (i, name) in names.iter().enumerate() {
        let mut spreads: Vec<(f64, Spread)> = Vec::new();
        for &level in levels {
            let p999 = rows
                .iter()
                .filter(|r| r.config.name == *name && r.level() == level)
                .map(|r| ms(r.latency.p999_us));
            if let Some(s) = Spread::of(p999) {
                spreads.push((level, s));
            }
        }
        spreads.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(spreads.iter().filter(|(_, s)| s.max > s.min).map(|(x, s)| {
                PathElement::new(vec![(*x, s.min), (*x, s.max)], color.stroke_width(2))
            }))
            .map_err(draw_err)?;
        let medians = spreads.iter().map(|(x, s)| (*x, s.median)).collect();
        line(&mut chart, i, name, medians, true)?;
    }
    finish(chart, &root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_axis_labels_name_the_quantiles() {
        assert_eq!(label(nines(0.5)), "p50");
        assert_eq!(label(nines(0.9)), "p90");
        assert_eq!(label(nines(0.99)), "p99");
        assert_eq!(label(nines(0.999)), "p99.9");
        assert_eq!(label(nines(0.9999)), "p99.99");
    }
}
