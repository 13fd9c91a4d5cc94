//! The report as a self-contained HTML page: its figures and three charts drawn here as inline
//! SVG (orders per second and checkout → approved latency over the run, orders by final
//! status). Hand-written SVG: no script, no plotting dependency, and the page opens anywhere.

use super::report::{Interval, Latency, Report};

/// A chart's size in SVG units (the page scales it to its width).
const WIDTH: f64 = 880.0;
const HEIGHT: f64 = 320.0;
/// The plot area's margins: the title and legend above it, the tick labels and axis titles to
/// its left and below it.
const TOP: f64 = 56.0;
const RIGHT: f64 = 24.0;
const BOTTOM: f64 = 52.0;
const LEFT: f64 = 76.0;

const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif";
const INK: &str = "#1f2933";
const MUTED: &str = "#616e7c";
const GRID: &str = "#e4e7eb";
// The Okabe–Ito palette: told apart with any colour vision.
const BLUE: &str = "#0072b2";
const GREEN: &str = "#009e73";
const ORANGE: &str = "#e69f00";
const VERMILION: &str = "#d55e00";
const PURPLE: &str = "#cc79a7";
const GREY: &str = "#999999";

/// A series with at most this many points shows a dot on each (more would be a string of beads).
const MAX_DOTTED_POINTS: usize = 40;

/// The page: the headline figures, the charts, then every figure of the printed report.
pub fn html(report: &Report) -> String {
    let figures: String = report
        .rows()
        .iter()
        .map(|(name, value)| format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(name), escape(value)))
        .collect();
    let bots = report.bots.as_ref().map_or(String::new(), |b| format!(" · {} shopper bots", b.count));
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MallBots simulation report</title>
<style>
body {{ margin: 0; background: #f5f7fa; color: {INK}; font: 15px/1.45 {FONT}; }}
main {{ max-width: 960px; margin: 0 auto; padding: 24px 20px 40px; }}
h1 {{ font-size: 26px; margin: 0 0 4px; }}
h2 {{ font-size: 18px; margin: 28px 0 10px; }}
.run {{ color: {MUTED}; margin: 0 0 20px; overflow-wrap: anywhere; }}
.tiles {{ display: grid; grid-template-columns: repeat(3, 1fr); gap: 12px; }}
@media (max-width: 640px) {{ .tiles {{ grid-template-columns: 1fr 1fr; }} }}
.tile, figure, table {{ background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(31, 41, 51, .12); }}
.tile {{ padding: 12px 16px; }}
.tile .value {{ font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }}
.tile .name {{ color: {MUTED}; font-size: 13px; }}
.tile.bad .value {{ color: {VERMILION}; }}
figure {{ margin: 16px 0 0; padding: 8px 8px 12px; }}
figure svg {{ display: block; width: 100%; height: auto; }}
figcaption {{ color: {MUTED}; font-size: 13px; padding: 4px 12px 0; }}
table {{ width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }}
th, td {{ text-align: left; padding: 6px 14px; border-bottom: 1px solid {GRID}; vertical-align: top; }}
th {{ color: {MUTED}; font-weight: normal; white-space: nowrap; }}
td {{ overflow-wrap: anywhere; white-space: pre-wrap; }}
footer {{ color: {MUTED}; font-size: 13px; margin-top: 24px; }}
</style>
</head>
<body>
<main>
<h1>MallBots simulation report</h1>
<p class="run">{kiosks} kiosks · {admins} admins{bots} · {load:.1} s of load, {drain:.1} s of drain · {target}</p>
<div class="tiles">
{tiles}</div>
<h2>Over the run</h2>
<figure>
{orders}
<figcaption>Orders checked out and completed (and failed requests, if any) in each interval, per second.</figcaption>
</figure>
<figure>
{latency}
<figcaption>Checkout → approved of the orders approved in each interval (when a kiosk saw the approval).</figcaption>
</figure>
<h2>Outcome</h2>
<figure>
{statuses}
<figcaption>Where each placed order ended the run.</figcaption>
</figure>
<h2>Figures</h2>
<table>
{figures}</table>
<footer>Written by <code>mallbots simulate</code>; the same numbers, interval by interval, are in the JSON report beside this page.</footer>
</main>
</body>
</html>
"#,
        kiosks = report.kiosks,
        admins = report.admins,
        load = report.load_seconds,
        drain = report.drain_seconds,
        target = escape(&report.target),
        tiles = tiles(report),
        orders = orders_chart(report),
        latency = latency_chart(report),
        statuses = status_chart(report),
    )
}

