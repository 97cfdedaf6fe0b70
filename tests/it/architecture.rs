//! The layering rules of ARCHITECTURE.md, checked on the source: every
//! top-level module of `src/` uses only modules on lower lines of the layer
//! table in ARCHITECTURE.md, `core` uses nothing else of the crate, and no
//! two modules use each other, however indirectly.

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
                for name in names_after(&text[at + 7..]) {
                    if name != module && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    {
                        used.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// The first path segment after `crate::`, or each one of a `crate::{a,
/// b::c}` group.
fn names_after(text: &str) -> Vec<String> {
    let word = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = text.strip_prefix('{') else {
        return vec![word(text)];
    };
    let mut names = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && !c.is_whitespace() => {
                names.push(word(&group[at..]));
                start = false;
            }
            _ => {}
        }
    }
    names
}

/// The layer table of ARCHITECTURE.md (the ```layers block), top first:
/// each line's modules.
fn layers() -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(path).unwrap();
    let block = text
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    block
        .lines()
        .map(|line| {
            let modules = line.split(" -- ").next().unwrap_or_default();
            modules.split_whitespace().map(str::to_owned).collect()
        })
        .filter(|modules: &Vec<String>| !modules.is_empty())
        .collect()
}

#[test]
fn each_module_uses_only_the_layers_below_its_own() {
    let graph = uses();
    let layers = layers();
    let layer_of = |module: &str| layers.iter().position(|l| l.iter().any(|m| m == module));
    let drawn: BTreeSet<&str> = layers.iter().flatten().map(String::as_str).collect();
    let found: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    assert_eq!(
        drawn, found,
        "the table draws every module of src/, and only those"
    );
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let own = layer_of(module).unwrap();
        for other in used {
            match layer_of(other) {
                Some(layer) if layer > own => {}
                _ => wrong.push(format!("{module} uses {other}")),
            }
        }
    }
    assert!(wrong.is_empty(), "uses against the layer table: {wrong:?}");
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
