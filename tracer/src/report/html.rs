//! The HTML report: one self-contained file (no network fetches) with the verdict, a chart of
//! outstanding bytes and RSS over time with the top growers as their own lines, the leak
//! flamegraph, and the top-stacks table.

use std::io::{self, Write};

use serde::Serialize;

use super::{
    Report, Stack, flamegraph,
    text::{
        class_name, describe_classes, describe_frame, describe_scan, folded_note, severity_name,
    },
};
use crate::units::{human_bytes, human_duration, human_rate};

/// Growers drawn as their own lines in the chart.
const CHART_GROWERS: usize = 5;
/// Stacks in the table.
const TABLE_STACKS: usize = 25;

/// One line of the chart.
#[derive(Serialize)]
struct Series {
    name: String,
    /// (seconds, bytes)
    points: Vec<(f64, u64)>,
}

/// The page's style sheet.
const STYLE: &str = r##"body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1240px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; }
.meta { color: #666; margin-bottom: 16px; }
.verdict { padding: 12px 16px; border-radius: 6px; font-size: 16px; margin-bottom: 20px; }
.verdict.leak { background: #fde8e8; border: 1px solid #e0a0a0; }
.verdict.ok { background: #e8f6ea; border: 1px solid #a0d0a8; }
.totals span { margin-right: 18px; }
#chart svg { width: 100%; height: 340px; background: #fafafa; border: 1px solid #ddd; }
#chart .axis { stroke: #999; } #chart .grid { stroke: #e4e4e4; }
#chart text { font-size: 11px; fill: #555; }
.legend span { display: inline-block; margin: 6px 16px 0 0; }
.legend i { display: inline-block; width: 14px; height: 4px; margin-right: 6px; vertical-align: middle; }
iframe { width: 100%; height: 420px; border: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; }
.leak-class { color: #b00; font-weight: 600; }
details pre { margin: 4px 0; font-size: 12px; white-space: pre-wrap; }
"##;

/// The page's script: draws the chart from the series, and says what the embedded flamegraph
/// rendered.
const SCRIPT: &str = r##"(function () {
  var series = JSON.parse(document.getElementById("series").textContent);
  var colors = ["#1f5fbf", "#7f7f7f", "#d62728", "#ff7f0e", "#9467bd", "#2ca02c", "#8c564b"];
  function human(b) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : Math.round(b)) + " " + u[i];
  }
  var W = 1200, H = 340, L = 80, R = 20, T = 16, B = 36;
  var maxT = 0, maxV = 0;
  series.forEach(function (s) { s.points.forEach(function (p) { maxT = Math.max(maxT, p[0]); maxV = Math.max(maxV, p[1]); }); });
  if (maxT <= 0) maxT = 1; if (maxV <= 0) maxV = 1;
  var ns = "http://www.w3.org/2000/svg";
  var svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  function el(name, attrs, text) {
    var e = document.createElementNS(ns, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e); return e;
  }
  function x(t) { return L + (W - L - R) * t / maxT; }
  function y(v) { return H - B - (H - T - B) * v / maxV; }
  for (var g = 0; g <= 4; g++) {
    var v = maxV * g / 4;
    el("line", { "class": "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) });
    el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, human(v));
    var t = maxT * g / 4;
    el("text", { x: x(t), y: H - B + 16, "text-anchor": "middle" }, t.toFixed(0) + " s");
  }
  el("line", { "class": "axis", x1: L, x2: L, y1: T, y2: H - B });
  el("line", { "class": "axis", x1: L, x2: W - R, y1: H - B, y2: H - B });
  var legend = document.getElementById("legend");
  series.forEach(function (s, i) {
    if (!s.points.length) return;
    var d = s.points.map(function (p, j) { return (j ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); }).join(" ");
    var path = el("path", { "class": "series", d: d, fill: "none", stroke: colors[i % colors.length], "stroke-width": i < 2 ? 2.5 : 1.8 });
    path.setAttribute("data-name", s.name);
    var item = document.createElement("span");
    item.className = "legend-item";
    item.innerHTML = '<i style="background:' + colors[i % colors.length] + '"></i>';
    item.appendChild(document.createTextNode(s.name));
    legend.appendChild(item);
  });
  document.getElementById("chart").appendChild(svg);

  // Say what the embedded flamegraph rendered, read from its own document.
  var frame = document.getElementById("flamegraph");
  function describe() {
    var status = document.getElementById("flamegraph-status");
    var doc = frame.contentDocument;
    if (!doc || !doc.querySelector("svg")) return;
    var titles = Array.prototype.map.call(doc.querySelectorAll("svg g title"), function (t) { return t.textContent; });
    status.setAttribute("data-rendered", "yes");
    status.setAttribute("data-frames", String(titles.length));
    status.setAttribute("data-functions", titles.map(function (t) { return t.replace(/ \([^)]*\)$/, ""); }).join("\n"));
    status.textContent = titles.length ? titles.length + " frames; hover or click to zoom, Ctrl-F to search" : "no outstanding allocations";
  }
  frame.addEventListener("load", function () {
    describe();
    var doc = frame.contentDocument;
    if (doc && doc.body) frame.style.height = (doc.body.scrollHeight + 8) + "px";
  });
  if (frame.contentDocument && frame.contentDocument.readyState === "complete") describe();
})();
"##;

