//! The house's shape, checked: no import cycle between sibling modules, no source file over
//! 800 lines and no function over 100 (tests aside), and the dependency arrows between the
//! crates pointing one way (actors <- supervision <- cluster <- node-local, node-remote <- tether).
//!
//! Reads the sources as text: a `use crate::a::b` or a path `crate::a::b::x` in module `m` is an
//! edge from `m` to `a::b`. Edges between two modules are lifted to the children of their
//! lowest common ancestor, so `agents::router -> node::table` is the edge `agents -> node`, and
//! a child using its parent (or a parent its child) is no edge at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;

/// The workspace's library and binary crates: name, source root.
const CRATES: &[(&str, &str)] = &[
    ("tether-actors", "actors/src"),
    ("tether-supervision", "supervision/src"),
    ("tether-cluster", "cluster/src"),
    ("tether-node-local", "node-local/src"),
    ("tether-node-remote", "node-remote/src"),
    ("tether", "src"),
    ("tether-bench", "bench/src"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, with its module path (`a::b` for `a/b.rs` or `a/b/mod.rs`).
fn modules(dir: &Path) -> Vec<(Vec<String>, PathBuf)> {
    fn walk(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                let mut next = prefix.to_vec();
                next.push(name);
                walk(&p, &next, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let mut path = prefix.to_vec();
                let crate_root = prefix.is_empty() && matches!(name.as_str(), "lib" | "main");
                if !crate_root && name != "mod" {
                    path.push(name);
                }
                out.push((path, p));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &[], &mut out);
    out
}

/// The text of a file without its `#[cfg(test)]` items (from the first one on: tests come
/// last, as the house style has it).
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// `(name, first line, lines)` of every function whose body is written out in `text`.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let t = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        let Some(rest) = t.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // the body: from the first `{` after the signature to its matching `}`
        let mut depth = 0i64;
        let mut opened = false;
        let mut end = None;
        'scan: for (j, l) in lines.iter().enumerate().skip(i) {
            let code = l.split("//").next().unwrap_or("");
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened && depth == 0 => break 'scan, // a declaration
                    _ => {}
                }
                if opened && depth == 0 {
                    end = Some(j);
                    break 'scan;
                }
            }
        }
        if let Some(end) = end {
            out.push((name, i + 1, end - i + 1));
        }
    }
    out
}

/// The module paths `text` (in module `me`) refers to through `crate::` and `super::`.
fn references(me: &[String], text: &str, is_mod_rs: bool) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> Vec<String> {
        let mut path = Vec::new();
        let mut rest = s;
        loop {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                break;
            }
            rest = &rest[name.len()..];
            path.push(name);
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        path
    };
    let mut at = 0;
    while let Some(pos) = code[at..].find("crate::") {
        let start = at + pos;
        at = start + 7;
        let before = code[..start].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `$crate::` or `tether_actors::crate...`
        }
        out.insert(ident(&code[at..]));
    }
    let mut at = 0;
    while let Some(pos) = code[at..].find("super::") {
        let start = at + pos;
        at = start + 7;
        let before = code[..start].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        // `super` of a `foo.rs` or `foo/mod.rs` module is its parent
        let mut base = me.to_vec();
        let _ = is_mod_rs;
        base.pop();
        let mut rest = &code[at..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        base.extend(ident(rest));
        out.insert(base);
    }
    out
}

/// Cycles among the sibling modules of each crate, as `a -> b -> a` strings.
fn cycles(mods: &[(Vec<String>, PathBuf)]) -> Vec<String> {
    let known: BTreeSet<Vec<String>> = mods.iter().map(|(m, _)| m.clone()).collect();
    // the longest known module that is a prefix of `path`
    let resolve = |path: &[String]| -> Vec<String> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| known.contains(p))
            .unwrap_or_default()
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, file) in mods {
        let text = std::fs::read_to_string(file).unwrap();
        let is_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
        for r in references(m, without_tests(&text), is_mod_rs) {
            let to = resolve(&r);
            let common = m.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common >= m.len() || common >= to.len() {
                continue; // an ancestor or a descendant
            }
            let a = m[..=common].to_vec();
            let b = to[..=common].to_vec();
            edges.entry(a).or_default().insert(b);
        }
    }
    let mut found = Vec::new();
    let mut seen_cycles = BTreeSet::new();
    for start in edges.keys() {
        // depth-first search for a path back to `start`
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut visited = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    let mut key: Vec<Vec<String>> = path.clone();
                    key.sort();
                    if seen_cycles.insert(key) {
                        let names: Vec<String> = path
                            .iter()
                            .chain(std::iter::once(start))
                            .map(|p| p.join("::"))
                            .collect();
                        found.push(names.join(" -> "));
                    }
                } else if visited.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found
}

#[test]
fn no_source_file_or_function_is_too_long() {
    let mut long = Vec::new();
    for (_, dir) in CRATES {
        for (_, file) in modules(&root().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = without_tests(&text);
            let rel = file.strip_prefix(root()).unwrap().display().to_string();
            let n = code.lines().count();
            if n > MAX_FILE_LINES {
                long.push(format!("{rel}: {n} lines (at most {MAX_FILE_LINES})"));
            }
            for (name, line, len) in functions(code) {
                if len > MAX_FN_LINES {
                    long.push(format!(
                        "{rel}:{line}: fn {name} is {len} lines (at most {MAX_FN_LINES})"
                    ));
                }
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

#[test]
fn no_import_cycle_between_sibling_modules() {
    let mut all = Vec::new();
    for (name, dir) in CRATES {
        for c in cycles(&modules(&root().join(dir))) {
            all.push(format!("{name}: {c}"));
        }
    }
    assert!(all.is_empty(), "import cycles:\n{}", all.join("\n"));
}

#[test]
fn crate_dependencies_point_one_way() {
    // which workspace crates each may use, by the layering of DESIGN.md
    let allowed: &[(&str, &[&str])] = &[
        ("actors", &[]),
        ("supervision", &["tether-actors"]),
        ("cluster", &["tether-actors", "tether-supervision"]),
        (
            "node-local",
            &["tether-actors", "tether-supervision", "tether-cluster"],
        ),
        (
            "node-remote",
            &["tether-actors", "tether-supervision", "tether-cluster"],
        ),
    ];
    let workspace = [
        "tether-actors",
        "tether-supervision",
        "tether-cluster",
        "tether-node-local",
        "tether-node-remote",
    ];
    let mut wrong = Vec::new();
    for (dir, ok) in allowed {
        let manifest = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        for line in manifest.lines() {
            let dep = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
            if workspace.contains(&dep) && !ok.contains(&dep) {
                wrong.push(format!("{dir}/Cargo.toml depends on {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_checks_see_what_they_check() {
    // a cycle and a long function, made up, are found
    let text = "fn short() {\n}\nfn long() {\n".to_owned() + &"x;\n".repeat(120) + "}\n";
    let f = functions(&text);
    assert_eq!(f.len(), 2);
    assert!(f
        .iter()
        .any(|(n, _, len)| n == "long" && *len > MAX_FN_LINES));
    let dir = std::env::temp_dir().join(format!("tether-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod a; mod b;").unwrap();
    std::fs::write(dir.join("a.rs"), "mod inner;").unwrap();
    std::fs::write(dir.join("a/inner.rs"), "use crate::b::Thing;").unwrap();
    std::fs::write(dir.join("b.rs"), "fn f() { crate::a::g() }").unwrap();
    let found = cycles(&modules(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found, ["a -> b -> a"]);
}
