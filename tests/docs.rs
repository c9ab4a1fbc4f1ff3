//! The documentation holds together (no server needed): every relative link in README.md and
//! docs/*.md (where docs/ exists) names a file of the repository, and a `#section` in it a
//! heading of that file (as GitHub makes anchors); every `make` target named in a command (a code
//! span or a code block) is a target of the Makefile.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md (docs/ is read where it exists: the README may hold it all).
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    let dir = root().join("docs");
    if dir.is_dir() {
        let mut more: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        more.sort();
        docs.extend(more);
    }
    docs
}

/// `text`'s lines outside fenced code blocks and inside them: a `# comment` in a shell block is
/// not a heading, nor a `[x](y)` in a code sample a link, but a `make` there is a command.
fn fenced(text: &str) -> (Vec<&str>, Vec<&str>) {
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    let mut in_block = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if in_block {
            inside.push(l);
        } else {
            outside.push(l);
        }
    }
    (outside, inside)
}

/// The lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    fenced(text).0
}

/// `line` without its inline code spans (`` `a](b)` `` is not a link).
fn outside_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// The inline code spans of `line`.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces made hyphens; a repeated heading gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text) {
        let Some(title) = line
            .strip_prefix('#')
            .map(|t| t.trim_start_matches('#'))
            .filter(|t| t.starts_with(' '))
        else {
            continue;
        };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// Every `[text](target)` link's target in `text`'s prose.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let line = outside_code_spans(line);
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else {
                break;
            };
            out.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let here = doc.parent().unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.clone()
            } else {
                here.join(path)
            };
            let name = doc.strip_prefix(root()).unwrap().display().to_string();
            if !file.exists() {
                broken.push(format!("{name}: ({target}): no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let heads = anchors(&std::fs::read_to_string(&file).unwrap_or_default());
                if !heads.contains(anchor) {
                    broken.push(format!(
                        "{name}: ({target}): no heading makes #{anchor} in {}",
                        file.strip_prefix(root()).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    // Once docs/ holds pages, the README links into them (the parser itself is pinned by
    // the_checks_read_markdown_as_github_does; a README without relative links has none to check).
    if root().join("docs").is_dir() {
        assert!(
            checked > 0,
            "docs/ exists but no document links to a file of the repository"
        );
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets the Makefile defines (`name:` at the start of a line).
fn make_targets() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("Makefile"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, _) = l.split_once(':')?;
            (!name.is_empty()
                && !l.starts_with('\t')
                && !l.contains(":=")
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .then(|| name.to_string())
        })
        .collect()
}

/// The targets of every `make X` in a command (an inline code span or a code block).
fn make_commands(text: &str) -> Vec<String> {
    let (outside, mut commands) = fenced(text);
    commands.extend(outside.into_iter().flat_map(code_spans));
    let mut out = Vec::new();
    for c in commands {
        let words: Vec<&str> = c.split_whitespace().collect();
        for w in words.windows(2) {
            let target = w[1].trim_end_matches([';', ')', ',']);
            if w[0] == "make"
                && !target.starts_with('-')
                && !target.contains('=')
                && target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                out.push(target.to_string());
            }
        }
    }
    out
}

#[test]
fn every_make_target_the_docs_name_exists() {
    let targets = make_targets();
    assert!(
        ["run", "test", "bench", "test-docker"]
            .iter()
            .all(|t| targets.contains(*t)),
        "the Makefile parse found {targets:?}"
    );
    let mut named = 0;
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for t in make_commands(&text) {
            named += 1;
            if !targets.contains(&t) {
                missing.push(format!(
                    "{}: `make {t}`",
                    doc.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(named > 5, "only {named} make commands found");
    assert!(
        missing.is_empty(),
        "make targets the Makefile lacks:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_checks_read_markdown_as_github_does() {
    let text = "# actor-infer\n## What runs\n## Operating it: metrics, dashboard, doctor\n\
                ## Open Inference Protocol (KServe v2 / Triton)\n## What runs\n\
                ```sh\n# not a heading [no](link.md) make nothing\n```\n\
                see [a](b.md#c) and `[not](a-link)` and `make run` or `cd x && make bench`\n";
    let a = anchors(text);
    for want in [
        "actor-infer",
        "what-runs",
        "what-runs-1",
        "operating-it-metrics-dashboard-doctor",
        "open-inference-protocol-kserve-v2--triton",
    ] {
        assert!(a.contains(want), "{want} not in {a:?}");
    }
    assert!(!a.iter().any(|x| x.contains("not-a-heading")), "{a:?}");
    assert_eq!(links(text), ["b.md#c"]);
    assert_eq!(make_commands(text), ["nothing", "run", "bench"]);
    assert!(Path::new(&root().join("Makefile")).is_file());
}
