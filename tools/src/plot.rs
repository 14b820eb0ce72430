//! `corewal plot`: draws one or more `corewal load --report-file` reports
//! as an SVG picture — throughput, append latency, WAL bytes on disk and
//! resident memory over time, one panel each, the reports overlaid.

use std::path::{Path, PathBuf};

use clap::Args;
use plotters::prelude::*;

use crate::load::Interval;

/// Arguments of `corewal plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Reports written by `corewal load --report-file` (one JSON object per interval
    /// and line); several are drawn over each other, named by their file names.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Title above the panels. Default: the report file names.
    #[arg(long)]
    title: Option<String>,
    /// Width and height in pixels.
    #[arg(long, default_value_t = 1000)]
    width: u32,
    #[arg(long, default_value_t = 1100)]
    height: u32,
}

/// Most intervals a report may hold (a day of 1 s intervals and then some):
/// a larger file is refused before it is read whole.
const INTERVALS_MAX: usize = 200_000;
/// Largest report file read.
const REPORT_BYTES_MAX: u64 = 64 << 20;

/// One report: its name and its intervals.
struct Report {
    name: String,
    intervals: Vec<Interval>,
}

fn read_report(path: &Path) -> Result<Report, Box<dyn std::error::Error>> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > REPORT_BYTES_MAX {
        return Err(format!(
            "{}: {len} bytes; reports of at most {REPORT_BYTES_MAX} bytes are drawn",
            path.display()
        )
        .into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut intervals = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at: Interval = serde_json::from_str(line).map_err(|e| {
            format!(
                "{} line {}: not an interval of `corewal load --report-file`: {e}",
                path.display(),
                i + 1
            )
        })?;
        if !(at.t_s.is_finite() && at.appends_per_s.is_finite()) {
            return Err(
                format!("{} line {}: a figure is not finite", path.display(), i + 1).into(),
            );
        }
        intervals.push(at);
        if intervals.len() > INTERVALS_MAX {
            return Err(format!("{}: more than {INTERVALS_MAX} intervals", path.display()).into());
        }
    }
    if intervals.is_empty() {
        return Err(format!("{}: no intervals", path.display()).into());
    }
    let name = path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    Ok(Report { name, intervals })
}

pub fn run(args: PlotArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !(200..=10_000).contains(&args.width) || !(200..=10_000).contains(&args.height) {
        return Err("--width and --height must be 200..=10000 pixels".into());
    }
    let reports: Vec<Report> = args
        .reports
        .iter()
        .map(|p| read_report(p))
        .collect::<Result<_, _>>()?;
    let title = args.title.clone().unwrap_or_else(|| {
        reports
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(" vs ")
    });
    draw(&args.out, (args.width, args.height), &title, &reports)
        .map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("corewal plot: wrote {}", args.out.display());
    Ok(())
}

/// A series of a panel: its name and how an interval gives its value.
type Series = (&'static str, fn(&Interval) -> f64);

/// A panel: its caption, its axis label, and the series each report gives.
struct Panel {
    caption: &'static str,
    unit: &'static str,
    series: &'static [Series],
}

const PANELS: [Panel; 4] = [
    Panel {
        caption: "throughput",
        unit: "appends/s",
        series: &[("appends/s", |i| i.appends_per_s)],
    },
    Panel {
        caption: "append latency",
        unit: "µs",
        series: &[("p50", |i| i.p50_us), ("p99", |i| i.p99_us)],
    },
    Panel {
        caption: "WAL bytes on disk (all shards)",
        unit: "MiB",
        series: &[("WAL", |i| i.wal_bytes as f64 / (1 << 20) as f64)],
    },
    Panel {
        caption: "resident memory",
        unit: "MiB",
        series: &[("RSS", |i| i.rss_bytes as f64 / (1 << 20) as f64)],
    },
];

fn draw(
    out: &Path,
    size: (u32, u32),
    title: &str,
    reports: &[Report],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(out, size).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let t_max = reports
        .iter()
        .flat_map(|r| r.intervals.iter().map(|i| i.t_s))
        .fold(1.0_f64, f64::max);
    for (panel, area) in PANELS.iter().zip(root.split_evenly((PANELS.len(), 1))) {
        let y_max = reports
            .iter()
            .flat_map(|r| r.intervals.iter())
            .flat_map(|i| panel.series.iter().map(move |(_, f)| f(i)))
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(panel.caption, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(panel.unit)
            .draw()?;
        let mut color = 0;
        for r in reports {
            for (name, value) in panel.series {
                let style = Palette99::pick(color).stroke_width(2);
                color += 1;
                // The warm-up records no latencies, nor does an interval in
                // which no append returned: those are left out of the
                // latency panel rather than drawn as zeros.
                let latency = panel.unit == "µs";
                let points = r
                    .intervals
                    .iter()
                    .filter(|i| !(latency && (i.warmup || i.appends_per_s == 0.0)))
                    .map(|i| (i.t_s, value(i)));
                let label = if reports.len() > 1 {
                    format!("{} {name}", r.name)
                } else {
                    (*name).to_string()
                };
                chart
                    .draw_series(LineSeries::new(points, style))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
