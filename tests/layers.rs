//! The layering of `src/`, checked by a tool rather than by eye: every `crate::` and `super::`
//! path in the non-test code of each module must name a module of its own layer or one below.
//!
//! Layers, bottom up: `config`, `hub`, `fault` and `telemetry` (the process's logging and
//! OTLP set-up, which reads only the configuration); `model`; `actors`; `api` (the front ends);
//! `tools` (bench, doctor, the command line); the crate root (`lib.rs`, which wires them) and
//! `main.rs`. So the configuration knows nothing above it, the actors never know the front ends,
//! and the server library never knows its client tools.

use std::path::{Path, PathBuf};

fn layer_of(top: &str) -> Option<usize> {
    Some(match top {
        "config" | "fault" | "hub" | "telemetry" => 0,
        "model" => 1,
        "actors" => 2,
        "api" => 3,
        "tools" => 4,
        "" => 5, // the crate root
        _ => return None,
    })
}

/// `src/actors/router.rs` → `["actors", "router"]`; `src/actors/mod.rs` → `["actors"]`;
/// `src/lib.rs` → `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The first segments of every path following `prefix` (`crate::`, `super::`), expanding
/// `prefix{a::x, b}` groups.
fn references(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = 0;
            for (j, c) in group.char_indices() {
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
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let first: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !first.is_empty() {
                            out.push(first);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let first: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(first);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    assert!(all.len() > 20, "found {} files", all.len());
    let mut violations = Vec::new();
    for file in &all {
        let module = module_path(&src, file);
        let own = module.first().map_or("", String::as_str);
        let own_layer = layer_of(own)
            .unwrap_or_else(|| panic!("{}: module {own} has no layer", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        // Non-test code, without comments (doc comments name modules in prose).
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut named: Vec<String> = references(&code, "crate::");
        // `super::x` from module m is parent(m)::x; at the top of the tree that is the root.
        let parent = &module[..module.len().saturating_sub(1)];
        for first in references(&code, "super::") {
            named.push(match parent.first() {
                Some(top) => top.clone(),
                None => first,
            });
        }
        for top in named {
            // A root item (`crate::Listeners`) is the root's layer; a module names its own.
            let target = layer_of(&top).unwrap_or(5);
            if target > own_layer {
                violations.push(format!(
                    "{} (layer {own_layer}) names `{top}` (layer {target})",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports going up a layer:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_nested_imports() {
    let refs = references(
        "use crate::{actors::{a, b}, config::Config};\nlet x = crate::api::f();",
        "crate::",
    );
    assert_eq!(refs, ["actors", "config", "api"]);
    assert_eq!(
        references("use super::{Shared, error::X};", "super::"),
        ["Shared", "error"]
    );
}
