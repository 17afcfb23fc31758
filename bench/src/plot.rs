//! Line charts as SVG, written by hand (no plotting dependency): a grid of
//! panels, each with labelled axes, ticks, one line per series and a
//! legend. The y axis always starts at 0, so a cost that grows linearly
//! with its driver is a straight line through the origin's neighbourhood
//! on a linear x axis.

use std::fmt::Write as _;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points: points.into_iter().filter(|(x, y)| x.is_finite() && y.is_finite()).collect(),
        }
    }
}

pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// log10 x axis (for drivers spanning decades: 1k, 10k, 100k).
    pub log_x: bool,
    /// Horizontal dashed lines: (y, label), a target.
    pub targets: Vec<(f64, String)>,
}

impl Panel {
    pub fn new(title: &str, x_label: &str, y_label: &str, log_x: bool, series: Vec<Series>) -> Panel {
        Panel { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), series, log_x, targets: vec![] }
    }

    /// Adds a dashed horizontal line at `y`, labelled.
    pub fn target(mut self, y: f64, label: &str) -> Panel {
        self.targets.push((y, label.into()));
        self
    }
}

const W: f64 = 460.0;
const H: f64 = 350.0;
const LEFT: f64 = 74.0;
const RIGHT: f64 = 18.0;
const TOP: f64 = 34.0;
/// x ticks and label, then up to 3 legend rows.
const BOTTOM: f64 = 98.0;
const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" step (1, 2, 2.5 or 5 times a power of ten) for about `n` ticks
/// up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p)
}

/// A tick value, short: 1500 -> "1.5k", 0.25 -> "0.25".
pub fn short(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    };
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e3 {
        format!("{}k", trim(format!("{:.2}", v / 1e3)))
    } else if a >= 10.0 || a == 0.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

fn panel(out: &mut String, p: &Panel, ox: f64, oy: f64) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let xs: Vec<f64> = p.series.iter().flat_map(|s| s.points.iter().map(|(x, _)| *x)).collect();
    let ys: Vec<f64> = p.series.iter().flat_map(|s| s.points.iter().map(|(_, y)| *y)).collect();
    let _ = writeln!(
        out,
        r#"<g transform="translate({ox},{oy})"><rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" font-size="14" font-weight="bold" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(&p.title)
    );
    if xs.is_empty() {
        let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="middle">no data</text></g>"#, W / 2.0, H / 2.0);
        return;
    }
    let fx = |x: f64| if p.log_x { x.max(1e-9).log10() } else { x };
    let (mut x0, mut x1) =
        (xs.iter().cloned().map(fx).fold(f64::MAX, f64::min), xs.iter().cloned().map(fx).fold(f64::MIN, f64::max));
    if p.log_x {
        x0 -= 0.15;
        x1 += 0.15;
    } else {
        x0 = 0.0;
        x1 *= 1.05;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let ymax = ys.iter().chain(p.targets.iter().map(|(y, _)| y)).cloned().fold(0.0, f64::max);
    let step = if ymax > 0.0 { nice_step(ymax, 5.0) } else { 1.0 };
    let y1 = ((ymax / step).ceil().max(1.0)) * step;
    let px = |x: f64| LEFT + (fx(x) - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - y / y1 * ph;
    // Grid and y ticks.
    let mut t = 0.0;
    while t <= y1 + step / 2.0 {
        let y = py(t);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            short(t)
        );
        t += step;
    }
    // x ticks: at the measured points on a log axis, round steps on a
    // linear one.
    let ticks: Vec<f64> = if p.log_x {
        let mut t = xs.clone();
        t.sort_by(f64::total_cmp);
        t.dedup();
        t
    } else {
        let step = nice_step(x1 / 1.05, 5.0);
        (0..).map(|i| i as f64 * step).take_while(|t| *t <= x1).collect()
    };
    let mut last_px = f64::MIN;
    for x in ticks {
        let xp = px(x);
        let _ =
            writeln!(out, r##"<line x1="{xp:.1}" y1="{TOP}" x2="{xp:.1}" y2="{:.1}" stroke="#f0f0f0"/>"##, TOP + ph);
        if xp - last_px >= 26.0 {
            let _ = writeln!(
                out,
                r#"<text x="{xp:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                TOP + ph + 16.0,
                short(x)
            );
            last_px = xp;
        }
    }
    for (y, label) in &p.targets {
        let yp = py(*y);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yp:.1}" x2="{:.1}" y2="{yp:.1}" stroke="#555" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
            LEFT + pw,
            LEFT + pw - 4.0,
            yp - 4.0,
            esc(label)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        TOP + ph,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    let xl = if p.log_x { format!("{} (log scale)", p.x_label) } else { p.x_label.clone() };
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        TOP + ph + 36.0,
        esc(&xl)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(16,{:.1}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        esc(&p.y_label)
    );
    // Lines, points, legend.
    for (i, s) in p.series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = writeln!(out, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, path.join(" "));
        for (x, y) in &pts {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"><title>{}: {} at {}</title></circle>"#,
                px(*x),
                py(*y),
                esc(&s.name),
                short(*y),
                short(*x)
            );
        }
        if p.series.len() > 1 || !s.name.is_empty() {
            let ly = TOP + ph + 58.0 + i as f64 * 15.0;
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{c}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                LEFT + 10.0,
                ly - 4.0,
                LEFT + 26.0,
                ly,
                esc(&s.name)
            );
        }
    }
    let _ = writeln!(out, "</g>");
}

/// The panels in a grid of `cols` columns, under `title`.
pub fn render(title: &str, panels: &[Panel], cols: usize) -> String {
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols);
    let (w, h) = (W * cols as f64, 30.0 + H * rows as f64);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="16" font-weight="bold" text-anchor="middle">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        panel(&mut out, p, (i % cols) as f64 * W, 30.0 + (i / cols) as f64 * H);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_labels() {
        assert_eq!(nice_step(38.0, 5.0), 10.0);
        assert_eq!(nice_step(4.2, 5.0), 1.0);
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(100000.0), "100k");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(12.0), "12");
    }

    #[test]
    fn an_svg_with_every_panel_and_label() {
        let p = Panel::new(
            "RSS",
            "pods",
            "MiB",
            false,
            vec![Series::new("a", vec![(10.0, 1.0), (100.0, 2.0)]), Series::new("b", vec![(10.0, f64::NAN)])],
        );
        let q = Panel::new("log", "connections", "ns", true, vec![Series::new("", vec![(1e3, 5.0), (1e5, 7.0)])])
            .target(50.0, "target 50");
        let svg = render("t <1>", &[p, q], 2);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains(">pods<") && svg.contains(">MiB<"));
        assert!(svg.contains("connections (log scale)") && svg.contains(">100k<"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("stroke-dasharray") && svg.contains(">target 50<"));
    }
}
