//! The layer rule of `src/`, checked by reading its imports.
//!
//! Arrows only point down:
//!
//! ```text
//! server → agent → {store, audit, watch, alerts, hooks, metrics, openbao,
//!                   hygiene, sockets} → wire → {policy, rotation, keyset,
//!                   secret, config} and proto
//! ```
//!
//! - nothing below `server` imports `server`, nothing below `agent` imports
//!   `agent`; modules of the middle tier may import each other, and so may
//!   those of the pure core;
//! - the pure core imports no wire types (`proto`, `wire`): conversions live
//!   at the edge, in `wire`;
//! - no files of `src/` import each other, directly or round a circle.
//!
//! An import is any `crate::`, `super::` or `self::` path in the code (not
//! in comments, and not in test modules), and `use child::…` of a module the
//! file declares. The binaries (`src/bin`) are above everything and are not
//! checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The tier of each top-level module of `src/`: a module may import only
/// tiers below its own, or its own tier where siblings are allowed.
fn tier(module: &str) -> Option<u8> {
    Some(match module {
        "secret" | "keyset" | "policy" | "rotation" | "config" | "proto" => 0,
        "wire" => 1,
        "store" | "audit" | "watch" | "alerts" | "hooks" | "metrics" | "openbao" | "hygiene" | "sockets"
        | "outbound" => 2,
        "agent" => 3,
        "server" | "client" => 4,
        "lib" => 5,
        _ => return None,
    })
}

/// Tiers whose modules may import each other (cycles aside).
fn siblings_allowed(tier: u8) -> bool {
    tier == 0 || tier == 2
}

/// The pure core: no wire types.
const CORE: [&str; 5] = ["secret", "keyset", "policy", "rotation", "config"];

/// Files of test code: not part of the layering.
fn is_test_file(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name == "tests.rs" || name == "proptests.rs" || name.ends_with("_tests.rs") || rel.contains("/tests/")
}

/// Every `.rs` file under `src` (without `bin/`), by path relative to it.
fn read_tree(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(src, src, &mut files);
    files.retain(|rel, _| !rel.starts_with("bin/"));
    files
}

/// The module path of a file: `agent/mod.rs` and `agent.rs` are `agent`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The file that defines the longest prefix of `path` that is a module.
fn file_of(files: &BTreeMap<String, String>, path: &[String]) -> String {
    for n in (1..=path.len()).rev() {
        let base = path[..n].join("/");
        for candidate in [format!("{base}.rs"), format!("{base}/mod.rs")] {
            if files.contains_key(&candidate) {
                return candidate;
            }
        }
    }
    "lib.rs".to_owned()
}

/// The code of a file without comments and without its test module.
fn code_of(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    if let Some(i) = code.find("#[cfg(test)]\nmod ") {
        code.truncate(i);
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths `code` names, relative to the crate root, as the file
/// of module `me` sees them.
fn imported_paths(code: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let children: BTreeSet<String> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("pub ")
                .or_else(|| l.strip_prefix("pub(crate) "))
                .unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || !is_ident(bytes[i - 1]);
        let rest: String = bytes[i..bytes.len().min(i + 8)].iter().collect();
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|h| at_word && rest.starts_with(h));
        // `pub(in crate::config)` is a visibility, not an import.
        let before: String = bytes[i.saturating_sub(4)..i].iter().collect();
        let Some(head) = head.filter(|_| !before.ends_with("(in ")) else {
            i += 1;
            continue;
        };
        let mut base: Vec<String> = match head {
            "crate::" => Vec::new(),
            "self::" => me.to_vec(),
            _ => me[..me.len().saturating_sub(1)].to_vec(),
        };
        i += head.chars().count();
        let mut segments = Vec::new();
        loop {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            if start == i {
                break;
            }
            let segment: String = bytes[start..i].iter().collect();
            if segment == "super" && segments.is_empty() {
                base.pop();
            } else {
                segments.push(segment);
            }
            if bytes.get(i) == Some(&':') && bytes.get(i + 1) == Some(&':') && bytes.get(i + 2) != Some(&'{') {
                i += 2;
            } else {
                break;
            }
        }
        let mut path = base.clone();
        path.extend(segments.iter().cloned());
        // `a::b::{…}`, or `super::{…}` right after the head.
        let open = if bytes.get(i) == Some(&':') && bytes.get(i + 2) == Some(&'{') {
            Some(i + 2)
        } else if segments.is_empty() && bytes.get(i) == Some(&'{') {
            Some(i)
        } else {
            None
        };
        let group = open.is_some();
        if !group {
            out.push(path.clone());
        }
        // `a::b::{c, d::e}`: each item (the file of `a::b` when an item is
        // defined there, else the module the item names).
        if let Some(open) = open {
            let mut depth = 0;
            let mut end = open;
            for (j, c) in bytes.iter().enumerate().skip(open) {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner: String = bytes[open + 1..end].iter().collect();
            let mut depth = 0;
            let mut item = String::new();
            for c in inner.chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let first = item.split('{').next().unwrap_or("").trim().trim_end_matches("::");
                        let mut p = path.clone();
                        p.extend(
                            first
                                .split("::")
                                .filter(|s| !s.is_empty() && *s != "self")
                                .map(str::to_owned),
                        );
                        out.push(p);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            i = end + 1;
        }
    }
    // `use child::…` of a module this file declares.
    for line in code.lines() {
        let line = line.trim_start();
        let Some(path) = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p))
        else {
            continue;
        };
        if let Some(child) = children.iter().find(|c| path.starts_with(&format!("{c}::"))) {
            let mut p = me.to_vec();
            p.push(child.clone());
            out.push(p);
        }
    }
    out
}