/// The headline figures, large.
fn tiles(report: &Report) -> String {
    let percentiles = |l: &Latency| format!("{:.0} / {:.0}", l.p50, l.p95);
    let tiles = [
        ("orders/s (approved in load)", format!("{:.1}", report.orders_per_second), false),
        ("orders placed", report.orders.placed.to_string(), false),
        ("orders completed", report.final_status.completed.to_string(), false),
        ("checkout → approved, ms (p50 / p95)", percentiles(&report.checkout_to_approved_ms), false),
        ("checkout → completed, ms (p50 / p95)", percentiles(&report.checkout_to_completed_ms), false),
        ("errors", report.errors.total.to_string(), report.errors.total > 0),
    ];
    tiles
        .iter()
        .map(|(name, value, bad)| {
            format!(
                "<div class=\"tile{}\"><div class=\"value\">{}</div><div class=\"name\">{}</div></div>\n",
                if *bad { " bad" } else { "" },
                escape(value),
                escape(name)
            )
        })
        .collect()
}

/// The x axis of the charts over time, up to the end of the run.
fn time_axis(report: &Report) -> (String, f64) {
    let timeline = &report.timeline;
    let end = timeline.intervals.last().map_or(report.load_seconds, |i| i.start_seconds + i.seconds);
    (format!("seconds from the start of the load ({} s intervals)", timeline.interval_seconds), end)
}

/// A series over the run: `value` of each interval, at the interval's middle.
fn over_time<'a>(
    report: &Report,
    name: &'a str,
    color: &'a str,
    value: impl Fn(&Interval) -> Option<f64>,
) -> Series<'a> {
    let points = report.timeline.intervals.iter().map(|i| (i.start_seconds + i.seconds / 2.0, value(i))).collect();
    Series { name, color, points }
}

/// Events of an interval per second of it.
fn per_second(count: u64, interval: &Interval) -> Option<f64> {
    (interval.seconds > 0.0).then(|| count as f64 / interval.seconds)
}

fn orders_chart(report: &Report) -> String {
    let (x_title, x_end) = time_axis(report);
    let mut series = vec![
        over_time(report, "placed", BLUE, |i| per_second(i.placed, i)),
        over_time(report, "completed", GREEN, |i| per_second(i.completed, i)),
    ];
    if report.errors.total > 0 {
        series.push(over_time(report, "errors", VERMILION, |i| per_second(i.errors, i)));
    }
    line_chart(&LineChart {
        title: "Orders per second",
        x_title: &x_title,
        y_title: "per second",
        x_end,
        series,
        marker: Some((report.load_seconds, "load ends")),
    })
}

fn latency_chart(report: &Report) -> String {
    let (x_title, x_end) = time_axis(report);
    line_chart(&LineChart {
        title: "Checkout → approved latency",
        x_title: &x_title,
        y_title: "milliseconds",
        x_end,
        series: vec![
            over_time(report, "p50", BLUE, |i| i.approved_p50_ms),
            over_time(report, "p95", ORANGE, |i| i.approved_p95_ms),
        ],
        marker: Some((report.load_seconds, "load ends")),
    })
}

