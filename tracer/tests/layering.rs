//! The layering of `tracer/src`, checked from the source: modules depend on each other in one
//! direction only (no two import each other, directly or round a cycle), only the command
//! line (`cli/`, `main.rs`) knows clap, and only the registry (`runtimes/mod.rs`) knows a
//! language runtime's code (`runtimes/<name>/`). Read as text, so it needs no build of anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

mod common;
use common::source_files;

/// A module path inside the crate, e.g. `["report", "build"]`.
type ModulePath = Vec<String>;

/// The module a file defines: `report/mod.rs` and `report.rs` are `report`; `lib.rs` the root.
fn module_of(src: &Path, file: &Path) -> ModulePath {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: ModulePath = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)]` module (tests may reach
/// anywhere).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in tree.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        if let Some((head, rest)) = part.split_once("::{") {
            let mut prefix = prefix.to_vec();
            prefix.extend(head.split("::").map(String::from));
            expand(&prefix, &rest[..rest.len() - 1], out);
        } else if let Some(inner) = part.strip_prefix('{') {
            expand(prefix, &inner[..inner.len() - 1], out);
        } else {
            let mut path = prefix.to_vec();
            path.extend(part.split("::").map(String::from));
            out.push(path);
        }
    }
}

/// The crate-relative module paths a file refers to: its `use crate::`/`use super::` trees and
/// inline `crate::` paths.
fn references(module: &ModulePath, code: &str) -> Vec<ModulePath> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let starts_word = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        rest = &rest[at + "use ".len()..];
        let Some(end) = rest.find(';') else { break };
        let tree: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
        if starts_word && (tree.starts_with("crate::") || tree.starts_with("super::")) {
            expand(&[], &tree, &mut paths);
        }
    }
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(
            std::iter::once("crate".to_string())
                .chain(path.split("::").filter(|s| !s.is_empty()).map(String::from))
                .collect(),
        );
    }
    paths
        .into_iter()
        .filter_map(|path| match path.first().map(String::as_str) {
            Some("crate") => Some(path[1..].to_vec()),
            Some("super") => {
                // `super` of module a::b (a/b.rs, or a/b/mod.rs) is a.
                let mut base = module.clone();
                base.pop();
                base.extend(path[1..].iter().cloned());
                Some(base)
            }
            _ => None,
        })
        .collect()
}

/// The paths under the external crate `root` (e.g. `tracer_common`) that `code` refers to, each
/// with `root` as its first element: its `use root::` trees and inline `root::` paths.
fn external_paths(code: &str, root: &str) -> Vec<Vec<String>> {
    let prefix = format!("{root}::");
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let starts_word = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        rest = &rest[at + "use ".len()..];
        let Some(end) = rest.find(';') else { break };
        let tree: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
        if starts_word && tree.starts_with(&prefix) {
            expand(&[], &tree, &mut paths);
        }
    }
    let mut rest = code;
    while let Some(at) = rest.find(&prefix) {
        let starts_word = at == 0 || {
            let before = rest.as_bytes()[at - 1];
            !(before.is_ascii_alphanumeric() || before == b'_' || before == b':')
        };
        rest = &rest[at + prefix.len()..];
        if !starts_word {
            continue;
        }
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(
            std::iter::once(root.to_string())
                .chain(path.split("::").filter(|s| !s.is_empty()).map(String::from))
                .collect(),
        );
    }
    paths
}

/// The language runtimes: the folders of `runtimes/`.
fn runtime_folders() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtimes");
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

struct Crate {
    /// Per file: its module, its code.
    files: Vec<(PathBuf, ModulePath, String)>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    source_files(&src, &mut paths);
    let files = paths
        .into_iter()
        .map(|path| {
            let module = module_of(&src, &path);
            let code = code_of(&fs::read_to_string(&path).unwrap());
            (path, module, code)
        })
        .collect();
    Crate { files }
}

/// Module dependencies at `depth` (1: top-level modules; 2: their children...), without the
/// links from a module to the modules it contains.
fn dependencies(krate: &Crate, depth: usize) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let mut graph: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (_, module, code) in &krate.files {
        let from: ModulePath = module.iter().take(depth).cloned().collect();
        for target in references(module, code) {
            let to: ModulePath = target.iter().take(depth).cloned().collect();
            let contains = |outer: &ModulePath, inner: &ModulePath| inner.starts_with(outer);
            if from.is_empty() || to.is_empty() || contains(&from, &to) || contains(&to, &from) {
                continue;
            }
            graph.entry(from.clone()).or_default().insert(to);
        }
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Option<Vec<ModulePath>> {
    fn visit(
        node: &ModulePath,
        graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        done: &mut BTreeSet<ModulePath>,
        stack: &mut Vec<ModulePath>,
    ) -> Option<Vec<ModulePath>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if !done.insert(node.clone()) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn modules_depend_one_way() {
    let krate = read_crate();
    for depth in 1..=3 {
        let graph = dependencies(&krate, depth);
        assert!(
            !graph.is_empty(),
            "no dependencies found: the parser is broken"
        );
        if let Some(cycle) = find_cycle(&graph) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            panic!("modules import each other: {}", names.join(" -> "));
        }
    }
}

#[test]
fn only_the_command_line_knows_clap() {
    let krate = read_crate();
    for (path, module, code) in &krate.files {
        let command_line = module.first().is_some_and(|m| m == "cli")
            || path.file_name().is_some_and(|f| f == "main.rs");
        if !command_line {
            assert!(
                !code.contains("clap::") && !code.contains("use clap"),
                "{} uses clap: only cli/ and main.rs may",
                path.display()
            );
        }
    }
}

/// Where `files` name a runtime's code outside the registry and that runtime's folder: a
/// reference to `runtimes::<runtime>`, or, outside `runtimes/`, to what the kernel side shares
/// with one (`tracer_common::<runtime>`).
fn runtime_leaks(
    files: &[(PathBuf, ModulePath, String)],
    runtimes: &BTreeSet<String>,
) -> Vec<String> {
    let mut leaks = Vec::new();
    for (path, module, code) in files {
        let in_runtimes = module.first().is_some_and(|m| m == "runtimes");
        let registry = module.len() == 1 && in_runtimes;
        for target in references(module, code) {
            let [first, runtime, ..] = target.as_slice() else {
                continue;
            };
            let own = in_runtimes && module.get(1) == Some(runtime);
            if first == "runtimes" && runtimes.contains(runtime) && !registry && !own {
                leaks.push(format!(
                    "{} refers to runtimes::{runtime}: only runtimes/mod.rs and runtimes/{runtime}/ may",
                    path.display()
                ));
            }
        }
        if in_runtimes {
            continue;
        }
        for external in external_paths(code, "tracer_common") {
            if external.get(1).is_some_and(|m| runtimes.contains(m)) {
                leaks.push(format!(
                    "{} uses {}: only runtimes/ may",
                    path.display(),
                    external.join("::")
                ));
            }
        }
    }
    leaks
}

#[test]
fn only_the_registry_names_a_runtime() {
    let runtimes = runtime_folders();
    assert!(
        runtimes.contains("python"),
        "CPython's code lives in runtimes/python/: {runtimes:?}"
    );
    let leaks = runtime_leaks(&read_crate().files, &runtimes);
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

#[test]
fn the_parser_sees_runtime_leaks() {
    // Guards the check above against a parser that finds nothing.
    let file = |path: &str, code: &str| {
        let src = Path::new("src");
        let path = src.join(path);
        (path.clone(), module_of(src, &path), code.to_string())
    };
    let files = [
        file(
            "trace/mod.rs",
            "use crate::{report, runtimes::{Runtimes, python::code::CodeObjects}};",
        ),
        file(
            "collect/mod.rs",
            "use tracer_common::{StackKey, python::NewPythonStack};",
        ),
        file(
            "report/build.rs",
            "let f = tracer_common::python::PythonFrame::from_entry(1);",
        ),
        file(
            "runtimes/go/mod.rs",
            "let r = &crate::runtimes::python::RULES;",
        ),
        // Allowed: the registry, and a runtime's own code.
        file("runtimes/mod.rs", "use crate::runtimes::python::Python;"),
        file(
            "runtimes/python/code.rs",
            "use tracer_common::python::PythonFrame; use super::super::python::layout;",
        ),
    ];
    let runtimes: BTreeSet<String> = ["go", "python"].map(String::from).into();
    let leaks = runtime_leaks(&files, &runtimes);
    assert_eq!(leaks.len(), 4, "{leaks:#?}");
    for (leak, path) in leaks.iter().zip([
        "trace/mod.rs",
        "collect/mod.rs",
        "report/build.rs",
        "runtimes/go/mod.rs",
    ]) {
        assert!(leak.starts_with(&format!("src/{path} ")), "{leak}");
    }
}

#[test]
fn the_parser_sees_known_dependencies() {
    // Guards the checks above against a parser that finds nothing: these edges exist.
    let graph = dependencies(&read_crate(), 1);
    let has = |from: &str, to: &str| {
        graph
            .get(&vec![from.to_string()])
            .is_some_and(|targets| targets.contains(&vec![to.to_string()]))
    };
    assert!(has("cli", "trace"), "{graph:?}");
    assert!(has("trace", "report"), "{graph:?}");
    assert!(has("report", "units"), "{graph:?}");
    assert!(has("report", "runtimes"), "{graph:?}");
    assert!(has("trace", "runtimes"), "{graph:?}");
}
