//! PNG figures over `plotters` with a bundled DejaVu Sans font (no system fontconfig/freetype).
//!
//! Two figure kinds cover the methods: a line plot with optional error bars and log axis
//! (spectra, loss curves, RMSEP-vs-N), and a grid of images with one colorbar each
//! (cube slices, ptychographic reconstructions).

use std::path::Path;
use std::sync::Once;

use ndarray::Array2;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::colors::colormaps::ViridisRGB;

use crate::error::SpxError;
use crate::io::atomic::with_atomic_path;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Register the bundled font under "sans-serif" (the family plotters asks for by default).
pub(crate) fn ensure_font() {
    REGISTER.call_once(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            // Registration only fails for malformed font bytes; the bundled file is checked by tests.
            let _ = plotters::style::register_font("sans-serif", style, FONT);
        }
    });
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    Line,
    Points,
    LineAndPoints,
}

/// One curve.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Symmetric 1σ error bars, drawn as vertical bars.
    pub yerr: Option<Vec<f64>>,
    pub mark: Mark,
}

impl Series {
    pub fn line(label: impl Into<String>, x: Vec<f64>, y: Vec<f64>) -> Self {
        Series {
            label: label.into(),
            x,
            y,
            yerr: None,
            mark: Mark::Line,
        }
    }

    pub fn points_with_errors(
        label: impl Into<String>,
        x: Vec<f64>,
        y: Vec<f64>,
        yerr: Vec<f64>,
    ) -> Self {
        Series {
            label: label.into(),
            x,
            y,
            yerr: Some(yerr),
            mark: Mark::Points,
        }
    }
}

/// A line plot.
#[derive(Clone, Debug)]
pub struct LinePlot {
    pub title: String,
    pub xlabel: String,
    pub ylabel: String,
    pub series: Vec<Series>,
    pub log_y: bool,
    pub size: (u32, u32),
    /// Legend in a column right of the axes (the image widens by [`LEGEND_WIDTH`]) instead of
    /// over the curves.
    pub legend_outside: bool,
}

/// Width in pixels of the legend column of `legend_outside` plots.
pub const LEGEND_WIDTH: u32 = 480;

impl LinePlot {
    pub fn new(
        title: impl Into<String>,
        xlabel: impl Into<String>,
        ylabel: impl Into<String>,
    ) -> Self {
        LinePlot {
            title: title.into(),
            xlabel: xlabel.into(),
            ylabel: ylabel.into(),
            series: Vec::new(),
            log_y: false,
            size: (1000, 600),
            legend_outside: false,
        }
    }
}

/// Colour scale of an image panel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColorMap {
    Viridis,
    Gray,
    /// Cyclic hue map for phases.
    Phase,
    /// Blue–white–red, symmetric about zero, for residuals.
    Diverging,
}

impl ColorMap {
    fn color(self, t: f64) -> RGBColor {
        let t = if t.is_finite() {
            t.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self {
            ColorMap::Viridis => ViridisRGB::get_color_normalized(t as f32, 0.0, 1.0),
            ColorMap::Gray => {
                let v = (t * 255.0).round() as u8;
                RGBColor(v, v, v)
            }
            ColorMap::Phase => {
                let c = HSLColor(t, 0.75, 0.5).to_rgba();
                RGBColor(c.0, c.1, c.2)
            }
            ColorMap::Diverging => {
                let (r, g, b) = if t < 0.5 {
                    let s = t / 0.5;
                    (s, s, 1.0)
                } else {
                    let s = (1.0 - t) / 0.5;
                    (1.0, s, s)
                };
                RGBColor((r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8)
            }
        }
    }
}

/// One image panel: `data[[row, col]]`, row 0 drawn at the top.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub data: Array2<f64>,
    pub cmap: ColorMap,
    /// Colour limits; `None` uses the finite data range (symmetric about 0 for Diverging).
    pub limits: Option<(f64, f64)>,
}

impl Panel {
    pub fn new(title: impl Into<String>, data: Array2<f64>, cmap: ColorMap) -> Self {
        Panel {
            title: title.into(),
            data,
            cmap,
            limits: None,
        }
    }

