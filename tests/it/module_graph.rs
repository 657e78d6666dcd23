//! The crate's modules depend on each other one way: no cycle. Read from the
//! `crate::` paths in `src/` (comments aside), by top-level module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let used = graph.entry(top.clone()).or_default();
        for line in text.lines().map(str::trim) {
            if line.starts_with("//") {
                continue;
            }
            // `use crate::{a, b::c}` names several modules.
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap()
                        .split(',')
                        .map(str::trim)
                        .collect(),
                    None => vec![rest],
                };
                for name in names {
                    let module: String = name
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !module.is_empty() && module != top {
                        used.insert(module);
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `from`, if any (depth-first).
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let here = path.last().unwrap().clone();
    for next in graph.get(&here).into_iter().flatten() {
        if let Some(at) = path.iter().position(|m| m == next) {
            let mut found = path[at..].to_vec();
            found.push(next.clone());
            return Some(found);
        }
        if done.contains(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(found) = cycle(graph, path, done) {
            return Some(found);
        }
        path.pop();
    }
    done.insert(here);
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // The reader works: these edges exist.
    assert!(graph["gateway"].contains("auth"), "{graph:?}");
    assert!(graph["server"].contains("gateway"), "{graph:?}");
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = cycle(&graph, &mut vec![module.clone()], &mut done) {
            panic!("module cycle: {}\nthe graph: {graph:#?}", found.join(" → "));
        }
    }
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph.entry(from.into()).or_default().insert(to.into());
    }
    let found = cycle(&graph, &mut vec!["a".into()], &mut BTreeSet::new());
    assert_eq!(
        found,
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// Inside `spend`, each store depends on the trait alone: the trait's file
/// names no store, and no store names the other; only the module's root,
/// where they are assembled, names both.
#[test]
fn each_store_depends_only_on_the_trait() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/spend");
    let code = |file: &str| -> String {
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let names = |text: &str, module: &str| {
        text.contains(&format!("super::{module}")) || text.contains(&format!("spend::{module}"))
    };
    let store = code("store.rs");
    for module in ["sqlite", "dynamodb"] {
        assert!(!names(&store, module), "store.rs names {module}");
    }
    assert!(!names(&code("sqlite.rs"), "dynamodb"));
    assert!(!names(&code("dynamodb.rs"), "sqlite"));
}
