//! Every relative link in README.md, CHANGELOG.md and docs/*.md leads
//! somewhere: `[text](path)` to a file or directory of the repository,
//! `[text](path#anchor)` and `[text](#anchor)` to a heading of that Markdown
//! file, by GitHub's rule for heading anchors. Links to `http(s)://` and
//! `mailto:` are not followed; links inside fenced code blocks and inline
//! code are not links.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pages checked: README.md, CHANGELOG.md and every `docs/*.md`.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of `text` outside fenced code blocks (``` or ~~~), numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) => fence = None,
            Some(_) => {}
            None if t.starts_with("```") => fence = Some("```"),
            None if t.starts_with("~~~") => fence = Some("~~~"),
            None => out.push((i + 1, line)),
        }
    }
    out
}

/// `line` with its inline code spans (`...`) blanked out.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// The targets of the inline links `[text](target)` and of the reference
/// definitions `[label]: target` on one line (code spans already removed).
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(end) = trimmed.find("]:")
    {
        if let Some(t) = trimmed[end + 2..].split_whitespace().next() {
            out.push(t.trim_matches(['<', '>']).to_string());
        }
        return out;
    }
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after
            .find(|c: char| c == ')' || c.is_whitespace())
            .unwrap_or(after.len());
        out.push(after[..end].trim_matches(['<', '>']).to_string());
        rest = &after[end..];
    }
    out
}

/// A heading's text as GitHub renders it for its anchor: links reduced to
/// their text.
fn heading_text(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// GitHub's anchor for a heading: lower-cased, every character that is not
/// a letter, a digit, a space, `-` or `_` removed, spaces made `-`.
fn slug(heading: &str) -> String {
    heading_text(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown text's ATX headings; a repeated one gets `-1`,
/// `-2`, ... as on GitHub.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with([' ', '\t']) {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim_end();
        let base = slug(title);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Every broken relative link of the page at `path` whose text is `text`, as
/// `path:line: target: why`. `read` gives the text of another Markdown file.
fn broken_links(path: &Path, text: &str, read: &dyn Fn(&Path) -> Option<String>) -> Vec<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        for target in link_targets(&without_code_spans(line)) {
            let lower = target.to_ascii_lowercase();
            if target.is_empty()
                || lower.starts_with("http://")
                || lower.starts_with("https://")
                || lower.starts_with("mailto:")
            {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let where_ = format!("{}:{n}: {target}", path.display());
            let linked = if file.is_empty() {
                path.to_path_buf()
            } else {
                dir.join(file)
            };
            if !file.is_empty() && !linked.exists() {
                out.push(format!("{where_}: no such file or directory"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let Some(other) = (if file.is_empty() {
                Some(text.to_string())
            } else {
                read(&linked)
            }) else {
                out.push(format!(
                    "{where_}: an anchor into a file that is not Markdown"
                ));
                continue;
            };
            if !anchors(&other).iter().any(|a| a == anchor) {
                out.push(format!("{where_}: no heading has the anchor #{anchor}"));
            }
        }
    }
    out
}

fn read_markdown(path: &Path) -> Option<String> {
    let md = path.extension().is_some_and(|x| x == "md");
    md.then(|| fs::read_to_string(path).ok()).flatten()
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        broken.extend(broken_links(&page, &text, &read_markdown));
    }
    let root = format!("{}/", root().display());
    let broken: Vec<String> = broken.iter().map(|b| b.replacen(&root, "", 1)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_githubs_rule() {
    for (heading, want) in [
        ("Persona's delivery model", "personas-delivery-model"),
        (
            "Edge gateway (TLS, several routes)",
            "edge-gateway-tls-several-routes",
        ),
        ("`[server] max_buffered`", "server-max_buffered"),
        ("Reload and shutdown", "reload-and-shutdown"),
        (
            "See [Tracing](operations.md#tracing) too",
            "see-tracing-too",
        ),
        ("1.5 s, 3 × more", "15-s-3--more"),
    ] {
        assert_eq!(slug(heading), want, "{heading}");
    }
    let text = "# A\n## Notes\n```\n# not a heading\n```\n### Notes\n## Notes\n";
    assert_eq!(anchors(text), ["a", "notes", "notes-1", "notes-2"]);
}

/// The checker itself finds what it is for: a link to a missing file, an
/// unknown anchor in another page and in the same page; it lets through
/// good links, web links and whatever sits in code.
#[test]
fn the_checker_reports_missing_files_and_unknown_anchors() {
    let page = root().join("docs").join("example.md");
    let text = "# Example\n\n## Good part\n\n\
        [ok](#good-part) [ok](../README.md) [ok](../README.md#the-two-commands) \
        [web](https://example.com/x#y) `[code](nowhere.md)`\n\
        ```\n[fenced](nowhere.md)\n```\n\
        [gone](no-such-page.md) [bad](../README.md#no-such-heading) [here](#nor-this)\n";
    let broken = broken_links(&page, text, &read_markdown);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].ends_with("no-such-page.md: no such file or directory"));
    assert!(broken[1].ends_with("no heading has the anchor #no-such-heading"));
    assert!(broken[2].ends_with("no heading has the anchor #nor-this"));
}
