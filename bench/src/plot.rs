//! `--plot FILE.svg`: latency by percentile, drawn as HdrHistogram's plotter draws it —
//! the x axis is "one in N" (1/(1-percentile)) on a log scale, so p90, p99, p99.9 are
//! evenly spaced and the tail gets the room it deserves — one curve per system.
//! Latency is on a log scale too, so systems a hundred times apart fit one picture.
//! Hand-written SVG: no plotting library for one chart.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::report::HGRM_TICKS_PER_HALF_DISTANCE;

/// Picture size in SVG user units (pixels when shown as is).
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 540.0;
/// Plot-area margins: room for axis labels left and below, the legend right.
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 200.0;
const MARGIN_TOP: f64 = 50.0;
const MARGIN_BOTTOM: f64 = 60.0;
/// The x axis spans at least 99% and at most 99.9999%; within that, as far as the
/// largest sample count resolves (1,000 samples say nothing of p99.99).
const X_DECADES_MIN: u32 = 2;
const X_DECADES_MAX: u32 = 6;
/// Curve colours, one per system, in order (colour-blind-safe palette).
const COLOURS: [&str; 6] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The percentile label of decade `d` on the x axis: 0%, 90%, 99%, 99.9%, ...
fn x_label(d: u32) -> String {
    match d {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        _ => format!("99.{}%", "9".repeat(d as usize - 2)).replace("99.%", "99%"),
    }
}

/// A latency label for 10^e milliseconds.
fn y_label(e: i32) -> String {
    let ms = 10f64.powi(e);
    if ms >= 1000.0 {
        format!("{} s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{ms} ms")
    } else {
        format!("{} µs", ms * 1000.0)
    }
}

/// The SVG for `series` (label, latency histogram in microseconds).
pub fn svg(title: &str, series: &[(String, &Histogram<u64>)]) -> String {
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let with_data: Vec<&(String, &Histogram<u64>)> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let count_max = with_data.iter().map(|(_, h)| h.len()).max().unwrap_or(1);
    let x_decades = ((count_max as f64).log10().ceil() as u32).clamp(X_DECADES_MIN, X_DECADES_MAX);
    let log_ms = |us: u64| (us.max(1) as f64 / 1000.0).log10();
    let y_lo = with_data.iter().map(|(_, h)| log_ms(h.min())).fold(f64::INFINITY, f64::min);
    let y_hi = with_data.iter().map(|(_, h)| log_ms(h.max())).fold(f64::NEG_INFINITY, f64::max);
    let (e_lo, e_hi) = if with_data.is_empty() {
        (-1, 1)
    } else {
        let lo = y_lo.floor() as i32;
        (lo, (y_hi.ceil() as i32).max(lo + 1))
    };
    let x_of = |decades: f64| MARGIN_LEFT + decades.min(f64::from(x_decades)) / f64::from(x_decades) * plot_w;
    let y_of = |log: f64| MARGIN_TOP + plot_h - (log - f64::from(e_lo)) / f64::from(e_hi - e_lo) * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and axis labels.
    for d in 0..=x_decades {
        let x = x_of(f64::from(d));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{MARGIN_TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            MARGIN_TOP + plot_h,
            MARGIN_TOP + plot_h + 18.0,
            x_label(d)
        );
    }
    for e in e_lo..=e_hi {
        let y = y_of(f64::from(e));
        let _ = writeln!(
            out,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            MARGIN_LEFT + plot_w,
            MARGIN_LEFT - 8.0,
            y + 4.0,
            y_label(e)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1-p))</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        out,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (log scale)</text>"#,
        MARGIN_TOP + plot_h / 2.0,
        MARGIN_TOP + plot_h / 2.0
    );
    // Curves and legend.
    for (i, (label, h)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let ly = MARGIN_TOP + 10.0 + 22.0 * i as f64;
        let lx = MARGIN_LEFT + plot_w + 16.0;
        let legend = if h.is_empty() { format!("{label} (no data)") } else { label.clone() };
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&legend)
        );
        if h.is_empty() {
            continue;
        }
        let mut points = String::new();
        for v in h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
            let q = v.quantile_iterated_to();
            let decades = if q < 1.0 { (1.0 / (1.0 - q)).log10() } else { f64::from(x_decades) };
            let _ = write!(points, "{:.1},{:.1} ", x_of(decades), y_of(log_ms(v.value_iterated_to())));
        }
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn labels() {
        assert_eq!(x_label(0), "0%");
        assert_eq!(x_label(1), "90%");
        assert_eq!(x_label(2), "99%");
        assert_eq!(x_label(4), "99.99%");
        assert_eq!(y_label(0), "1 ms");
        assert_eq!(y_label(-1), "100 µs");
        assert_eq!(y_label(3), "1 s");
    }

    #[test]
    fn one_curve_per_series_and_a_legend_for_each() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=10_000u64 {
            a.record(v).unwrap();
            b.record(v * 10).unwrap();
        }
        let empty = new_histogram();
        let s = svg("a <b> & c", &[("skiff".into(), &a), ("redis".into(), &b), ("etcd".into(), &empty)]);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("etcd (no data)"));
        assert!(s.contains("a &lt;b&gt; &amp; c"));
        assert!(s.contains(">99.99%<"), "10,000 samples reach p99.99");
    }
}
