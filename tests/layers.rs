//! The layer rule of `src/lib.rs`, checked: every module imports only its own layer or lower
//! ones, and no two modules import each other, directly or around a loop.
//!
//! The table is read from `src/lib.rs` itself (rows `//! | module | layer | owns |`), so the
//! documentation and the check cannot drift apart. A file belongs to the longest module in
//! the table that contains it (`rollout/policy_file.rs` → `rollout::policy_file`,
//! `measure/sink.rs` → `measure` when only `measure` is listed). An import is any path that
//! starts with `crate::`, `super::` or `self::` outside comments and outside the file's
//! `#[cfg(test)]` module: a unit test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One row of the table: module path (without `crate::`) → layer number.
fn layer_table() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    let mut table = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let module = cells[0].trim_matches('`');
        let Some(layer) = cells[1].strip_prefix('L').and_then(|l| l.parse().ok()) else {
            continue;
        };
        assert!(
            table.insert(module.to_owned(), layer).is_none(),
            "`{module}` is listed twice in the layer table"
        );
    }
    assert!(table.len() > 10, "no layer table found in src/lib.rs");
    table
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/rollout/policy.rs` → `["rollout", "policy"]`; `src/measure/mod.rs` → `["measure"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut segs: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        segs.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        segs.pop();
    }
    segs
}

/// The code of a file without comments and without its unit-test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Flattens one `use` tree (`a::{b, c::{d}}`) into paths.
fn flatten(tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let prefix = tree[..open].trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').expect("balanced braces")];
        let mut depth = 0;
        let mut start = 0;
        let mut parts = Vec::new();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&inner[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let mut sub = Vec::new();
            flatten(part, &mut sub);
            for s in sub {
                if s == "self" {
                    out.push(prefix.to_owned());
                } else if prefix.is_empty() {
                    out.push(s);
                } else {
                    out.push(format!("{prefix}::{s}"));
                }
            }
        }
    } else {
        out.push(tree.split(" as ").next().unwrap_or(tree).trim().to_owned());
    }
}

/// Every crate path a file names, made absolute (segments after `crate`).
fn imports_of(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    // `use` statements, whose braces hold several paths.
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        let tree = &rest[..end];
        if tree.starts_with("crate::") || tree.starts_with("super::") || tree.starts_with("self::")
        {
            flatten(tree, &mut paths);
        }
    }
    // Inline paths such as `crate::measure::Meter::start(…)`.
    for start in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(start) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let braced = tail[len..].starts_with('{');
            if !braced && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                paths.push(tail[..len].trim_end_matches(':').to_owned());
            }
            rest = &rest[at + start.len()..];
        }
    }
    paths
        .into_iter()
        .filter_map(|p| absolute(module, &p))
        .collect()
}

fn absolute(module: &[String], path: &str) -> Option<Vec<String>> {
    let mut segs = path.split("::").filter(|s| !s.is_empty()).peekable();
    let mut base: Vec<String> = match segs.peek().copied() {
        Some("crate") => {
            segs.next();
            Vec::new()
        }
        Some("super" | "self") => module.to_vec(),
        _ => return None,
    };
    while let Some(&s) = segs.peek() {
        match s {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        segs.next();
    }
    base.extend(segs.map(str::to_owned));
    Some(base)
}

/// The table entry a module path belongs to: the longest listed prefix.
fn owner(table: &BTreeMap<String, u32>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| table.contains_key(m))
}

/// Module → modules it imports (table entries, itself excluded).
fn graph(table: &BTreeMap<String, u32>) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&file);
        // lib.rs and main.rs (the crate root and the binary) sit above all; a `tests.rs`
        // file is a unit-test module, which may reach anywhere.
        if module.is_empty() || module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        let from = owner(table, &module).unwrap_or_else(|| {
            panic!(
                "{} is in no row of the layer table in src/lib.rs",
                file.display()
            )
        });
        let text = std::fs::read_to_string(&file).expect("readable source");
        for import in imports_of(&module, &code_of(&text)) {
            if let Some(to) = owner(table, &import)
                && to != from
            {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let table = layer_table();
    let mut upward = Vec::new();
    for (from, tos) in graph(&table) {
        for to in tos {
            if table[&to] > table[&from] {
                upward.push(format!(
                    "{from} (L{}) imports {to} (L{})",
                    table[&from], table[&to]
                ));
            }
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn no_two_modules_import_each_other_even_around_a_loop() {
    let table = layer_table();
    let edges = graph(&table);
    // Tarjan's strongly connected components; any component of two or more is a cycle.
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        cycles: Vec<Vec<&'a str>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort_unstable();
                    self.cycles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        cycles: Vec::new(),
    };
    for v in table.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    let cycles: Vec<String> = walk.cycles.iter().map(|c| c.join(" ↔ ")).collect();
    assert!(
        cycles.is_empty(),
        "modules that import each other:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn every_module_of_the_crate_has_a_row_in_the_layer_table() {
    let table = layer_table();
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    for line in lib.lines() {
        let name = ["pub mod ", "pub(crate) mod ", "mod "]
            .iter()
            .find_map(|p| line.strip_prefix(p));
        if let Some(name) = name {
            let name = name.trim_end_matches(';');
            assert!(
                table.contains_key(name),
                "`{name}` has no row in the layer table"
            );
        }
    }
}
