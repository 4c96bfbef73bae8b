//! Inline SVG charts for the HTML report: stacked areas, bars, 100 % bars and a cumulative line with a
//! band. Hand-written SVG keeps the report one self-contained file (no script library, no network).

use std::fmt::Write as _;

pub const PALETTE: [&str; 10] =
    ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac", "#e15759"];

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" tick step for a range 0..max with about `n` ticks.
fn nice_step(max: f64, n: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let f = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    f * mag
}

pub fn money(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("${:.0}", v)
    } else if v.abs() >= 10.0 {
        format!("${v:.1}")
    } else {
        format!("${v:.2}")
    }
}

pub fn count(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}B", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A plot area with a y axis from 0 to `max` (nice rounded) and x from 0 to `n` slots.
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    ymax: f64,
    step: f64,
}

impl Frame {
    fn new(w: f64, h: f64, max: f64) -> Frame {
        let step = nice_step(max, 5.0);
        let ymax = ((max / step).ceil() * step).max(step);
        Frame { w, h, left: 70.0, right: 20.0, top: 16.0, bottom: 36.0, ymax, step }
    }
    fn y(&self, v: f64) -> f64 {
        self.h - self.bottom - (v / self.ymax) * (self.h - self.top - self.bottom)
    }
    fn x(&self, frac: f64) -> f64 {
        self.left + frac * (self.w - self.left - self.right)
    }
    fn axes(&self, out: &mut String, fmt: fn(f64) -> String) {
        let mut v = 0.0;
        while v <= self.ymax + self.step * 0.01 {
            let y = self.y(v);
            let _ = write!(
                out,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#555">{}</text>"##,
                self.left,
                self.w - self.right,
                self.left - 6.0,
                y + 4.0,
                esc(&fmt(v))
            );
            v += self.step;
        }
        let _ = write!(
            out,
            r##"<line x1="{l:.1}" x2="{l:.1}" y1="{t:.1}" y2="{b:.1}" stroke="#888"/><line x1="{l:.1}" x2="{r:.1}" y1="{b:.1}" y2="{b:.1}" stroke="#888"/>"##,
            l = self.left,
            r = self.w - self.right,
            t = self.top,
            b = self.h - self.bottom
        );
    }
    fn x_label(&self, out: &mut String, frac: f64, text: &str) {
        let x = self.x(frac);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#888"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="#555">{}</text>"##,
            self.h - self.bottom,
            self.h - self.bottom + 4.0,
            self.h - self.bottom + 17.0,
            esc(text)
        );
    }
}

fn open(out: &mut String, id: &str, w: f64, h: f64, title: &str) {
    let _ = write!(
        out,
        r##"<svg id="{id}" class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title>"##,
        t = esc(title)
    );
}

