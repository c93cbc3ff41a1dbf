//! Questions asked of a JSON report: which stacks sit at a function, what they hold.

use std::{fs, path::Path};

use serde_json::Value;

use crate::valgrind::SiteClasses;

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The stack's first frame that is not allocator plumbing (what the text report shows first):
/// frame 0 unless the report marked leading frames `plumbing` (operator new, zmalloc, Rust's
/// alloc::).
pub fn first_own_frame(stack: &Value) -> &Value {
    let frames = stack["frames"].as_array().unwrap();
    frames
        .iter()
        .find(|f| f["plumbing"] != true)
        .or(frames.first())
        .unwrap_or(&Value::Null)
}

/// The stacks whose first own frame (see [`first_own_frame`]) is `function`.
pub fn stacks_at<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| first_own_frame(s)["function"] == function)
        .collect()
}

/// Outstanding bytes and allocations summed over the stacks whose first own frame is `function`.
pub fn outstanding_at(report: &Value, function: &str) -> (u64, u64) {
    stacks_at(report, function)
        .iter()
        .fold((0, 0), |(b, n), s| {
            (
                b + s["outstanding_bytes"].as_u64().unwrap(),
                n + s["outstanding_allocations"].as_u64().unwrap(),
            )
        })
}

/// True when any frame of any stack is `function`.
pub fn mentions(report: &Value, function: &str) -> bool {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap())
        .any(|f| f["function"] == function)
}

/// The report's entry for process `pid` (its `processes[]` item).
pub fn process_entry(report: &Value, pid: u32) -> &Value {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in processes: {}", report["processes"]))
}

/// The report narrowed to the stacks of process `pid`, for the other queries here (which then
/// see that process only).
pub fn process_stacks(report: &Value, pid: u32) -> Value {
    let stacks: Vec<Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == pid)
        .cloned()
        .collect();
    serde_json::json!({ "pid": pid, "stacks": stacks })
}

/// Asserts that the stacks at each function (first own frame) hold exactly the given outstanding bytes
/// and allocations: `sites` is `(function, bytes, allocations)`, `(f, 0, 0)` for a function
/// that must hold nothing. The failure lists every site that differs and what the report holds.
pub fn assert_sites(report: &Value, sites: &[(&str, u64, u64)]) {
    let wrong: Vec<String> = sites
        .iter()
        .filter_map(|&(function, bytes, allocations)| {
            let found = outstanding_at(report, function);
            (found != (bytes, allocations)).then(|| {
                format!(
                    "  {function}: expected {bytes} B in {allocations} allocations, found {} B in {}",
                    found.0, found.1
                )
            })
        })
        .collect();
    if wrong.is_empty() {
        return;
    }
    let held: Vec<String> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "  {}: {} B in {}",
                s["frames"][0]["function"]
                    .as_str()
                    .unwrap_or("[unknown stack]"),
                s["outstanding_bytes"],
                s["outstanding_allocations"]
            )
        })
        .collect();
    let whose = match report["pid"].as_u64() {
        Some(pid) => format!(" of process {pid}"),
        None => String::new(),
    };
    panic!(
        "outstanding memory{whose} differs from the expected sites:\n{}\nthe report's stacks{whose} hold:\n{}",
        wrong.join("\n"),
        held.join("\n")
    );
}

/// The function names of a stack's frames, innermost first, inlined frames left out (what a
/// frame-by-frame walk such as gdb's `bt` without debug info lists).
pub fn real_frames(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["inlined"] != true)
        .map(|f| f["function"].as_str().unwrap())
        .collect()
}

/// The stacks with `function` among their frames.
pub fn stacks_through<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == function)
        })
        .collect()
}

/// Outstanding bytes and allocations summed over the stacks with `function` among their frames.
pub fn outstanding_through(report: &Value, function: &str) -> (u64, u64) {
    stacks_through(report, function)
        .iter()
        .fold((0, 0), |(b, n), s| {
            (
                b + s["outstanding_bytes"].as_u64().unwrap(),
                n + s["outstanding_allocations"].as_u64().unwrap(),
            )
        })
}

/// The `--reachability` classes summed over the stacks whose first own frame is `function` (see
/// [`stacks_at`]): each stack's `"reachability": {"definitely_lost": {"bytes", "allocations"},
/// ...}`. Panics on a stack there without them.
pub fn reachability_at(report: &Value, function: &str) -> SiteClasses {
    let mut sum = SiteClasses::NONE;
    for stack in stacks_at(report, function) {
        add_reachability(&mut sum, &stack["reachability"], stack);
    }
    sum
}

/// Adds a `"reachability"` object's four classes to `sum`; `context` names it in a panic.
pub fn add_reachability(sum: &mut SiteClasses, reachability: &Value, context: &Value) {
    for class in SiteClasses::CLASSES {
        let field = |name: &str| {
            reachability[class][name]
                .as_u64()
                .unwrap_or_else(|| panic!("no reachability.{class}.{name} in {context}"))
        };
        let slot = sum.class_mut(class);
        slot.0 += field("bytes");
        slot.1 += field("allocations");
    }
}
