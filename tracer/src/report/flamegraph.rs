//! The leak flamegraph: width is outstanding bytes, rendered by inferno with the memory palette,
//! from the folded stacks (so each stack's leading allocator plumbing is folded).

use std::io::{self, Write};

use inferno::flamegraph::{
    self,
    color::{BasicPalette, Palette},
};

use super::Report;
use crate::units::human_bytes;

/// Writes the flamegraph SVG of `report`. A trace with nothing outstanding still gives a valid
/// SVG, one that says so.
pub fn write_svg(report: &Report, title: &str, out: &mut dyn Write) -> io::Result<()> {
    let lines = report.folded_lines();
    if lines.is_empty() {
        return write_empty_svg(title, out);
    }
    let mut options = flamegraph::Options::default();
    options.title = title.to_string();
    options.subtitle = Some(format!(
        "{} outstanding in {} allocations",
        human_bytes(report.totals.outstanding_bytes),
        report.totals.outstanding_allocations
    ));
    options.count_name = "bytes".to_string();
    options.colors = Palette::Basic(BasicPalette::Mem);
    options.hash = true;
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}

/// An SVG that says there is nothing outstanding.
pub fn write_empty_svg(title: &str, out: &mut dyn Write) -> io::Result<()> {
    let title = escape(title);
    write!(
        out,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="120" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="1200" height="120" fill="#eeeeee"/>
<text x="600" y="40" text-anchor="middle" font-family="Verdana" font-size="17">{title}</text>
<text x="600" y="80" text-anchor="middle" font-family="Verdana" font-size="14">no outstanding allocations</text>
</svg>
"##
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Frame, Stack};

    #[test]
    fn empty_trace_gives_an_svg_that_says_so() {
        let mut out = Vec::new();
        write_svg(&Report::default(), "leaktracer: a <b>", &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("no outstanding allocations"));
        assert!(svg.contains("a &lt;b&gt;"));
    }

    #[test]
    fn stacks_are_rendered_with_their_functions() {
        let report = Report {
            stacks: vec![Stack {
                outstanding_bytes: 1000,
                outstanding_allocations: 1,
                frames: vec![Frame {
                    function: "leaky_function".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        write_svg(&report, "t", &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("leaky_function") && svg.contains("1,000 bytes"));
    }
}