/// What breaks the rule in the tree under `src`, one line each.
fn problems(src: &Path) -> Vec<String> {
    let files = read_tree(src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &files {
        if is_test_file(rel) {
            continue;
        }
        let me = module_of(rel);
        for path in imported_paths(&code_of(text), &me) {
            let target = file_of(&files, &path);
            if std::env::var("LAYERS_DEBUG").is_ok_and(|f| rel.ends_with(&f)) {
                eprintln!("{rel}: {path:?} -> {target}");
            }
            if target != *rel {
                edges.entry(rel.clone()).or_default().insert(target);
            }
        }
    }
    let top = |f: &str| f.split('/').next().unwrap().trim_end_matches(".rs").to_owned();
    let mut found = Vec::new();
    for (from, targets) in &edges {
        let a = top(from);
        let Some(ta) = tier(&a) else {
            found.push(format!(
                "src/{from}: module {a} has no tier: add it to tier() in tests/it/layers.rs"
            ));
            continue;
        };
        for to in targets {
            let b = top(to);
            if a == b || to == "lib.rs" {
                continue;
            }
            let Some(tb) = tier(&b) else { continue };
            if tb > ta || (tb == ta && !siblings_allowed(ta)) {
                found.push(format!(
                    "src/{from} imports src/{to}: {a} may not import {b} (arrows point down)"
                ));
            }
            if CORE.contains(&a.as_str()) && (b == "proto" || b == "wire") {
                found.push(format!(
                    "src/{from} imports src/{to}: the pure core imports no wire types (convert in src/wire.rs)"
                ));
            }
        }
    }
    found.extend(circles(&edges).into_iter().map(|c| {
        let shown: Vec<String> = c.iter().map(|f| format!("src/{f}")).collect();
        format!("these files import each other: {}", shown.join(" → "))
    }));
    found
}

/// The import circles (strongly connected components of two files or more).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.found
}

#[test]
fn src_keeps_the_layer_rule() {
    // LAYERS_SRC checks another tree (e.g. an older checkout's src/).
    let src = std::env::var_os("LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"));
    let found = problems(&src);
    assert!(found.is_empty(), "the layer rule is broken:\n{}", found.join("\n"));
}

/// A tree of `files` (path, text) in a temp dir.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn the_check_catches_upward_imports_wire_types_in_the_core_and_circles() {
    let base = [
        (
            "lib.rs",
            "pub mod agent;\npub mod server;\npub mod store;\npub mod keyset;\npub mod proto;\n",
        ),
        ("server/mod.rs", "use crate::agent::Agent;\n"),
        ("agent/mod.rs", "pub mod a;\npub mod b;\nuse crate::store::Store;\n"),
        ("agent/a.rs", "use super::b::B;\n"),
        ("agent/b.rs", "pub struct B;\n"),
        ("store/mod.rs", "use crate::keyset::KeySet;\n"),
        (
            "keyset.rs",
            "pub struct KeySet;\n// use crate::agent::Agent; (a comment)\n",
        ),
        ("proto.rs", ""),
    ];
    let ok = tree(&base);
    assert_eq!(problems(ok.path()), Vec::<String>::new());

    let mut upward = base.to_vec();
    upward[5] = ("store/mod.rs", "use crate::{keyset::KeySet, agent::Agent};\n");
    let found = problems(tree(&upward).path());
    assert!(
        found.iter().any(|p| p.contains("store may not import agent")),
        "{found:?}"
    );

    let mut wire = base.to_vec();
    wire[6] = ("keyset.rs", "fn f() -> crate::proto::KeySet { todo!() }\n");
    let found = problems(tree(&wire).path());
    assert!(found.iter().any(|p| p.contains("no wire types")), "{found:?}");

    let mut circle = base.to_vec();
    circle[4] = ("agent/b.rs", "use super::a::A;\n");
    let found = problems(tree(&circle).path());
    assert!(
        found
            .iter()
            .any(|p| p.contains("import each other") && p.contains("agent/a.rs")),
        "{found:?}"
    );

    let mut child = base.to_vec();
    child[4] = ("agent/b.rs", "use super::Agent;\n");
    child[2] = ("agent/mod.rs", "pub mod a;\npub mod b;\npub use b::B;\n");
    let found = problems(tree(&child).path());
    assert!(found.iter().any(|p| p.contains("import each other")), "{found:?}");
}
