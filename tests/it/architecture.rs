//! The layout rule of `src/`: data flows one way, so no top-level module
//! imports (through `crate::...`) a module that imports it, directly or
//! through others; and inside each folder, no file imports a sibling that
//! imports it (`mod.rs`, the folder's own root, is left out). Unit-test
//! modules are left out, inline (`#[cfg(test)] mod tests { .. }`) or in
//! their own `tests.rs` or `tests/`: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A unit-test module in a file or folder of its own (`tests.rs`, `tests/`).
fn is_unit_tests(path: &Path) -> bool {
    path.file_stem().is_some_and(|s| s == "tests")
}

/// Each top-level module of `src/` (a file, a folder, or both) with its
/// files, unit tests left out.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src/") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if is_unit_tests(&path) {
            continue;
        }
        if path.is_dir() {
            let mut files = Vec::new();
            let mut todo = vec![path];
            while let Some(dir) = todo.pop() {
                for e in std::fs::read_dir(&dir).expect("dir") {
                    let p = e.expect("entry").path();
                    if is_unit_tests(&p) {
                        continue;
                    }
                    if p.is_dir() {
                        todo.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        files.push(p);
                    }
                }
            }
            out.entry(name).or_default().extend(files);
        } else if path.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            // `x.rs` and its folder `x/` (its submodules) are one module.
            out.entry(name).or_default().push(path);
        }
    }
    out
}