fn status_chart(report: &Report) -> String {
    let s = &report.final_status;
    bar_chart(
        "Orders by final status",
        "orders",
        &[
            Bar { label: "completed", value: s.completed, color: GREEN },
            Bar { label: "approved", value: s.approved, color: BLUE },
            Bar { label: "rejected", value: s.rejected, color: VERMILION },
            Bar { label: "other", value: s.other, color: PURPLE },
            Bar { label: "timed out", value: s.timeout, color: GREY },
        ],
    )
}

/// A line of a chart: (x, y) points; `None` where there is no value (the line breaks there).
#[derive(Debug)]
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, Option<f64>)>,
}

#[derive(Debug)]
struct LineChart<'a> {
    title: &'a str,
    x_title: &'a str,
    y_title: &'a str,
    /// The x axis reaches at least this far (the end of the run).
    x_end: f64,
    series: Vec<Series<'a>>,
    /// A labelled vertical line at this x.
    marker: Option<(f64, &'a str)>,
}

/// A line chart: axes from 0 with round ticks, a line per series (a dot on each point when
/// there are few), the legend above.
fn line_chart(chart: &LineChart<'_>) -> String {
    let value = |y: Option<f64>| y.filter(|y| y.is_finite());
    let (x_max, y_max) = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|&(x, y)| Some((x, value(y)?))))
        .fold((chart.x_end, 0.0_f64), |(x_max, y_max), (x, y)| (x_max.max(x), y_max.max(y)));
    let frame = Frame { x: Axis::time(x_max, 10), y: Axis::new(y_max, 5) };
    let legend: Vec<_> = chart.series.iter().map(|s| (s.name, s.color)).collect();
    let mut svg = open_svg(chart.title, &legend, HEIGHT);
    svg += &frame.y_grid(chart.y_title);
    svg += &frame.x_ticks(chart.x_title);
    if let Some((x, label)) = chart.marker.filter(|(x, _)| x.is_finite() && *x > 0.0 && *x <= frame.x.max()) {
        let at = frame.x(x);
        // Near the right edge (a short drain), the label ends at the line instead.
        let anchor = if at + 40.0 > WIDTH { "end" } else { "middle" };
        svg += &format!(
            "<line x1=\"{at:.1}\" y1=\"{top:.1}\" x2=\"{at:.1}\" y2=\"{bottom:.1}\" stroke=\"{MUTED}\" stroke-dasharray=\"4 4\"/>\n\
             <text x=\"{at:.1}\" y=\"{label_y:.1}\" text-anchor=\"{anchor}\" font-size=\"11\" fill=\"{MUTED}\">{}</text>\n",
            escape(label),
            top = TOP,
            bottom = HEIGHT - BOTTOM,
            label_y = TOP - 6.0,
        );
    }
    let mut drawn = 0;
    for series in &chart.series {
        let dotted = series.points.len() <= MAX_DOTTED_POINTS;
        for run in series.points.split(|&(_, y)| value(y).is_none()).filter(|run| !run.is_empty()) {
            let at: Vec<(f64, f64)> =
                run.iter().map(|&(x, y)| (frame.x(x), frame.y(value(y).unwrap_or_default()))).collect();
            if at.len() > 1 {
                let points: Vec<String> = at.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                svg += &format!(
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-linejoin=\"round\"/>\n",
                    points.join(" "),
                    series.color
                );
            }
            // A lone point has no line to show it.
            if dotted || at.len() == 1 {
                for (x, y) in &at {
                    svg += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"/>\n", series.color);
                }
            }
            drawn += at.len();
        }
    }
    if drawn == 0 {
        svg += &frame.no_data();
    }
    svg + "</svg>"
}

/// A bar of a bar chart.
#[derive(Debug)]
struct Bar<'a> {
    label: &'a str,
    value: u64,
    color: &'a str,
}