fn legend(names: &[String], colors: &[&str]) -> String {
    let mut s = String::from(r#"<div class="legend">"#);
    for (n, c) in names.iter().zip(colors) {
        let _ = write!(s, r#"<span><i style="background:{c}"></i>{}</span>"#, esc(n));
    }
    s.push_str("</div>");
    s
}

/// A marker on a time series: slot index, label, and a CSS class.
pub struct Marker {
    pub slot: usize,
    pub label: String,
    pub class: &'static str,
}

/// Stacked areas over `slots` time slots; `layers` are (name, value per slot); `x_labels` are (slot, text).
pub fn stacked_area(
    id: &str,
    title: &str,
    slots: usize,
    layers: &[(String, Vec<f64>)],
    x_labels: &[(usize, String)],
    markers: &[Marker],
) -> String {
    let (w, h) = (960.0, 340.0);
    let mut totals = vec![0.0; slots];
    for (_, v) in layers {
        for (t, x) in totals.iter_mut().zip(v) {
            *t += x;
        }
    }
    let max = totals.iter().cloned().fold(0.0, f64::max);
    let f = Frame::new(w, h, max);
    let mut out = String::new();
    open(&mut out, id, w, h, title);
    f.axes(&mut out, money);
    let frac = |i: usize| if slots <= 1 { 0.5 } else { i as f64 / (slots - 1) as f64 };
    let mut base = vec![0.0; slots];
    for (k, (name, vals)) in layers.iter().enumerate() {
        let mut d = String::new();
        for (i, b) in base.iter().enumerate() {
            let top = b + vals.get(i).copied().unwrap_or(0.0);
            let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, f.x(frac(i)), f.y(top));
        }
        for i in (0..slots).rev() {
            let _ = write!(d, "L{:.1},{:.1}", f.x(frac(i)), f.y(base[i]));
        }
        d.push('Z');
        let _ = write!(
            out,
            r##"<path class="area" d="{d}" fill="{}" fill-opacity="0.85" stroke="none"><title>{}</title></path>"##,
            PALETTE[k % PALETTE.len()],
            esc(name)
        );
        for (b, v) in base.iter_mut().zip(vals) {
            *b += v;
        }
    }
    for (slot, text) in x_labels {
        f.x_label(&mut out, frac(*slot), text);
    }
    for m in markers {
        let (x, y) = (f.x(frac(m.slot)), f.y(totals.get(m.slot).copied().unwrap_or(0.0)));
        let anchor = if x > w * 0.7 { "end" } else { "start" };
        let dx = if anchor == "end" { -10.0 } else { 10.0 };
        let _ = write!(
            out,
            r##"<g class="{c}"><circle cx="{x:.1}" cy="{y:.1}" r="7" fill="none" stroke="#d62728" stroke-width="2.5"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}" font-size="12" font-weight="bold" fill="#d62728">{l}</text><title>{l}</title></g>"##,
            x + dx,
            (y + 4.0).max(f.top + 12.0),
            c = m.class,
            l = esc(&m.label)
        );
    }
    out.push_str("</svg>");
    let names: Vec<String> = layers.iter().map(|(n, _)| n.clone()).collect();
    let colors: Vec<&str> = (0..names.len()).map(|k| PALETTE[k % PALETTE.len()]).collect();
    out + &legend(&names, &colors)
}

/// Horizontal bars: (label, value, text shown after the bar).
pub fn hbars(id: &str, title: &str, items: &[(String, f64, String)]) -> String {
    let row = 26.0;
    let (w, h) = (960.0, 24.0 + row * items.len().max(1) as f64);
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max).max(1e-9);
    let (lw, bw) = (300.0, 380.0);
    let mut out = String::new();
    open(&mut out, id, w, h, title);
    for (i, (label, v, text)) in items.iter().enumerate() {
        let y = 12.0 + i as f64 * row;
        let len = (v / max * bw).max(1.0);
        let short: String = label.chars().take(44).collect();
        let _ = write!(
            out,
            r##"<g class="bar"><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12" fill="#333">{}</text><rect x="{lw}" y="{y:.1}" width="{len:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12" fill="#333">{}</text><title>{}</title></g>"##,
            lw - 8.0,
            y + 14.0,
            esc(&short),
            row - 8.0,
            PALETTE[0],
            lw + len + 6.0,
            y + 14.0,
            esc(text),
            esc(label)
        );
    }
    out.push_str("</svg>");
    out
}

/// 100 % stacked horizontal bars: rows of (label, value per class), with the class names.
pub fn mix_bars(id: &str, title: &str, classes: &[&str], rows: &[(String, Vec<f64>)]) -> String {
    let row = 28.0;
    let (w, h) = (960.0, 24.0 + row * rows.len().max(1) as f64);
    let (lw, bw) = (180.0, 740.0);
    let mut out = String::new();
    open(&mut out, id, w, h, title);
    for (i, (label, vals)) in rows.iter().enumerate() {
        let y = 12.0 + i as f64 * row;
        let total: f64 = vals.iter().sum();
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12" fill="#333">{}</text>"##,
            lw - 8.0,
            y + 15.0,
            esc(label)
        );
        let mut x = lw;
        for (k, v) in vals.iter().enumerate() {
            if total <= 0.0 || *v <= 0.0 {
                continue;
            }
            let len = v / total * bw;
            let _ = write!(
                out,
                r##"<rect class="mix" x="{x:.1}" y="{y:.1}" width="{len:.1}" height="{:.1}" fill="{}"><title>{}: {} tokens ({:.1} %)</title></rect>"##,
                row - 8.0,
                PALETTE[k % PALETTE.len()],
                esc(classes[k]),
                count(*v),
                v / total * 100.0
            );
            x += len;
        }
    }
    out.push_str("</svg>");
    let names: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
    let colors: Vec<&str> = (0..names.len()).map(|k| PALETTE[k % PALETTE.len()]).collect();
    out + &legend(&names, &colors)
}