/// Writes the page.
pub fn write(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let mut svg = Vec::new();
    flamegraph::write_svg(report, &report.title(), &mut svg)?;
    let svg = String::from_utf8_lossy(&svg);
    // The iframe holds an HTML page around the SVG (its own script and ids stay apart from
    // this page's), sized to the frame's width.
    let svg_body = svg.find("<svg").map_or(&svg[..], |start| &svg[start..]);
    let frame_doc = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><style>html,body{{margin:0}}svg{{display:block;width:100%;height:auto}}</style></head><body>{svg_body}</body></html>"
    );
    let series = chart_series(report);
    let data = serde_json::to_string(&series)
        .map_err(io::Error::other)?
        .replace("</", "<\\/");
    let verdict = report.verdict.as_ref();
    let leak = verdict.is_some_and(|v| v.leak);
    write!(
        out,
        r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>leaktracer: {title}</title>
<style>
{STYLE}</style>
</head>
<body>
<h1>leaktracer report</h1>
<div class="meta">{target} &middot; traced {duration} &middot; ended: {end}</div>
<div class="verdict {verdict_class}" id="verdict">{verdict_text}</div>
<div class="totals"><span>outstanding <b>{outstanding}</b> in {allocations} allocations</span><span>seen: {seen_allocs} allocations, {seen_frees} frees</span><span>dropped: {dropped}</span></div>
{reachability}
<h2>Outstanding memory over time</h2>
<div id="chart"></div>
<div class="legend" id="legend"></div>
<h2>Leak flamegraph</h2>
<p id="flamegraph-status">loading…</p>
<iframe id="flamegraph" title="leak flamegraph" srcdoc="{svg_attr}"></iframe>
<h2>Top stacks</h2>
{table}
<script type="application/json" id="series">{data}</script>
<script>
{SCRIPT}</script>
</body>
</html>
"##,
        title = escape(&report.title()),
        target = target_line(report),
        duration = human_duration(report.duration_secs),
        end = escape(&report.end_reason),
        verdict_class = if leak { "leak" } else { "ok" },
        verdict_text = escape(verdict.map_or("no growth analysis in this recording", |v| {
            v.summary.as_str()
        })),
        outstanding = human_bytes(report.totals.outstanding_bytes),
        allocations = report.totals.outstanding_allocations,
        seen_allocs = report.totals.allocations,
        seen_frees = report.totals.frees,
        dropped = report.totals.dropped,
        svg_attr = escape(&frame_doc),
        table = table(&report.stacks),
        reachability = reachability_line(report),
        data = data,
    )
}

