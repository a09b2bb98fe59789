//! The pieces every page dr writes is made of: escaping, durations in words, the house style,
//! and the inline SVG chart of a measure against its objective. Shared by the drill report
//! page ([`crate::drill::html`]), the evidence bundle's index pages ([`crate::evidence`]) and
//! the web console ([`crate::api::console`]). Pages are self-contained: inline CSS and SVG, no
//! scripts.

use std::fmt::Write;

/// `s` safe inside HTML text and quoted attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// "2 min 5 s" for people.
pub fn human(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{seconds:.1} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The house style (inside `<style>`).
pub const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#1f2328}\
     .banner{padding:1.2em 1.5em;border-radius:8px;color:#fff}\
     .banner h1{margin:0;font-size:1.8em} .banner p{margin:.3em 0 0}\
     .pass{background:#1a7f37} .fail{background:#cf222e} .untrusted{background:#9a6700}\
     table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em} th,td{text-align:left;padding:.45em .6em;border-bottom:1px solid #d0d7de;vertical-align:top}\
     .sub{color:#59636e;font-size:.85em;font-weight:normal} .ok{color:#1a7f37} .bad{color:#cf222e} .warn{color:#9a6700}\
     h2{margin-top:1.6em;border-bottom:2px solid #d0d7de;padding-bottom:.2em} code{font-size:.9em}\
     .charts{display:flex;gap:1em} .charts figure{flex:1;margin:0} .summary{font-size:1.1em;margin:1em 0}\
     nav{display:flex;gap:1.2em;padding:.6em 0;border-bottom:1px solid #d0d7de;margin-bottom:1em} nav .who{margin-left:auto}\
     td.verdict-pass{color:#fff;background:#1a7f37} td.verdict-fail{color:#fff;background:#cf222e} td.verdict-untrusted{color:#fff;background:#9a6700}";

/// A whole page: `title`, the house style, and `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{}</title>\
         <meta name=viewport content='width=device-width,initial-scale=1'><style>{STYLE}</style></head><body>{body}</body></html>",
        esc(title)
    )
}

/// How a point of a chart is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Green.
    Pass,
    /// Red.
    Fail,
    /// Amber: not evidence.
    Untrusted,
}

impl Mark {
    fn color(self) -> &'static str {
        match self {
            Self::Pass => "#1a7f37",
            Self::Fail => "#cf222e",
            Self::Untrusted => "#9a6700",
        }
    }
}

/// One SVG panel: a measure (`None`: not measured, drawn at 0) over points oldest first,
/// against `objective` (dashed).
pub fn panel(points: &[(Option<f64>, Mark)], objective: f64, title: &str, color: &str) -> String {
    let max = points
        .iter()
        .filter_map(|p| p.0)
        .fold(objective, f64::max)
        .max(1e-3)
        * 1.15;
    let (w, h, pad) = (440.0, 200.0, 36.0);
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (points.len().max(2) - 1) as f64;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / max;
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.0.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
        .collect();
    let title = esc(title);
    let mut svg = format!(
        "<figure><figcaption><b>{title}</b></figcaption><svg viewBox='0 0 {w} {h}' width='100%' role=img aria-label='{title} of the last {n} drills'>\
         <line x1={pad} y1={b} x2={r} y2={b} stroke='#999'/><text x=2 y={t} font-size=11>{top}</text><text x=2 y={b} font-size=11>0</text>\
         <line x1={pad} y1={oy:.1} x2={r} y2={oy:.1} stroke='{color}' stroke-dasharray='4 4'/>\
         <text x={r} y={ty:.1} font-size=11 text-anchor=end fill='{color}'>objective {obj}</text>\
         <polyline fill=none stroke='{color}' stroke-width=2 points='{pts}'/>",
        n = points.len(),
        b = h - pad,
        r = w - pad,
        t = pad,
        top = human(max),
        oy = y(objective),
        ty = y(objective) - 4.0,
        obj = human(objective),
        pts = line.join(" ")
    );
    for (i, p) in points.iter().enumerate() {
        let _ = write!(
            svg,
            "<circle cx={:.1} cy={:.1} r=4 fill='{}'/>",
            x(i),
            y(p.0.unwrap_or(0.0)),
            p.1.color()
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_text_and_attributes() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_panel_draws_every_point_in_its_colour() {
        let svg = panel(
            &[
                (Some(1.0), Mark::Pass),
                (None, Mark::Fail),
                (Some(3.0), Mark::Untrusted),
            ],
            2.0,
            "RTO <x>",
            "#000",
        );
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("#cf222e") && svg.contains("#9a6700"));
        assert!(svg.contains("RTO &lt;x&gt;"));
        // The point not measured is not on the line.
        assert_eq!(
            svg.split("points='")
                .nth(1)
                .unwrap()
                .split('\'')
                .next()
                .unwrap()
                .split(' ')
                .count(),
            2
        );
    }
}
