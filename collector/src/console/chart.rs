//! Server-side SVG charts: no script, no inline style (colours are
//! presentation attributes and classes from the stylesheet), a title and
//! description for screen readers, and the figures as a table beside each
//! chart in the page.

use std::fmt::Write;

/// A bar chart of `values` (one per label), with an optional horizontal
/// reference line (e.g. the 60-minute requirement) drawn at `line`.
pub fn bars(title: &str, labels: &[String], values: &[f64], line: Option<(f64, &str)>) -> String {
    const W: f64 = 640.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 44.0;
    const BOTTOM: f64 = 24.0;
    const TOP: f64 = 10.0;
    let highest = values
        .iter()
        .copied()
        .chain(line.map(|(y, _)| y))
        .fold(1.0_f64, f64::max);
    // Gridlines at whole, round steps (1, 2, 5 × 10ⁿ), four of them.
    let step = nice_step(highest / 4.0);
    let max = step * 4.0;
    let plot_w = W - LEFT - 6.0;
    let plot_h = H - BOTTOM - TOP;
    let n = values.len().max(1) as f64;
    let slot = plot_w / n;
    let y_of = |v: f64| TOP + plot_h - (v / max) * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">{}</title>"#,
        escape(title)
    );
    // Axis and a few gridlines with their values.
    for line_no in 0..=4 {
        let v = step * f64::from(line_no);
        let y = y_of(v);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - 6.0,
            LEFT - 4.0,
            y + 4.0,
            v.round()
        );
    }
    for (i, v) in values.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let y = y_of(*v);
        let h = (TOP + plot_h - y).max(0.0);
        let label = labels.get(i).map_or("", |s| s.as_str());
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}"><title>{}: {}</title></rect>"#,
            slot * 0.7,
            escape(label),
            v.round()
        );
        // Every seventh label, so they stay legible; the last one ends at
        // its bar so it is not cut off.
        let last = i + 1 == values.len();
        if i % 7 == 0 || last {
            let _ = write!(
                svg,
                r#"<text class="axis" x="{:.1}" y="{}" text-anchor="{}">{}</text>"#,
                if last {
                    x + slot * 0.7
                } else {
                    x + slot * 0.35
                },
                H - 6.0,
                if last { "end" } else { "middle" },
                escape(label)
            );
        }
    }
    if let Some((value, name)) = line {
        let y = y_of(value);
        let _ = write!(
            svg,
            r#"<line class="threshold" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="threshold-label" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - 6.0,
            W - 8.0,
            y - 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The smallest of 1, 2, 5, 10, 20, 50 … at least `raw` (at least 1).
fn nice_step(raw: f64) -> f64 {
    let mut step = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if step * m >= raw {
                return step * m;
            }
        }
        step *= 10.0;
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_bar_per_value_the_line_and_escaped_labels() {
        let labels: Vec<String> = (1..=28).map(|d| format!("<{d}>")).collect();
        let values: Vec<f64> = (1..=28).map(f64::from).collect();
        let svg = bars("Minutes & more", &labels, &values, Some((60.0, "60 min")));
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 28);
        assert!(svg.contains("class=\"threshold\""));
        assert!(svg.contains("Minutes &amp; more"));
        assert!(!svg.contains("<1>") && svg.contains("&lt;1&gt;"));
        assert!(!svg.contains("style="), "no inline style under the CSP");
        assert_eq!(
            (nice_step(0.25), nice_step(3.0), nice_step(15.0)),
            (1.0, 5.0, 20.0)
        );
        assert!(
            svg.contains(">60<") || svg.contains(">80<"),
            "round gridlines: {svg}"
        );
    }
}
