//! The crate's layout, as the module map in `src/lib.rs` states it, checked from the sources:
//! - no file imports a file that imports it back (directly or round a longer circle);
//! - between rooms, only the dependencies the map allows;
//! - every module file opens with a `//!` comment saying what it owns;
//! - code inside the crate uses the rooms' paths, not the flat aliases kept for callers.
//!
//! Dependencies are read from `crate::…` and `super::…` paths in code (comments and
//! `#[cfg(test)]` sections are not dependencies).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rooms and what each may use besides itself. `None` in the target means the whole room;
/// `Some(module)` only that module of it.
const ALLOWED: &[(&str, &str, Option<&str>)] = &[
    ("boot", "api", None),
    ("boot", "admission", None),
    ("boot", "consensus", None),
    ("boot", "ops", None),
    ("boot", "etcd", None),
    ("etcd", "api", None),
    ("etcd", "consensus", None),
    ("etcd", "admission", Some("access")),
    ("api", "consensus", None),
    ("api", "ops", Some("metrics")),
    ("admission", "api", Some("error")),
    ("admission", "ops", Some("metrics")),
    ("consensus", "api", Some("error")),
    ("consensus", "admission", Some("disk_guard")),
    ("ops", "consensus", None),
    ("ops", "admission", None),
    ("ops", "api", Some("error")),
];

/// The flat paths of before the rooms, re-exported from the crate root for outside callers.
const FLAT_ALIASES: &[&str] = &[
    "access",
    "disk_guard",
    "gate",
    "cluster_service",
    "error",
    "kv_service",
    "request",
    "config",
    "daemon",
    "identity",
    "join",
    "node",
    "startup",
    "tls",
    "network",
    "peer_service",
    "core",
    "election_assist",
    "membership",
    "read_index",
    "write_batcher",
    "health",
    "metrics",
];

struct SourceFile {
    /// Module path, e.g. `["consensus", "transport", "network"]`; empty for lib.rs.
    module: Vec<String>,
    path: PathBuf,
    text: String,
}

fn collect(dir: &Path, root: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, root, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(root).expect("under src");
        let mut module: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        let last = module.pop().expect("file name");
        match last.as_str() {
            "lib.rs" | "main.rs" | "mod.rs" => {}
            name => module.push(name.trim_end_matches(".rs").to_string()),
        }
        if last == "main.rs" {
            continue; // the binary: uses the library from outside
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        out.push(SourceFile { module, path, text });
    }
}

/// Code lines of a file: comments dropped, and nothing from the first `#[cfg(test)]` on.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
}

/// Every `crate::a::b…` or `super::a…` path in `line` (also inside `use crate::{…}` groups).
fn paths_in(line: &str) -> Vec<(bool, Vec<String>)> {
    let mut found = Vec::new();
    for (marker, from_crate) in [("crate::", true), ("super::", false)] {
        let mut rest = line;
        while let Some(i) = rest.find(marker) {
            let preceded_by_ident = rest[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            rest = &rest[i + marker.len()..];
            if preceded_by_ident {
                continue;
            }
            // Identifiers joined by `::`; the path ends at anything else (`{`, `;`, `(`, ...).
            let mut path = Vec::new();
            let mut tail = rest;
            loop {
                let ident: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if ident.is_empty() {
                    break;
                }
                tail = &tail[ident.len()..];
                path.push(ident);
                match tail.strip_prefix("::") {
                    Some(t) => tail = t,
                    None => break,
                }
            }
            found.push((from_crate, path));
        }
    }
    found
}

/// The longest prefix of `path` that names a module file.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

fn sources() -> Vec<SourceFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    files
}

/// File → files it uses.
fn dependency_graph(files: &[SourceFile]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut graph = BTreeMap::new();
    for f in files.iter().filter(|f| !f.module.is_empty()) {
        let mut deps = BTreeSet::new();
        for line in code_lines(&f.text) {
            for (from_crate, path) in paths_in(line) {
                let absolute = if from_crate {
                    path
                } else {
                    // `super` is the module one level up (for a mod.rs, its room's parent).
                    let mut base = f.module.clone();
                    base.pop();
                    base.extend(path);
                    base
                };
                if let Some(target) = resolve(&absolute, &modules) {
                    if target != f.module && !target.is_empty() {
                        deps.insert(target);
                    }
                }
            }
        }
        graph.insert(f.module.clone(), deps);
    }
    graph
}

fn name(m: &[String]) -> String {
    m.join("::")
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let graph = dependency_graph(&sources());
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if done.contains(node) {
            return None;
        }
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut circle = stack[i..].to_vec();
            circle.push(node.clone());
            return Some(circle);
        }
        stack.push(node.clone());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(dep, graph, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            let names: Vec<String> = circle.iter().map(|m| name(m)).collect();
            panic!("import circle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn rooms_use_only_what_the_module_map_allows() {
    let graph = dependency_graph(&sources());
    let rooms: BTreeSet<&str> = ALLOWED.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
    let mut violations = Vec::new();
    for (from, deps) in &graph {
        for to in deps {
            let (Some(from_room), Some(to_room)) = (from.first(), to.first()) else {
                continue;
            };
            assert!(rooms.contains(from_room.as_str()), "{} is in no room", name(from));
            if from_room == to_room {
                continue;
            }
            let allowed = ALLOWED.iter().any(|(a, b, only)| {
                a == from_room && b == to_room && only.is_none_or(|m| to.get(1).is_some_and(|t| t == m))
            });
            if !allowed {
                violations.push(format!("{} uses {}", name(from), name(to)));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies the module map (src/lib.rs) does not allow:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_module_file_says_what_it_owns() {
    for f in sources() {
        assert!(
            f.text.trim_start().starts_with("//!"),
            "{} does not open with a //! comment",
            f.path.display()
        );
    }
}

#[test]
fn code_inside_the_crate_uses_the_rooms_paths() {
    for f in sources().iter().filter(|f| !f.module.is_empty()) {
        for line in code_lines(&f.text) {
            for (from_crate, path) in paths_in(line) {
                if let (true, Some(first)) = (from_crate, path.first()) {
                    assert!(
                        !FLAT_ALIASES.contains(&first.as_str()),
                        "{}: `crate::{}` is a flat alias kept for outside callers; use the room's path",
                        f.path.display(),
                        name(&path)
                    );
                }
            }
        }
    }
}

#[test]
fn the_checker_sees_known_dependencies() {
    // Guards the parser itself: a few edges that exist must be found.
    let graph = dependency_graph(&sources());
    let edge = |from: &str, to: &str| {
        let f: Vec<String> = from.split("::").map(String::from).collect();
        let t: Vec<String> = to.split("::").map(String::from).collect();
        graph.get(&f).is_some_and(|d| d.contains(&t))
    };
    assert!(edge("api::kv_service", "consensus::core"));
    assert!(edge("boot::node", "consensus::transport::network"));
    assert!(
        edge("consensus::transport::network", "consensus::transport"),
        "super:: paths"
    );
    assert!(edge("boot::daemon", "boot::config"), "crate:: paths inside use groups");
}