/// The traced processes, escaped: `pid 42 (server), pid 43 (worker)`.
fn target_line(report: &Report) -> String {
    report
        .target
        .pids
        .iter()
        .zip(
            report
                .target
                .comms
                .iter()
                .chain(std::iter::repeat(&String::new())),
        )
        .map(|(pid, comm)| format!("pid {pid} ({})", escape(comm)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The scan's summary line, when the report has one.
fn reachability_line(report: &Report) -> String {
    report.reachability.as_ref().map_or(String::new(), |scan| {
        format!(
            "<div class=\"totals\" id=\"reachability\"><span>reachability: {}</span></div>",
            escape(&describe_scan(scan))
        )
    })
}

/// Total outstanding, RSS, then the top growers (thread stacks by what is resident of them, as
/// their growth is judged).
fn chart_series(report: &Report) -> Vec<Series> {
    let mut series = vec![
        Series {
            name: "outstanding (all stacks)".into(),
            points: report
                .timeline
                .iter()
                .map(|p| (p.t_secs, p.cost()))
                .collect(),
        },
        Series {
            name: "RSS".into(),
            points: report
                .timeline
                .iter()
                .filter_map(|p| Some((p.t_secs, p.rss_bytes?)))
                .collect(),
        },
    ];
    let mut growers: Vec<&Stack> = report
        .stacks
        .iter()
        .filter(|s| s.growth.is_some_and(|g| g.bytes_per_sec > 0.0) && !s.timeline.is_empty())
        .collect();
    growers.sort_by(|a, b| {
        let rate = |s: &Stack| s.growth.map_or(0.0, |g| g.bytes_per_sec);
        rate(b).total_cmp(&rate(a))
    });
    for stack in growers.into_iter().take(CHART_GROWERS) {
        let name = stack
            .first_own_frame()
            .map_or("[unknown stack]", |f| f.function.as_str());
        series.push(Series {
            name: format!(
                "{name} ({})",
                human_rate(stack.growth.map_or(0.0, |g| g.bytes_per_sec))
            ),
            points: stack
                .timeline
                .iter()
                .map(|p| (p.t_secs, p.cost()))
                .collect(),
        });
    }
    series
}

fn table(stacks: &[Stack]) -> String {
    if stacks.is_empty() {
        return "<p>No outstanding allocations.</p>".to_string();
    }
    let mut html = String::from(
        "<table id=\"stacks\"><thead><tr><th>#</th><th>outstanding</th><th>allocations</th><th>growth</th><th>class</th><th>severity</th><th>reachability</th><th>allocated at</th></tr></thead><tbody>\n",
    );
    for (rank, stack) in stacks.iter().take(TABLE_STACKS).enumerate() {
        let (rate, class, severity) = match &stack.growth {
            Some(g) => (
                human_rate(g.bytes_per_sec),
                class_name(g.class),
                severity_name(g.severity),
            ),
            None => ("-".into(), "-", "-"),
        };
        let frame0 = stack
            .first_own_frame()
            .map_or("[stack not captured]".to_string(), describe_frame);
        let full: Vec<String> = folded_note(stack.folded_frames())
            .into_iter()
            .chain(stack.shown_frames().into_iter().map(describe_frame))
            .collect();
        html.push_str(&format!(
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"{}\">{}</td><td>{}</td><td class=\"reach\">{}</td><td><details><summary>{}</summary><pre>{}</pre></details></td></tr>\n",
            rank + 1,
            human_bytes(stack.outstanding_bytes),
            stack.outstanding_allocations,
            escape(&rate),
            if class == "leak" { "leak-class" } else { "" },
            class,
            severity,
            escape(
                &stack
                    .reachability
                    .map_or("-".to_string(), |r| describe_classes(&r))
            ),
            escape(&frame0),
            escape(&full.join("\n"))
        ));
    }
    html.push_str("</tbody></table>");
    html
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Frame;

    #[test]
    fn the_table_names_a_stack_by_its_first_own_frame() {
        let frame = |name: &str, plumbing| Frame {
            function: name.into(),
            module: "/bin/app".into(),
            plumbing,
            ..Default::default()
        };
        let stacks = [Stack {
            outstanding_bytes: 64,
            frames: vec![frame("g_malloc", true), frame("load_config", false)],
            ..Default::default()
        }];
        let html = table(&stacks);
        assert!(
            html.contains("<summary>load_config [app]</summary>"),
            "{html}"
        );
        assert!(
            html.contains("<pre>(1 allocator frame folded: g_malloc)\nload_config [app]</pre>"),
            "{html}"
        );
    }
}