/// A month of cumulative spend: actual (days 0..actual.len()), forecast point with its interval after
/// the last actual day, and horizontal budget lines. All values are cumulative USD per day of the month.
pub struct Cumulative<'a> {
    pub days: usize,
    pub actual: &'a [f64],
    pub point: &'a [f64],
    pub lower: &'a [f64],
    pub upper: &'a [f64],
    pub budgets: &'a [(String, f64)],
    pub day_label: &'a dyn Fn(usize) -> String,
}

pub fn cumulative(id: &str, title: &str, c: &Cumulative) -> String {
    let (w, h) = (960.0, 340.0);
    let max =
        c.actual.iter().chain(c.upper).chain(c.point).copied().chain(c.budgets.iter().map(|b| b.1)).fold(0.0, f64::max);
    let f = Frame::new(w, h, max * 1.05);
    let mut out = String::new();
    open(&mut out, id, w, h, title);
    f.axes(&mut out, money);
    let days = c.days.max(2);
    // x of the end of day i (cumulative at day end)
    let x = |i: usize| f.x((i + 1) as f64 / days as f64);
    let x0 = f.x(0.0);
    let n = c.actual.len();
    if !c.point.is_empty() {
        let start_v = c.actual.last().copied().unwrap_or(0.0);
        let start_x = if n == 0 { x0 } else { x(n - 1) };
        let mut d = format!("M{start_x:.1},{:.1}", f.y(start_v));
        for (i, u) in c.upper.iter().enumerate() {
            let _ = write!(d, "L{:.1},{:.1}", x(n + i), f.y(*u));
        }
        for (i, l) in c.lower.iter().enumerate().rev() {
            let _ = write!(d, "L{:.1},{:.1}", x(n + i), f.y(*l));
        }
        d.push('Z');
        let _ = write!(
            out,
            r##"<path class="forecast-band" d="{d}" fill="#f28e2b" fill-opacity="0.25" stroke="none"><title>80 % interval of the forecast</title></path>"##
        );
        let mut d = format!("M{start_x:.1},{:.1}", f.y(start_v));
        for (i, p) in c.point.iter().enumerate() {
            let _ = write!(d, "L{:.1},{:.1}", x(n + i), f.y(*p));
        }
        let _ = write!(
            out,
            r##"<path class="forecast-line" d="{d}" fill="none" stroke="#f28e2b" stroke-width="2.5" stroke-dasharray="6 4"><title>forecast (point)</title></path>"##
        );
    }
    if n > 0 {
        let mut d = format!("M{x0:.1},{:.1}", f.y(0.0));
        for (i, v) in c.actual.iter().enumerate() {
            let _ = write!(d, "L{:.1},{:.1}", x(i), f.y(*v));
        }
        let _ = write!(
            out,
            r##"<path class="actual-line" d="{d}" fill="none" stroke="#4e79a7" stroke-width="3"><title>month to date (actual)</title></path>"##
        );
    }
    for (name, v) in c.budgets {
        let y = f.y(*v);
        let _ = write!(
            out,
            r##"<g class="budget-line"><line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#d62728" stroke-width="2" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12" fill="#d62728">budget {} {}</text></g>"##,
            f.left,
            w - f.right,
            w - f.right - 4.0,
            y - 5.0,
            esc(name),
            money(*v)
        );
    }
    let step = if days > 16 { 5 } else { 1 };
    for i in (0..days).filter(|i| (i + 1) % step == 0 || *i == 0) {
        f.x_label(&mut out, (i + 1) as f64 / days as f64, &(c.day_label)(i));
    }
    out.push_str("</svg>");
    out + &legend(
        &["month to date".into(), "forecast (80 % interval)".into(), "budget".into()],
        &["#4e79a7", "#f28e2b", "#d62728"],
    )
}