/// A bar chart: one bar per entry, its value and share above it, its label below.
fn bar_chart(title: &str, y_title: &str, bars: &[Bar<'_>]) -> String {
    let total: u64 = bars.iter().map(|b| b.value).sum();
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0);
    let frame = Frame { x: Axis::new(1.0, 1), y: Axis::new(max as f64, 5) };
    // No x axis title: the bottom margin's last line is not needed.
    let mut svg = open_svg(title, &[], HEIGHT - 20.0);
    svg += &frame.y_grid(y_title);
    let slot = (WIDTH - LEFT - RIGHT) / bars.len().max(1) as f64;
    let width = (slot * 0.6).min(120.0);
    for (index, bar) in bars.iter().enumerate() {
        let middle = LEFT + slot * (index as f64 + 0.5);
        let (top, bottom) = (frame.y(bar.value as f64), frame.y(0.0));
        let share = if total == 0 { 0.0 } else { bar.value as f64 * 100.0 / total as f64 };
        svg += &format!(
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{top:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" fill=\"{color}\" rx=\"2\"/>\n\
             <text x=\"{middle:.1}\" y=\"{value_y:.1}\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"600\">{value} <tspan font-weight=\"normal\" fill=\"{MUTED}\">({share:.0}%)</tspan></text>\n\
             <text x=\"{middle:.1}\" y=\"{label_y:.1}\" text-anchor=\"middle\" font-size=\"13\">{label}</text>\n",
            x = middle - width / 2.0,
            height = bottom - top,
            color = bar.color,
            value_y = top - 8.0,
            value = bar.value,
            label_y = bottom + 20.0,
            label = escape(bar.label),
        );
    }
    if bars.is_empty() {
        svg += &frame.no_data();
    }
    svg + "</svg>"
}

/// The start of a chart `height` high (at most [`HEIGHT`]): the root element, a white
/// background, the title, and the legend (a swatch and a name per entry) at the top right.
fn open_svg(title: &str, legend: &[(&str, &str)], height: f64) -> String {
    let title = escape(title);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" \
         role=\"img\" aria-label=\"{title}\" font-family=\"{FONT}\" font-size=\"12\" fill=\"{INK}\">\n\
         <title>{title}</title>\n\
         <rect width=\"{WIDTH}\" height=\"{height}\" fill=\"#fff\"/>\n\
         <text x=\"16\" y=\"28\" font-size=\"16\" font-weight=\"600\">{title}</text>\n"
    );
    // Right to left from the right edge; the width of a name is estimated (no font metrics).
    let mut right = WIDTH - RIGHT;
    for (name, color) in legend.iter().rev() {
        let text_width = name.chars().count() as f64 * 7.5;
        let x = right - text_width - 24.0;
        svg += &format!(
            "<line x1=\"{x:.1}\" y1=\"24\" x2=\"{:.1}\" y2=\"24\" stroke=\"{color}\" stroke-width=\"3\" stroke-linecap=\"round\"/>\n\
             <text x=\"{:.1}\" y=\"28\" font-size=\"13\">{}</text>\n",
            x + 16.0,
            x + 22.0,
            escape(name),
        );
        right = x - 18.0;
    }
    svg
}

/// A linear axis from 0, with ticks in round steps (1, 2, 2.5 or 5 × a power of ten; no 2.5 for
/// time).
#[derive(Debug)]
struct Axis {
    step: f64,
    /// Ticks after the one at 0.
    steps: usize,
    end: f64,
}

impl Axis {
    /// Up to the first tick at or above `max`, in at most `most` steps; from 0 to 1 when `max`
    /// is not a positive number (no data, or only zeros).
    fn new(max: f64, most: usize) -> Self {
        let (max, step) = Self::step(max, most, &[1.0, 2.0, 2.5, 5.0]);
        // The tolerance keeps float noise from adding a step (10 / 2 = 5.000…1).
        let steps = (max / step - 1e-9).ceil().max(1.0) as usize;
        Self { step, steps, end: step * steps as f64 }
    }

