//! Line charts as SVG files (plotters' SVG backend; text is laid out without system fonts).

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub colour: RGBColor,
    pub dashed: bool,
}

/// A few colours that stay apart in print; series of one depth share one.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_y: bool,
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

impl Chart<'_> {
    /// Draws `series` to an 800x500 SVG at `path`.
    pub fn draw(&self, path: &Path, series: &[Series]) -> PlotResult {
        let points = series.iter().flat_map(|s| s.points.iter());
        let (mut x_max, mut y_min, mut y_max) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points.filter(|(_, y)| y.is_finite() && (!self.log_y || *y > 0.0)) {
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
        if !y_min.is_finite() {
            (y_min, y_max) = (1.0, 10.0);
        }
        let x_range = 0f64..x_max;

        let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        if self.log_y {
            // Whole decades around the data, so the axis reads as powers of ten.
            let (lo, hi) = (10f64.powf(y_min.log10().floor()), 10f64.powf(y_max.log10().ceil()));
            self.draw_on(&root, x_range, (lo..hi).log_scale(), series)?;
        } else {
            let pad = 0.05 * (y_max - y_min).max(1e-3);
            self.draw_on(&root, x_range, (y_min - pad).max(0.0)..y_max + pad, series)?;
        }
        root.present().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Axes, then one line per series, then the legend.
    fn draw_on<Y>(
        &self,
        root: &DrawingArea<SVGBackend<'_>, Shift>,
        x_range: Range<f64>,
        y_range: Y,
        series: &[Series],
    ) -> PlotResult
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| e.to_string())?;
        let whole_numbers = |x: &f64| format!("{x:.0}");
        let powers_of_ten = |y: &f64| format!("{y:.0e}");
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_label).y_desc(self.y_label).x_label_formatter(&whole_numbers);
        if self.log_y {
            mesh.y_label_formatter(&powers_of_ten);
        }
        mesh.draw().map_err(|e| e.to_string())?;
        for s in series {
            let style = ShapeStyle::from(&s.colour).stroke_width(2);
            let points = s.points.iter().copied().filter(|(_, y)| y.is_finite() && (!self.log_y || *y > 0.0));
            let colour = s.colour;
            if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, style))
                    .map_err(|e| e.to_string())?
                    .label(s.label.clone())
                    .legend(move |(x, y)| {
                        EmptyElement::at((x, y))
                            + PathElement::new(vec![(0, 0), (8, 0)], colour.stroke_width(2))
                            + PathElement::new(vec![(12, 0), (20, 0)], colour.stroke_width(2))
                    });
            } else {
                chart
                    .draw_series(LineSeries::new(points, style))
                    .map_err(|e| e.to_string())?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
