//! The node's layers, checked from its sources: every import between the crate's files (`use crate::…`,
//! `super::…`, and paths written in code), resolved to the file that defines the module, must form no circle, and
//! each top-level module may only import modules of its own layer or below (docs/architecture.md, "The node's
//! layers"). Test code (`#[cfg(test)]` modules, which may borrow fixtures from anywhere) and a module's re-exports
//! of its own children are not dependencies and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first; a module may import its own layer's modules and those below.
const LAYERS: &[&[&str]] = &[
    &["main", "lib", "server", "cli"],
    &["api"],
    &["shopper", "edge"],
    &["node"],
    &["cluster", "control", "push"],
    &["engine", "bundles", "logs", "durable"],
    &["config", "error", "security", "http"],
];

fn layer_of(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .unwrap_or_else(|| {
            panic!("module {top} is in no layer: add it to LAYERS and to docs/architecture.md")
        })
}

/// The module path of a source file (`src/cluster/routing.rs` → `cluster::routing`; `lib.rs` → `lib`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file: without comments (doc links are not imports) and without its test modules (`#[cfg(test)]`
/// followed by a `mod`, inline or in its own file). Other `#[cfg(test)]` items stay: they are imports of test builds.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    without_test_modules(&text)
}

/// `text` without its `#[cfg(test)] mod …` items.
fn without_test_modules(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let item = item.strip_prefix("pub(crate) ").unwrap_or(item);
        if !item.starts_with("mod ") {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let skipped = after.len() - item.len();
        let end = match item.find(['{', ';']) {
            Some(i) if item.as_bytes()[i] == b';' => i + 1,
            Some(i) => i + matching_brace(&item[i..]),
            None => item.len(),
        };
        rest = &after[skipped + end..];
    }
    out.push_str(rest);
    out
}

/// The length of the block `text` opens (it starts with `{`), skipping string and character literals.
fn matching_brace(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b'r' if text[i..].starts_with("r#\"") => {
                i += text[i + 3..].find("\"#").map_or(bytes.len(), |e| e + 4);
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// The module paths a file's code names: `crate::a::b` (with `{…}` groups expanded), and `super::`/`self::` paths
/// relative to `module`.
fn named(module: &[String], code: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for anchor in ["crate::", "super::", "self::"] {
        for (start, _) in code.match_indices(anchor) {
            if code[..start]
                .chars()
                .last()
                .is_some_and(|c| ident(c) || c == ':')
            {
                continue;
            }
            let base = match anchor {
                "crate::" => Vec::new(),
                "super::" => module[..module.len().saturating_sub(1)].to_vec(),
                _ => module.to_vec(),
            };
            paths(&code[start + anchor.len()..], base, &mut out);
        }
    }
    out
}

/// Reads a path after `base::` — segments, `super`, a `{…}` group of paths — and records every module path it names.
fn paths(text: &str, mut base: Vec<String>, out: &mut BTreeSet<Vec<String>>) -> usize {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut at = 0;
    loop {
        let rest = &text[at..];
        let trimmed = rest.trim_start();
        at += rest.len() - trimmed.len();
        if let Some(group) = trimmed.strip_prefix('{') {
            // A group: each comma-separated member is a path from `base`.
            let mut used = 1;
            let mut inner = group;
            loop {
                let n = paths(inner, base.clone(), out);
                used += n;
                inner = &inner[n..];
                let t = inner.trim_start();
                used += inner.len() - t.len();
                inner = t;
                match inner.chars().next() {
                    Some(',') => {
                        used += 1;
                        inner = &inner[1..];
                    }
                    Some('}') => return at + used + 1,
                    _ => return at + used,
                }
            }
        }
        let len = trimmed.find(|c: char| !ident(c)).unwrap_or(trimmed.len());
        let segment = &trimmed[..len];
        if segment.is_empty() || !segment.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.insert(base);
            return at + len;
        }
        match segment {
            "super" => {
                base.pop();
            }
            "self" => {}
            s => base.push(s.to_string()),
        }
        at += len;
        if text[at..].starts_with("::") {
            at += 2;
        } else {
            out.insert(base);
            return at;
        }
    }
}

type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// A circle in the graph, if there is one: a depth-first search that meets a module on its own path has found one.
fn circle(edges: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &Vec<String>,
        edges: &Graph,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            return Some(path[at..].iter().map(|p| p.join("::")).collect());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

/// The longest prefix of `path` that is a module with a file.
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

#[test]
fn the_node_crate_has_no_import_circle_and_no_import_up_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.retain(|f| f.file_name().is_some_and(|n| n != "tests.rs"));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = Graph::new();
    for file in &files {
        let from = module_of(&src, file);
        for path in named(&from, &code(file)) {
            let Some(to) = resolve(&modules, &path) else {
                continue;
            };
            // Not a dependency: a module and itself, a module re-exporting or declaring its own descendants.
            if to == from || to.starts_with(&from) {
                continue;
            }
            edges.entry(from.clone()).or_default().insert(to);
        }
    }
    // No import up the layers.
    let mut upward = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            let (f, t) = (layer_of(&from[0]), layer_of(&to[0]));
            if t < f {
                upward.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports up the layers:\n{}",
        upward.join("\n")
    );
    if let Some(circle) = circle(&edges) {
        panic!("import circle: {}", circle.join(" -> "));
    }
    let count: usize = edges.values().map(BTreeSet::len).sum();
    assert!(
        count > 100,
        "the check must see the crate's imports ({count} found)"
    );
}

#[test]
fn the_check_reads_imports_as_the_compiler_does() {
    let module = ["a".to_string(), "b".to_string()];
    let found = named(
        &module,
        "use super::{c, d::e};\nuse crate::x::{y::z, W};\nlet r = crate::q::r::f(1);\nuse self::inner;",
    );
    let expected: BTreeSet<Vec<String>> = [
        vec!["a", "c"],
        vec!["a", "d", "e"],
        vec!["x", "y", "z"],
        vec!["x"],
        vec!["q", "r", "f"],
        vec!["a", "b", "inner"],
    ]
    .into_iter()
    .map(|p| p.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn the_check_finds_a_circle_when_there_is_one() {
    let m = |s: &str| vec![s.to_string()];
    let mut edges = Graph::new();
    edges.entry(m("a")).or_default().insert(m("b"));
    edges.entry(m("b")).or_default().insert(m("c"));
    assert_eq!(circle(&edges), None);
    edges.entry(m("c")).or_default().insert(m("a"));
    assert_eq!(circle(&edges).unwrap().len(), 3);
}

#[test]
fn test_modules_are_left_out_and_test_only_imports_kept() {
    let text = "use crate::a;\n#[cfg(test)]\nuse crate::b;\n#[cfg(test)]\nmod tests {\n    use crate::c;\n    let s = \"}\";\n    fn f() {}\n}\nuse crate::d;\n#[cfg(test)]\nmod more;\n";
    let kept = without_test_modules(text);
    assert!(kept.contains("crate::a") && kept.contains("crate::b") && kept.contains("crate::d"));
    assert!(
        !kept.contains("crate::c") && !kept.contains("mod more"),
        "{kept}"
    );
}