    fn range(&self) -> (f64, f64) {
        if let Some(l) = self.limits {
            return l;
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for &v in self.data.iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        if self.cmap == ColorMap::Diverging {
            let m = lo.abs().max(hi.abs()).max(f64::MIN_POSITIVE);
            return (-m, m);
        }
        if hi <= lo {
            return (lo - 0.5, hi + 0.5);
        }
        (lo, hi)
    }
}

/// A grid of image panels, each with its own colorbar.
#[derive(Clone, Debug)]
pub struct ImageGrid {
    pub title: String,
    pub panels: Vec<Panel>,
    pub ncols: usize,
    /// Pixel size of one panel cell (image + colorbar + titles).
    pub cell: (u32, u32),
}

fn perr(path: &Path, e: impl std::fmt::Display) -> SpxError {
    SpxError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    lo.is_finite().then_some((lo, hi))
}

fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// Compact tick label: plain decimals without trailing zeros in [1e-3, 1e5), else scientific.
pub fn tick(v: f64) -> String {
    // Axis steps like 0.1 accumulate rounding: a tick at -5.55e-17 is zero.
    if v.abs() < 1e-12 || !v.is_finite() {
        return if v.is_finite() {
            "0".into()
        } else {
            format!("{v}")
        };
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".to_string()
        } else {
            s.to_string()
        }
    } else {
        let s = format!("{v:.2e}");
        // 1.00e4 -> 1e4, 2.50e-7 -> 2.5e-7
        match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
            None => s,
        }
    }
}

// matplotlib's tab10, so ten series stay distinguishable.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

/// Render a line plot to a PNG at `path` (atomically).
pub fn line_plot(path: &Path, plot: &LinePlot) -> Result<(), SpxError> {
    ensure_font();
    let xr = finite_range(plot.series.iter().flat_map(|s| s.x.iter().copied()))
        .ok_or_else(|| perr(path, "no finite x values to plot"))?;
    let ys = plot.series.iter().flat_map(|s| {
        let e = s.yerr.clone().unwrap_or_else(|| vec![0.0; s.y.len()]);
        s.y.iter()
            .zip(e)
            .flat_map(|(&y, e)| [y - e, y + e])
            .collect::<Vec<_>>()
    });
    let ys: Vec<f64> = if plot.log_y {
        ys.filter(|v| *v > 0.0).collect()
    } else {
        ys.collect()
    };
    let yr =
        finite_range(ys.into_iter()).ok_or_else(|| perr(path, "no finite y values to plot"))?;
    let xr = padded(xr);
    with_atomic_path(path, |tmp| {
        let size = if plot.legend_outside {
            (plot.size.0 + LEGEND_WIDTH, plot.size.1)
        } else {
            plot.size
        };
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(path, e))?;
        let (area, legend) = if plot.legend_outside {
            let (a, b) = root.split_horizontally(plot.size.0);
            (a, Some(b))
        } else {
            (root.clone(), None)
        };
        if let Some(lg) = &legend {
            draw_legend_column(lg, plot, path)?;
        }
        let mut builder = ChartBuilder::on(&area);
        builder
            .caption(&plot.title, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(80);
        if plot.log_y {
            let (lo, hi) = (yr.0 / 1.5, yr.1 * 1.5);
            let mut chart = builder
                .build_cartesian_2d(xr.0..xr.1, (lo..hi).log_scale())
                .map_err(|e| perr(path, e))?;
            chart
                .configure_mesh()
                .x_desc(&plot.xlabel)
                .y_desc(&plot.ylabel)
                .x_label_formatter(&|v| tick(*v))
                .y_label_formatter(&|v| tick(*v))
                .label_style(("sans-serif", 16))
                .draw()
                .map_err(|e| perr(path, e))?;
            draw_series(&mut chart, plot, path)?;
        } else {
            let yr = padded(yr);
            let mut chart = builder
                .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
                .map_err(|e| perr(path, e))?;
            chart
                .configure_mesh()
                .x_desc(&plot.xlabel)
                .y_desc(&plot.ylabel)
                .x_label_formatter(&|v| tick(*v))
                .y_label_formatter(&|v| tick(*v))
                .label_style(("sans-serif", 16))
                .draw()
                .map_err(|e| perr(path, e))?;
            draw_series(&mut chart, plot, path)?;
        }
        root.present().map_err(|e| perr(path, e))?;
        Ok(())
    })
}

