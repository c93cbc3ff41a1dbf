//! What a trace produces, and its renderings: text on stdout, JSON, folded stacks, flamegraph.
//!
//! The JSON keys are a contract other tools read: extend, never rename.

pub mod flamegraph;
pub mod output;
pub mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A finished trace.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub target: Target,
    pub duration_secs: f64,
    pub totals: Totals,
    /// Sorted by outstanding bytes, largest first.
    pub stacks: Vec<Stack>,
    /// The object that served `malloc`, per process.
    #[serde(default)]
    pub allocators: Vec<AllocatorUsed>,
    /// Why the trace ended: `duration`, `interrupted` or `target exited`.
    #[serde(default)]
    pub end_reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Target {
    pub pids: Vec<u32>,
    /// The launched command, or the traced process's command line; null when unreadable.
    pub command: Option<Vec<String>>,
    /// Short command name of each traced process.
    #[serde(default)]
    pub comms: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AllocatorUsed {
    pub pid: u32,
    pub object: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Allocations recorded during the trace.
    pub allocations: u64,
    /// Frees (and unmaps) that released a recorded allocation.
    pub frees: u64,
    /// Allocations or attributions lost: the sum of `dropped_by_cause`.
    pub dropped: u64,
    #[serde(default)]
    pub dropped_by_cause: BTreeMap<String, u64>,
    /// Calls deliberately not counted: frees of pointers allocated before the trace, allocator
    /// calls nested in another, the allocator's own mmaps.
    #[serde(default)]
    pub ignored: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stack {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// All allocations from this stack during the trace, freed or not.
    #[serde(default)]
    pub total_allocations: u64,
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default)]
    pub pid: u32,
    /// Innermost first: frame 0 is the allocator's caller.
    pub frames: Vec<Frame>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Demangled function name, or `module+0xoffset` when unknown.
    pub function: String,
    /// Object the address belongs to, as the target sees its path.
    pub module: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The return address in the target's address space.
    pub address: u64,
    /// True for a function inlined into the next frame.
    #[serde(default)]
    pub inlined: bool,
}

impl Frame {
    /// A frame nothing is known about but its module and offset.
    pub fn unknown(address: u64, module: String, offset: u64) -> Self {
        let name = module.rsplit('/').next().unwrap_or(&module);
        Self {
            function: format!("{name}+{offset:#x}"),
            module,
            file: None,
            line: None,
            address,
            inlined: false,
        }
    }
}

impl Report {
    /// Folded stacks (`root;...;leaf bytes`), one line per stack, for flamegraph tools.
    pub fn folded_lines(&self) -> Vec<String> {
        self.stacks
            .iter()
            .filter(|s| s.outstanding_bytes > 0)
            .map(|stack| {
                let mut names: Vec<&str> = stack
                    .frames
                    .iter()
                    .rev()
                    .map(|f| f.function.as_str())
                    .collect();
                if names.is_empty() {
                    names.push("[unknown stack]");
                }
                format!("{} {}", names.join(";"), stack.outstanding_bytes)
            })
            .collect()
    }
}

/// `1536` -> `1.50 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> Frame {
        Frame {
            function: name.into(),
            module: "/bin/x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn folded_is_root_first_with_bytes() {
        let report = Report {
            stacks: vec![Stack {
                outstanding_bytes: 4096,
                outstanding_allocations: 2,
                frames: vec![frame("leak"), frame("worker"), frame("main")],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            report.folded_lines(),
            vec!["main;worker;leak 4096".to_string()]
        );
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(1 << 20), "1.00 MiB");
    }
}