    /// Up to `max` seconds exactly (the end of a run), its ticks the round steps up to it.
    fn time(max: f64, most: usize) -> Self {
        let (max, step) = Self::step(max, most, &[1.0, 2.0, 5.0]);
        Self { step, steps: (max / step + 1e-9).floor() as usize, end: max }
    }

    /// `max` (1 when it is not a positive number) and the least step covering it in `most`
    /// steps among `round` × a power of ten.
    fn step(max: f64, most: usize, round: &[f64]) -> (f64, f64) {
        let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
        let rough = max / most.max(1) as f64;
        let power = 10_f64.powf(rough.log10().floor());
        let step = round.iter().map(|m| m * power).find(|&step| step >= rough * (1.0 - 1e-9)).unwrap_or(10.0 * power);
        (max, step)
    }

    fn max(&self) -> f64 {
        self.end
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        (0..=self.steps).map(|i| i as f64 * self.step)
    }

    /// A tick's label: as many decimals as the step needs, no trailing zeros (0, 2.5, 5).
    fn label(&self, value: f64) -> String {
        let decimals = (0..3)
            .find(|&d| {
                let scaled = self.step * 10_f64.powi(d);
                (scaled - scaled.round()).abs() < 1e-6
            })
            .unwrap_or(3) as usize;
        let label = format!("{value:.decimals$}");
        if decimals == 0 { label } else { label.trim_end_matches('0').trim_end_matches('.').to_owned() }
    }
}

/// The plot area and its two axes.
#[derive(Debug)]
struct Frame {
    x: Axis,
    y: Axis,
}

impl Frame {
    fn x(&self, value: f64) -> f64 {
        LEFT + value / self.x.max() * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, value: f64) -> f64 {
        HEIGHT - BOTTOM - value / self.y.max() * (HEIGHT - TOP - BOTTOM)
    }

    /// Horizontal grid lines at the y ticks, their labels, the y axis's title, the baseline.
    fn y_grid(&self, title: &str) -> String {
        let mut svg = String::new();
        for tick in self.y.ticks() {
            let y = self.y(tick);
            let stroke = if tick == 0.0 { MUTED } else { GRID };
            svg += &format!(
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{stroke}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{MUTED}\">{}</text>\n",
                WIDTH - RIGHT,
                LEFT - 8.0,
                y + 4.0,
                self.y.label(tick),
            );
        }
        let middle = (TOP + HEIGHT - BOTTOM) / 2.0;
        svg + &format!(
            "<text transform=\"translate(20 {middle:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"{MUTED}\">{}</text>\n",
            escape(title)
        )
    }

    /// Ticks and labels along the x axis, and its title.
    fn x_ticks(&self, title: &str) -> String {
        let bottom = HEIGHT - BOTTOM;
        let mut svg = String::new();
        for tick in self.x.ticks() {
            let x = self.x(tick);
            svg += &format!(
                "<line x1=\"{x:.1}\" y1=\"{bottom}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{MUTED}\"/>\n\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{MUTED}\">{}</text>\n",
                bottom + 5.0,
                bottom + 19.0,
                self.x.label(tick),
            );
        }
        svg + &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{MUTED}\">{}</text>\n",
            (LEFT + WIDTH - RIGHT) / 2.0,
            HEIGHT - 10.0,
            escape(title)
        )
    }

    fn no_data(&self) -> String {
        format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\" fill=\"{MUTED}\">no data</text>\n",
            (LEFT + WIDTH - RIGHT) / 2.0,
            (TOP + HEIGHT - BOTTOM) / 2.0
        )
    }
}

