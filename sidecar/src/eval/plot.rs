//! The accuracy figure of docs/accuracy.md: accuracy against k for the base
//! model (available), the parity models (degraded) and the untrained floor.

use std::path::Path;

use plotters::prelude::*;

use super::report::EvalReport;

/// A TrueType font from Debian's fonts-dejavu-core, loaded at run time.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(
        "cannot read the font {FONT} ({0}): install it with `apt-get install fonts-dejavu-core`"
    )]
    Font(std::io::Error),
    #[error("nothing to plot")]
    Empty,
    #[error("drawing failed: {0}")]
    Draw(String),
}

pub(crate) fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Registers the font once per process (plotters keeps a `'static` slice).
pub(crate) fn register_font() -> Result<(), PlotError> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let bytes: &'static [u8] = Box::leak(
        std::fs::read(FONT)
            .map_err(PlotError::Font)?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| PlotError::Draw("invalid font".into()))?;
    let _ = DONE.set(());
    Ok(())
}

/// Plots one series per (arch, encoder) for degraded accuracy, plus the
/// available accuracy and the floor of each arch, against k.
pub fn plot_accuracy(reports: &[EvalReport], out: &Path) -> Result<(), PlotError> {
    if reports.is_empty() {
        return Err(PlotError::Empty);
    }
    register_font()?;
    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let k_max = reports.iter().map(|r| r.k).max().unwrap_or(2) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Fashion-MNIST: accuracy with one prediction lost per group",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(1.8f64..k_max + 0.2, 0f64..100f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("k (queries per coding group)")
        .y_desc("test accuracy (%)")
        .x_labels(k_max as usize)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(draw_err)?;

    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut push = |name: String, k: usize, v: f64| {
        let pt = (k as f64, v * 100.0);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, pts)) => pts.push(pt),
            None => series.push((name, vec![pt])),
        }
    };
    for r in reports {
        push(
            format!("{} available (no loss)", r.arch),
            r.k,
            r.available_accuracy,
        );
        push(
            format!("{} {} degraded (parity model)", r.arch, r.encoder),
            r.k,
            r.degraded.overall,
        );
        push(
            format!("{} {} floor (base as parity)", r.arch, r.encoder),
            r.k,
            r.floor.overall,
        );
    }
    for (i, (name, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts.dedup_by(|a, b| a.0 == b.0);
        let color = Palette99::pick(i).to_rgba();
        let dashed = name.contains("floor");
        let style = ShapeStyle::from(&color).stroke_width(if dashed { 1 } else { 2 });
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(draw_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}
