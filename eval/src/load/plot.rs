//! `load.png`: output tokens/s and TTFT (p50, p99) against the load level, two panels.
//!
//! Text needs a TrueType font: `--font`, `$GOVLM_EVAL_FONT`, or a common system font (DejaVu
//! Sans, Liberation Sans, Noto Sans). Without one the chart is drawn without text.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::stats::LevelResult;

/// System fonts tried in order when none is given.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// The font file to use: `explicit`, else `$GOVLM_EVAL_FONT`, else the first system font
/// found.
pub fn find_font(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("GOVLM_EVAL_FONT") {
        return Some(PathBuf::from(p));
    }
    FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Registers the font as plotters' `sans-serif`. Plotters keeps registered fonts for the whole
/// process and needs `'static` bytes, so the file's bytes are leaked once per call (one chart
/// per run).
///
/// Errors: the file cannot be read or is not a font.
fn register(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read font {}: {e}", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", path.display()))
}

/// Draws the chart to `out` (PNG, 1200×500 pixels).
///
/// `x_name` names the level axis (`concurrency` or `requests/s`). Levels are placed evenly,
/// labelled with their concurrency or rate. `font` is a TrueType file for the text; `None`
/// draws no text.
///
/// Errors: font unusable, drawing or PNG encoding fails.
pub fn draw(
    levels: &[LevelResult],
    x_name: &str,
    out: &Path,
    font: Option<&Path>,
) -> anyhow::Result<()> {
    let text = match font {
        Some(p) => {
            register(p)?;
            true
        }
        None => false,
    };
    let labels: Vec<String> = levels
        .iter()
        .map(|l| match (l.concurrency, l.request_rate) {
            (Some(c), _) => c.to_string(),
            (None, Some(r)) => format!("{r}"),
            (None, None) => "inf".to_string(),
        })
        .collect();
    let root = BitMapBackend::new(out, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let tput: Vec<f64> = levels.iter().map(|l| l.output_throughput).collect();
    let p50: Vec<f64> = levels
        .iter()
        .map(|l| l.ttft_ms.map(|s| s.p50).unwrap_or(f64::NAN))
        .collect();
    let p99: Vec<f64> = levels
        .iter()
        .map(|l| l.ttft_ms.map(|s| s.p99).unwrap_or(f64::NAN))
        .collect();
    panel(
        &panels[0],
        "Output tokens/s",
        x_name,
        "tokens/s",
        &labels,
        &[("output tokens/s", &tput, BLUE)],
        text,
    )?;
    panel(
        &panels[1],
        "Time to first token",
        x_name,
        "ms",
        &labels,
        &[("TTFT p50", &p50, GREEN), ("TTFT p99", &p99, RED)],
        text,
    )?;
    root.present()?;
    Ok(())
}

type Series<'a> = (&'a str, &'a [f64], RGBColor);

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    x_name: &str,
    y_name: &str,
    labels: &[String],
    series: &[(&str, &Vec<f64>, RGBColor)],
    text: bool,
) -> anyhow::Result<()> {
    let series: Vec<Series> = series
        .iter()
        .map(|(n, v, c)| (*n, v.as_slice(), *c))
        .collect();
    let n = labels.len().max(1);
    let y_max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let mut builder = ChartBuilder::on(area);
    builder.margin(15);
    if text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(45)
            .y_label_area_size(65);
    } else {
        builder.x_label_area_size(10).y_label_area_size(10);
    }
    let mut chart = builder.build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0f64..y_max)?;
    {
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh();
        if text {
            let fmt = |x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            };
            mesh.x_desc(x_name)
                .y_desc(y_name)
                .x_labels(n * 4 + 1)
                .x_label_formatter(&fmt)
                .label_style(("sans-serif", 15))
                .draw()?;
        } else {
            mesh.x_labels(0).y_labels(0).draw()?;
        }
    }
    for (name, values, color) in &series {
        let pts: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| (i as f64, *v))
            .collect();
        let color = *color;
        let drawn = chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        if text {
            drawn.label(*name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::{aggregate, Level, RequestResult};

    fn levels() -> Vec<LevelResult> {
        [1usize, 2, 4, 8]
            .iter()
            .map(|&c| {
                let r = RequestResult {
                    ttft: Some(0.01 * c as f64),
                    e2e: 0.1 * c as f64,
                    output_tokens: 10,
                    usage_reported: true,
                    ..Default::default()
                };
                aggregate(
                    Level::Concurrency(c),
                    &vec![r; c],
                    0.1 * c as f64,
                    (0, 0),
                    None,
                )
            })
            .collect()
    }

    fn is_png(p: &Path) -> bool {
        std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
    }

    #[test]
    fn draws_a_png_with_and_without_text() {
        let dir = std::env::temp_dir().join(format!("govlm-eval-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain.png");
        draw(&levels(), "concurrency", &plain, None).unwrap();
        assert!(is_png(&plain));
        if let Some(font) = find_font(None) {
            let with_text = dir.join("text.png");
            draw(&levels(), "concurrency", &with_text, Some(&font)).unwrap();
            assert!(is_png(&with_text));
        }
        let bad = dir.join("not-a-font.ttf");
        std::fs::write(&bad, b"nope").unwrap();
        assert!(draw(&levels(), "concurrency", &dir.join("x.png"), Some(&bad)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