/// `text` for HTML or SVG content or attributes.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[Option<f64>]) -> Series<'static> {
        Series { name: "s", color: BLUE, points: values.iter().enumerate().map(|(x, &y)| (x as f64, y)).collect() }
    }

    fn chart(series: Vec<Series<'static>>) -> String {
        line_chart(&LineChart {
            title: "T",
            x_title: "x",
            y_title: "y",
            x_end: 0.0,
            series,
            marker: Some((1.5, "load ends")),
        })
    }

    /// The coordinates of every polyline's points.
    fn polylines(svg: &str) -> Vec<usize> {
        svg.split("<polyline points=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap_or_default().split(' ').count())
            .collect()
    }

    #[test]
    fn a_line_chart_draws_each_point_and_breaks_at_gaps() {
        let svg = chart(vec![series(&[Some(1.0), Some(4.0), Some(2.5), Some(3.0)])]);
        assert_eq!(polylines(&svg), [4]);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));

        // A gap splits the line; the lone point after it is a dot.
        let svg = chart(vec![series(&[Some(1.0), Some(2.0), None, Some(3.0)])]);
        assert_eq!(polylines(&svg), [2]);
        assert_eq!(svg.matches("<circle").count(), 3);

        // Many points: the line only.
        let svg = chart(vec![series(&[Some(1.0); MAX_DOTTED_POINTS + 1])]);
        assert_eq!(polylines(&svg), [MAX_DOTTED_POINTS + 1]);
        assert_eq!(svg.matches("<circle").count(), 0);
    }

    #[test]
    fn empty_flat_and_single_point_charts_are_drawn_without_nan() {
        for values in
            [&[][..], &[None, None], &[Some(0.0), Some(0.0)], &[Some(7.0)], &[Some(f64::NAN), Some(f64::INFINITY)]]
        {
            let svg = chart(vec![series(values)]);
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{values:?}: {svg}");
            let expected_dots = values.iter().filter(|v| v.is_some_and(f64::is_finite)).count();
            assert_eq!(svg.matches("<circle").count(), expected_dots, "{values:?}");
            assert_eq!(svg.contains("no data"), expected_dots == 0, "{values:?}");
        }
        let svg = chart(Vec::new());
        assert!(svg.contains("no data") && !svg.contains("NaN"));
    }

    #[test]
    fn a_bar_chart_has_a_bar_per_entry_even_at_zero() {
        let bars = [Bar { label: "done", value: 3, color: GREEN }, Bar { label: "<lost>", value: 0, color: GREY }];
        let svg = bar_chart("Status", "orders", &bars);
        assert_eq!(svg.matches("class=\"bar\"").count(), 2);
        assert!(svg.contains("&lt;lost&gt;") && !svg.contains("<lost>"));
        assert!(svg.contains(">3 <tspan") && svg.contains("(100%)"));
        let svg = bar_chart("Status", "orders", &[]);
        assert!(svg.contains("no data") && !svg.contains("NaN"));
    }

    #[test]
    fn axes_end_on_a_round_number_with_round_ticks() {
        let cases = [(9.3, 5, 2.0, 5), (10.0, 5, 2.0, 5), (0.42, 5, 0.1, 5), (0.0, 5, 0.2, 5), (1234.0, 8, 200.0, 7)];
        for (max, most, step, steps) in cases {
            let axis = Axis::new(max, most);
            assert!((axis.step - step).abs() < 1e-9 && axis.steps == steps, "{max}: {axis:?}");
        }
        let axis = Axis::new(11.0, 5);
        assert_eq!(axis.ticks().map(|t| axis.label(t)).collect::<Vec<_>>(), ["0", "2.5", "5", "7.5", "10", "12.5"]);
        assert_eq!(Axis::new(f64::NAN, 5).max(), 1.0);

        let time = Axis::time(100.6, 10);
        assert_eq!((time.max(), time.ticks().last()), (100.6, Some(100.0)));
        let time = Axis::time(16.5, 10);
        assert_eq!((time.step, time.steps), (2.0, 8));
        let time = Axis::time(0.0, 10);
        assert_eq!((time.max(), time.ticks().count()), (1.0, 11));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&#39;");
    }
}