/// The legend of `plot` as a column of (line sample, label) entries in `area`.
fn draw_legend_column(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    plot: &LinePlot,
    path: &Path,
) -> Result<(), SpxError> {
    for (i, s) in plot.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let y = 70 + 26 * i as i32;
        area.draw(&PathElement::new(
            vec![(8, y), (36, y)],
            color.stroke_width(2),
        ))
        .map_err(|e| perr(path, e))?;
        if s.mark != Mark::Line {
            area.draw(&Circle::new((22, y), 3, color.filled()))
                .map_err(|e| perr(path, e))?;
        }
        area.draw(&Text::new(
            s.label.clone(),
            (44, y - 8),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(|e| perr(path, e))?;
    }
    Ok(())
}

fn draw_series<'a, Y>(
    chart: &mut ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    plot: &LinePlot,
    path: &Path,
) -> Result<(), SpxError>
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    for (i, s) in plot.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> =
            s.x.iter()
                .zip(&s.y)
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!plot.log_y || **y > 0.0))
                .map(|(&x, &y)| (x, y))
                .collect();
        if let Some(err) = &s.yerr {
            let bars: Vec<_> =
                s.x.iter()
                    .zip(&s.y)
                    .zip(err)
                    .filter(|((x, y), e)| x.is_finite() && y.is_finite() && e.is_finite())
                    .map(|((&x, &y), &e)| {
                        let lo = if plot.log_y {
                            (y - e).max(y * 1e-3)
                        } else {
                            y - e
                        };
                        ErrorBar::new_vertical(x, lo, y, y + e, color.mix(0.6).stroke_width(1), 4)
                    })
                    .collect();
            chart.draw_series(bars).map_err(|e| perr(path, e))?;
        }
        let anno = match s.mark {
            Mark::Line | Mark::LineAndPoints => chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| perr(path, e))?,
            Mark::Points => chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| perr(path, e))?,
        };
        anno.label(&s.label).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
        });
        if s.mark == Mark::LineAndPoints {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| perr(path, e))?;
        }
    }
    if plot.legend_outside {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| perr(path, e))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &Panel,
    path: &Path,
) -> Result<(), SpxError> {
    let (h, w) = panel.data.dim();
    let (lo, hi) = panel.range();
    let (img_area, bar_area) = area.split_horizontally(area.dim_in_pixel().0 as i32 - 100);
    let mut chart = ChartBuilder::on(&img_area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(25)
        .y_label_area_size(35)
        .build_cartesian_2d(0.0..w as f64, h as f64..0.0)
        .map_err(|e| perr(path, e))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .label_style(("sans-serif", 12))
        .x_labels(5)
        .y_labels(5)
        .draw()
        .map_err(|e| perr(path, e))?;
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    chart
        .draw_series(panel.data.indexed_iter().map(|((r, c), &v)| {
            let color = if v.is_finite() {
                panel.cmap.color((v - lo) / span)
            } else {
                RGBColor(200, 200, 200)
            };
            Rectangle::new(
                [(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)],
                color.filled(),
            )
        }))
        .map_err(|e| perr(path, e))?;
    // Colorbar: a 1-wide strip of 128 steps with its own value axis.
    let mut bar = ChartBuilder::on(&bar_area)
        .margin_top(36)
        .margin_bottom(33)
        .margin_left(8)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, lo..hi)
        .map_err(|e| perr(path, e))?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .label_style(("sans-serif", 12))
        .y_label_formatter(&|v| tick(*v))
        .y_labels(6)
        .draw()
        .map_err(|e| perr(path, e))?;
    let steps = 128;
    bar.draw_series((0..steps).map(|i| {
        let a = lo + span * i as f64 / steps as f64;
        let b = lo + span * (i + 1) as f64 / steps as f64;
        Rectangle::new(
            [(0.0, a), (1.0, b)],
            panel.cmap.color((i as f64 + 0.5) / steps as f64).filled(),
        )
    }))
    .map_err(|e| perr(path, e))?;
    Ok(())
}

/// Render an image grid to a PNG at `path` (atomically).
pub fn image_grid(path: &Path, grid: &ImageGrid) -> Result<(), SpxError> {
    ensure_font();
    if grid.panels.is_empty() {
        return Err(perr(path, "no panels to draw"));
    }
    let ncols = grid.ncols.clamp(1, grid.panels.len());
    let nrows = grid.panels.len().div_ceil(ncols);
    let size = (grid.cell.0 * ncols as u32, grid.cell.1 * nrows as u32 + 40);
    with_atomic_path(path, |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(path, e))?;
        let root = root
            .titled(&grid.title, ("sans-serif", 24))
            .map_err(|e| perr(path, e))?;
        let cells = root.split_evenly((nrows, ncols));
        for (panel, cell) in grid.panels.iter().zip(cells.iter()) {
            draw_panel(cell, panel, path)?;
        }
        root.present().map_err(|e| perr(path, e))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::tick;

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(350.0), "350");
        assert_eq!(tick(0.0001), "1e-4");
        assert_eq!(tick(25000.0), "25000");
        assert_eq!(tick(1.0e9), "1e9");
        assert_eq!(tick(-2.5e-7), "-2.5e-7");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(-5.55e-17), "0");
    }
}
