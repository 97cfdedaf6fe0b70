//! The layering rules of ARCHITECTURE.md, checked on the source: `core`
//! uses nothing else of the crate, and no two modules use each other, however
//! indirectly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its files name as `crate::x`.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str();
            let module = Path::new(first).file_stem().unwrap().to_string_lossy();
            // The crate root and the binary wire everything; they are the top.
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let used = graph.entry(module.to_string()).or_default();
            for (at, _) in text.match_indices("crate::") {
                let name: String = text[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != module && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    used.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn core_uses_nothing_else_of_the_crate() {
    let graph = uses();
    assert_eq!(
        graph["core"],
        BTreeSet::new(),
        "core must stay at the bottom"
    );
}

#[test]
fn no_module_uses_a_module_that_uses_it() {
    let graph = uses();
    // Depth-first search; a module met again while on the path is a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = path.iter().position(|m| *m == module) {
            panic!("module cycle: {} -> {module}", path[at..].join(" -> "));
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(module);
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
    assert!(graph.len() > 10, "the modules were found: {graph:?}");
}