/// The code of a file without comments and without its unit-test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module names that follow `prefix` (`crate::`, `super::`) in `text`.
fn names_after<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> {
    text.match_indices(prefix).map(move |(i, _)| {
        let rest = &text[i + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .unwrap_or(rest.len());
        &rest[..end]
    })
}

/// The top-level modules named as `crate::<name>` in `text`.
fn mentions(text: &str, known: &BTreeMap<String, Vec<PathBuf>>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for name in names_after(text, "crate::") {
        if known.contains_key(name) {
            out.insert(name.to_string());
        }
    }
    out
}

/// A path `from -> ... -> from`, if `from` reaches itself.
fn cycle_through(from: &str, graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in &graph[&at] {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let mut graph = BTreeMap::new();
    for (name, files) in &mods {
        let mut deps = BTreeSet::new();
        for f in files {
            let text = std::fs::read_to_string(f).expect("source file");
            deps.extend(mentions(&code(&text), &mods));
        }
        deps.remove(name);
        graph.insert(name.clone(), deps);
    }
    graph
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let graph = import_graph();
    assert!(graph.len() > 10, "src/ not read: {graph:?}");
    // The rule has teeth: the data flow's own edges are seen.
    assert!(graph["proxy"].contains("generation"), "{graph:?}");
    assert!(graph["generation"].contains("tokens"), "{graph:?}");
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_through(m, &graph))
        .map(|p| p.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

/// Inside each folder of `src/`: its files (and subfolders) other than
/// `mod.rs`, with the siblings each names as `super::<name>` or
/// `crate::<folder>::<name>`.
fn folder_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/") {
        let dir = entry.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        let children = modules(&dir);
        let mut graph = BTreeMap::new();
        for (name, files) in &children {
            if name == "mod" {
                continue;
            }
            let mut deps = BTreeSet::new();
            for f in files {
                let text = code(&std::fs::read_to_string(f).expect("source file"));
                let text = text.replace(&format!("crate::{folder}::"), "super::");
                for dep in names_after(&text, "super::") {
                    if dep != name && dep != "mod" && children.contains_key(dep) {
                        deps.insert(dep.to_string());
                    }
                }
            }
            graph.insert(name.clone(), deps);
        }
        out.insert(folder, graph);
    }
    out
}

#[test]
fn no_file_imports_a_sibling_that_imports_it() {
    let folders = folder_graphs();
    assert!(folders.len() >= 8, "folders not read: {folders:?}");
    // The rule has teeth: a known sibling edge is seen.
    assert!(
        folders["generation"]["upstream"].contains("breaker"),
        "{folders:?}"
    );
    let mut cycles = Vec::new();
    for (folder, graph) in &folders {
        for m in graph.keys() {
            if let Some(p) = cycle_through(m, graph) {
                cycles.push(format!("{folder}/: {}", p.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_circle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    g.insert("d".into(), ["a".to_string()].into());
    assert_eq!(
        cycle_through("a", &g).map(|p| p.join(" -> ")),
        Some("a -> b -> c -> a".into())
    );
    assert_eq!(cycle_through("d", &g), None);
}

/// The layers of the README's Design table, bottom first: each row's
/// modules (`clock.rs` -> `clock`, `config/` -> `config`).
fn readme_layers() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let design = &readme[readme.find("## Design").expect("a Design section")..];
    design
        .lines()
        .skip_while(|l| !l.starts_with("| module |"))
        .skip(2)
        .take_while(|l| l.starts_with("| `"))
        .map(|l| {
            let first = l.split('|').nth(1).unwrap_or("");
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|m| m.trim_end_matches(".rs").trim_end_matches('/').to_string())
                .collect()
        })
        .collect()
}

/// Modules `lib.rs` declares only for tests (`#[cfg(test)] mod x;`).
fn test_only_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("lib.rs");
    let lines: Vec<&str> = lib.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0].trim() == "#[cfg(test)]")
        .filter_map(|w| {
            let m = w[1].trim().strip_prefix("mod ")?;
            Some(m.trim_end_matches(';').to_string())
        })
        .collect()
}

/// Every import that goes down the README's table (a module naming one of
/// a row listed after its own), as `from -> to`.
fn layer_inversions(
    layers: &[Vec<String>],
    graph: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let layer_of = |m: &str| layers.iter().position(|row| row.iter().any(|x| x == m));
    let mut out = Vec::new();
    for (from, deps) in graph {
        let Some(lf) = layer_of(from) else { continue };
        for to in deps {
            if layer_of(to).is_some_and(|lt| lt > lf) {
                out.push(format!("{from} -> {to}"));
            }
        }
    }
    out
}

#[test]
fn no_module_imports_one_listed_above_it_in_the_readme() {
    let layers = readme_layers();
    assert!(
        layers.len() >= 8,
        "the README's Design table was not read: {layers:?}"
    );
    let mut graph = import_graph();
    for m in test_only_modules() {
        graph.remove(&m);
    }
    // The table names every module, so a new one needs a place in it.
    let listed: BTreeSet<&String> = layers.iter().flatten().collect();
    let missing: Vec<&String> = graph.keys().filter(|m| !listed.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "modules missing from the README's Design table: {missing:?}"
    );
    let bad = layer_inversions(&layers, &graph);
    assert!(
        bad.is_empty(),
        "imports against the README's layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_layer_check_finds_an_inversion() {
    let layers = vec![
        vec!["clock".to_string(), "metrics".to_string()],
        vec!["net".to_string()],
    ];
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("net".into(), ["metrics".to_string()].into());
    assert!(layer_inversions(&layers, &g).is_empty());
    g.insert(
        "metrics".into(),
        ["net".to_string(), "clock".to_string()].into(),
    );
    assert_eq!(layer_inversions(&layers, &g), ["metrics -> net"]);
}

/// The proxy's three seams, each one file (see `src/proxy/mod.rs`): the
/// calls that choose a token, change a token's or an upstream's state, or
/// build a degraded answer, with the one file each may appear in.
const SEAMS: [(&str, &str); 17] = [
    (".pick(", "choose.rs"),
    (".choose_by(", "choose.rs"),
    (".trial_token(", "choose.rs"),
    ("health_failure(", "record.rs"),
    ("health_success(", "record.rs"),
    ("mark_healthy(", "record.rs"),
    ("mark_degraded(", "record.rs"),
    ("record_success(", "record.rs"),
    ("mark_rejected(", "record.rs"),
    (".recovered(", "record.rs"),
    ("clear_suspect(", "record.rs"),
    (".cool_down(", "record.rs"),
    ("evidence.suspect(", "record.rs"),
    ("auth.trip(", "record.rs"),
    ("auth.success(", "record.rs"),
    ("respond::degraded(", "degrade.rs"),
    ("respond::unavailable(", "degrade.rs"),
];

/// Each `(call, file)` of `seams` found in a file of `files` other than
/// its own, as `file: call`.
fn seams_crossed(files: &[(String, String)], seams: &[(&str, &str)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, text) in files {
        for (call, home) in seams {
            if name != home && code(text).contains(call) {
                bad.push(format!("{name}: {call}"));
            }
        }
    }
    bad
}

#[test]
fn the_proxy_chooses_tokens_records_outcomes_and_degrades_in_one_file_each() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy");
    let files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("src/proxy")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read"))
        })
        .collect();
    assert!(files.iter().any(|(n, _)| n == "choose.rs"));
    let bad = seams_crossed(&files, &SEAMS);
    assert!(
        bad.is_empty(),
        "a seam's call outside its file:\n{}",
        bad.join("\n")
    );
    // The check finds one.
    let planted = vec![(
        "mod.rs".to_string(),
        "fn f() { up.tokens.pick(0, now); }".to_string(),
    )];
    assert_eq!(seams_crossed(&planted, &SEAMS), ["mod.rs: .pick("]);
}
