//! The SVG plot of a run: open connections and the message (or byte) rate over time.

use std::path::PathBuf;

use crate::load::thousands;
use crate::progress::Sample;
use crate::run::Run;

/// Samples a plotted rate is averaged over.
const RATE_WINDOW: usize = 3;

impl Run {
    /// Where the plot goes: `--plot`, or `<target>/stress.svg` beside the build.
    fn plot_path(&self) -> PathBuf {
        if let Some(p) = &self.o.plot {
            return p.clone();
        }
        // <target>/<profile>/examples/stress -> <target>/stress.svg
        let target = self
            .exe
            .parent()
            .filter(|d| d.file_name().is_some_and(|n| n == "examples"))
            .and_then(|d| d.parent()?.parent());
        match target {
            Some(t) => t.join("stress.svg"),
            None => PathBuf::from("stress.svg"),
        }
    }

    /// Writes the plot and says where (or why not).
    pub fn write_plot(&self, rate_label: &str, bytes_rate: bool, marks: &[(f64, &str)]) {
        let path = self.plot_path();
        match plot(
            &path,
            &self.samples,
            rate_label,
            bytes_rate,
            marks,
            self.o.connections,
        ) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => eprintln!("stress: could not write the plot {}: {e}", path.display()),
        }
    }
}

/// Open connections (left axis) and the message or byte rate (right axis) over time.
pub fn plot(
    path: &std::path::Path,
    samples: &[Sample],
    rate_label: &str,
    bytes_rate: bool,
    marks: &[(f64, &str)],
    connections: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    // Averaged over RATE_WINDOW samples, plotted at the middle of the window.
    let rates: Vec<(f64, f64)> = samples
        .windows(RATE_WINDOW + 1)
        .map(|w| {
            let (a, b) = (w[0], w[RATE_WINDOW]);
            let dt = (b.t - a.t).max(1e-3);
            let v = if bytes_rate {
                b.bytes.saturating_sub(a.bytes) as f64 / dt / 1e6
            } else {
                b.msgs.saturating_sub(a.msgs) as f64 / dt
            };
            ((a.t + b.t) / 2.0, v)
        })
        .collect();
    let t_max = samples.last().map_or(1.0, |s| s.t).max(0.5);
    let open_max = samples.iter().map(|s| s.open).max().unwrap_or(0).max(1) as f64;
    let rate_max = rates.iter().map(|r| r.1).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "greenhub stress: {} connections held open at once",
                thousands(connections as u64)
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(72)
        .right_y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, 0.0..open_max * 1.1)?
        .set_secondary_coord(0.0..t_max, 0.0..rate_max * 1.1);
    let count = |v: &f64| thousands(v.max(0.0).round() as u64);
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("open connections")
        .y_label_formatter(&count)
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc(rate_label)
        .y_label_formatter(&count)
        .draw()?;
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t, s.open as f64)),
            blue.stroke_width(2),
        ))?
        .label("open connections (servers' count)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(rates, red.stroke_width(2)))?
        .label(rate_label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
    for &(t, label) in marks {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(t, 0.0), (t, open_max * 1.1)],
            BLACK.mix(0.4),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            label.to_string(),
            (t, open_max * 1.05),
            ("sans-serif", 14),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
