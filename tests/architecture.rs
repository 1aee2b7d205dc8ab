//! Architecture test: the crate's modules are layered, and a module may only
//! import from modules in a lower layer (a higher number in [`LAYERS`]).
//!
//! The test reads every `.rs` file under `src/` as text, so it needs no crates
//! and sees `#[cfg(test)]` code too. A small lexer drops comments, string and
//! character literals; a scanner over the remaining tokens finds every
//! `crate::X` path (use declarations, grouped and multi-line use trees, path
//! expressions anywhere) plus `super::` chains that climb out of the top-level
//! module, and records the first segment `X` with its line.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The module layering, top (layer 0) to bottom: the same table as in
/// `docs/architecture.md`; change both together.
///
/// A module may import only from modules in a strictly lower layer (a higher
/// index), never from its own layer or above. Names are the top-level modules
/// under `src/` (the first path segment after `crate::`), plus two pseudo
/// modules in layer 0: [`ROOT`] (`src/lib.rs` and the items it defines, such
/// as `Corral` and `run`) and [`BINARY`] (`src/main.rs`, which imports through
/// `corral::`). Listed modules that do not exist yet are simply absent.
const LAYERS: &[&[&str]] = &[
    /* 0 */ &[ROOT, BINARY, "testing"],
    /* 1 */ &["admin"],
    /* 2 */ &["server", "reload"],
    /* 3 */ &["proxy"],
    /* 4 */ &["replay", "cache", "origin"],
    /* 5 */ &["coalesce", "http", "logging", "redis_link", "tls"],
    /* 6 */ &["config", "metrics"],
];

/// The crate root, `src/lib.rs`; `crate::Item` for an item it defines.
const ROOT: &str = "crate";

/// The binary, `src/main.rs`.
const BINARY: &str = "main";

/// Modules that wire everything together, or stand outside the proxy as
/// tools (the test origin and the demo start a whole `Corral`), and may
/// import anything.
const MAY_IMPORT_ANYTHING: &[&str] = &[ROOT, BINARY, "testing"];

/// Modules that may not import anything at all from the crate.
const IMPORTS_NOTHING: &[&str] = &["metrics"];

#[test]
fn modules_import_only_from_layers_below() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&manifest.join("src"), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no .rs files under src/");

    let sources: Vec<(String, String)> = files
        .iter()
        .map(|file| {
            let relative = file
                .strip_prefix(manifest)
                .expect("file under the manifest dir")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            (relative, text)
        })
        .collect();

    let modules: BTreeSet<&str> = sources.iter().map(|(path, _)| module_of(path).0).collect();
    let unlayered: Vec<String> = modules
        .iter()
        .filter(|module| layer_of(module).is_none())
        .map(|module| {
            format!(
                "module {module} has no layer: add it to DESIGN's table \
                 (docs/architecture.md) and to LAYERS in tests/architecture.rs"
            )
        })
        .collect();

    let mut violations = Vec::new();
    for (path, text) in &sources {
        let (module, depth) = module_of(path);
        if MAY_IMPORT_ANYTHING.contains(&module) {
            continue;
        }
        for (line, segment) in crate_references(text, depth) {
            let target = if modules.contains(segment.as_str()) || layer_of(&segment).is_some() {
                segment.as_str()
            } else {
                ROOT
            };
            if let Some((layer, target_layer)) = forbidden(module, target) {
                violations.push((
                    path.clone(),
                    line,
                    module,
                    layer,
                    target.to_owned(),
                    target_layer,
                ));
            }
        }
    }
    violations.sort();
    violations.dedup();

    let mut report = unlayered;
    report.extend(violations.iter().map(|(path, line, module, layer, target, target_layer)| {
        format!("{path}:{line}: {module} (layer {layer}) imports {target} (layer {target_layer})")
    }));
    assert!(
        report.is_empty(),
        "module layering violated ({} problems; layers in docs/architecture.md):\n{}\n",
        report.len(),
        report.join("\n")
    );
}

/// The layer of a module, or `None` if the table does not list it.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `Some((layer of from, layer of to))` if module `from` may not reference
/// module `to`; `None` if it may, or if either has no layer (reported apart).
fn forbidden(from: &str, to: &str) -> Option<(usize, usize)> {
    if from == to || MAY_IMPORT_ANYTHING.contains(&from) {
        return None;
    }
    let (layer, target_layer) = (layer_of(from)?, layer_of(to)?);
    (target_layer <= layer || IMPORTS_NOTHING.contains(&from)).then_some((layer, target_layer))
}

/// The top-level module of a file given relative to the manifest dir
/// (`src/...`), and the depth of the file's module below the crate root
/// (how many `super::` reach the root).
fn module_of(path: &str) -> (&str, usize) {
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match parts.as_slice() {
        ["lib.rs"] => (ROOT, 0),
        ["main.rs"] => (BINARY, 0),
        [file] => (file.strip_suffix(".rs").unwrap_or(file), 1),
        [dir, .., last] => (dir, parts.len() - usize::from(*last == "mod.rs")),
        [] => panic!("not a file under src/: {path}"),
    }
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Every reference from `source` to something at the crate's top level, as
/// `(line, first segment)`: `crate::X` and `use crate::{X, ..}` anywhere in
/// code, and `super::..::X` chains that climb to the root from a file whose
/// module is `depth` levels below it. A glob or `self` of the root itself
/// yields [`ROOT`].
fn crate_references(source: &str, depth: usize) -> Vec<(usize, String)> {
    let tokens = tokenize(source);
    let mut refs = Vec::new();
    // One entry per open `{`: whether it opens an inline `mod name { .. }`.
    let mut braces: Vec<bool> = Vec::new();
    let mut next_brace_opens_mod = false;
    for (i, (token, _)) in tokens.iter().enumerate() {
        let continues_path = i > 0 && tokens[i - 1].0 == Tok::PathSep;
        match token {
            Tok::Punct('{') => {
                braces.push(next_brace_opens_mod);
                next_brace_opens_mod = false;
            }
            Tok::Punct('}') => {
                braces.pop();
            }
            Tok::Ident(word) if word == "mod" => {
                next_brace_opens_mod = matches!(tokens.get(i + 1), Some((Tok::Ident(_), _)))
                    && matches!(tokens.get(i + 2), Some((Tok::Punct('{'), _)));
            }
            Tok::Ident(word) if word == "crate" && !continues_path => {
                if matches!(tokens.get(i + 1), Some((Tok::PathSep, _))) {
                    root_segments(&tokens, i + 2, &mut refs);
                }
            }
            Tok::Ident(word) if word == "super" && !continues_path => {
                let mut climbs = 1;
                let mut j = i + 1;
                while matches!(tokens.get(j), Some((Tok::PathSep, _)))
                    && matches!(tokens.get(j + 1), Some((Tok::Ident(w), _)) if w == "super")
                {
                    climbs += 1;
                    j += 2;
                }
                let here = depth + braces.iter().filter(|opens_mod| **opens_mod).count();
                if climbs >= here && matches!(tokens.get(j), Some((Tok::PathSep, _))) {
                    root_segments(&tokens, j + 1, &mut refs);
                }
            }
            _ => {}
        }
    }
    refs
}

/// Records the segment(s) that follow a path to the crate root at `at`:
/// a name, a glob, or a use group.
fn root_segments(tokens: &[(Tok, usize)], at: usize, refs: &mut Vec<(usize, String)>) {
    match tokens.get(at) {
        Some((Tok::Ident(name), line)) => refs.push((*line, root_name(name))),
        Some((Tok::Punct('*'), line)) => refs.push((*line, ROOT.to_owned())),
        Some((Tok::Punct('{'), _)) => {
            use_group(tokens, at, refs);
        }
        _ => {}
    }
}

/// Records the first segment of every element of the use group that opens at
/// `open`, descending into unprefixed nested groups; returns the index after
/// its closing brace.
fn use_group(tokens: &[(Tok, usize)], open: usize, refs: &mut Vec<(usize, String)>) -> usize {
    let mut k = open + 1;
    loop {
        match tokens.get(k) {
            None => return k,
            Some((Tok::Punct('}'), _)) => return k + 1,
            Some((Tok::Punct(','), _)) => {
                k += 1;
                continue;
            }
            Some((Tok::Punct('{'), _)) => k = use_group(tokens, k, refs),
            Some((Tok::Ident(name), line)) => {
                refs.push((*line, root_name(name)));
                k += 1;
            }
            Some((Tok::Punct('*'), line)) => {
                refs.push((*line, ROOT.to_owned()));
                k += 1;
            }
            Some(_) => k += 1,
        }
        // Skip the rest of this element (`::a::{b, c} as d`) up to its `,` or
        // the group's closing brace.
        let mut nested = 0;
        while let Some((token, _)) = tokens.get(k) {
            match token {
                Tok::Punct('{') => nested += 1,
                Tok::Punct('}') if nested == 0 => break,
                Tok::Punct('}') => nested -= 1,
                Tok::Punct(',') if nested == 0 => break,
                _ => {}
            }
            k += 1;
        }
    }
}

/// `self` names the root itself; anything else is a top-level name.
fn root_name(name: &str) -> String {
    if name == "self" { ROOT } else { name }.to_owned()
}

/// A token of Rust source, with comments, whitespace and literals dropped.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// An identifier or keyword (raw identifiers without their `r#`).
    Ident(String),
    /// `::`.
    PathSep,
    /// Any other single character outside literals and comments.
    Punct(char),
}

/// Splits `source` into tokens with their 1-based line numbers, skipping
/// comments (line, doc, nested block), string literals (plain, byte, C, raw),
/// character literals and numbers. Lifetimes come out as identifiers.
fn tokenize(source: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = source.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut open = 1;
            i += 2;
            while i < c.len() && open > 0 {
                if c[i] == '/' && at(i + 1) == '*' {
                    open += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    open -= 1;
                    i += 2;
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i + 1, &mut line);
        } else if ch == '\'' {
            i = skip_char_or_quote(&c, i);
        } else if ch == ':' && at(i + 1) == ':' {
            tokens.push((Tok::PathSep, line));
            i += 2;
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = at(i);
            if matches!(word.as_str(), "b" | "c") && next == '"' {
                i = skip_string(&c, i + 1, &mut line);
            } else if word == "b" && next == '\'' {
                i = skip_char_or_quote(&c, i);
            } else if matches!(word.as_str(), "r" | "br" | "cr") && matches!(next, '"' | '#') {
                let mut hashes = 0;
                while at(i + hashes) == '#' {
                    hashes += 1;
                }
                if at(i + hashes) == '"' {
                    i = skip_raw_string(&c, i + hashes + 1, hashes, &mut line);
                } else if word == "r" && hashes == 1 {
                    // A raw identifier, `r#type`: lexed as `type` next round.
                    i += 1;
                } else {
                    tokens.push((Tok::Ident(word), line));
                }
            } else {
                tokens.push((Tok::Ident(word), line));
            }
        } else {
            tokens.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    tokens
}

/// Skips a string body starting after its opening quote; returns the index
/// after the closing quote.
fn skip_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => {
                *line += usize::from(c.get(i + 1) == Some(&'\n'));
                i += 2;
            }
            '"' => return i + 1,
            other => {
                *line += usize::from(other == '\n');
                i += 1;
            }
        }
    }
    i
}

/// Skips a raw string body starting after its opening quote, up to a quote
/// followed by `hashes` hashes; returns the index after them.
fn skip_raw_string(c: &[char], mut i: usize, hashes: usize, line: &mut usize) -> usize {
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|h| c.get(i + h) == Some(&'#')) {
            return i + 1 + hashes;
        }
        *line += usize::from(c[i] == '\n');
        i += 1;
    }
    i
}

/// At a `'`: skips a character literal (`'x'`, `'\n'`, `'\u{1F600}'`) and
/// returns the index after it, or skips only the quote of a lifetime or label
/// (`'a`, `'static`) so its name is lexed as an identifier.
fn skip_char_or_quote(c: &[char], i: usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        let mut j = i + 3;
        while j < c.len() && c[j] != '\'' {
            j += 1;
        }
        j + 1
    } else if c.get(i + 2) == Some(&'\'') {
        i + 3
    } else {
        i + 1
    }
}

// ---- tests of the parser and the rules -------------------------------------

/// `crate_references` of a top-level file (depth 1).
fn refs(source: &str) -> Vec<(usize, String)> {
    crate_references(source, 1)
}

/// Just the segments, in order.
fn segments(source: &str) -> Vec<String> {
    refs(source)
        .into_iter()
        .map(|(_, segment)| segment)
        .collect()
}

#[test]
fn plain_use_declarations_name_their_module() {
    assert_eq!(
        refs("use crate::config::Config;\nuse crate::http;\n"),
        [(1, "config".to_owned()), (2, "http".to_owned())]
    );
}

#[test]
fn grouped_use_tree_counts_each_module() {
    assert_eq!(
        segments("use crate::{config::Config, http::vary_names, metrics};"),
        ["config", "http", "metrics"]
    );
}

#[test]
fn nested_braces_in_a_multi_line_use_tree_count_each_first_segment_on_its_line() {
    let source = "use crate::{\n    cache::{freshness::{A, B}, key::C},\n    \
                  {origin::D, coalesce},\n    http::{self, E as F},\n};\nuse crate::x;\n";
    assert_eq!(
        refs(source),
        [
            (2, "cache".to_owned()),
            (3, "origin".to_owned()),
            (3, "coalesce".to_owned()),
            (4, "http".to_owned()),
            (6, "x".to_owned()),
        ]
    );
}

#[test]
fn path_expressions_anywhere_in_code_count() {
    let source = "fn f() -> crate::http::Outcome {\n    let v = crate::cache::Variant::new();\n    \
                  <crate::origin::Client as Default>::default();\n    g::<crate::config::Route>()\n}\n";
    assert_eq!(
        refs(source),
        [
            (1, "http".to_owned()),
            (2, "cache".to_owned()),
            (3, "origin".to_owned()),
            (4, "config".to_owned()),
        ]
    );
}

#[test]
fn crate_in_comments_is_not_counted() {
    let source = "// use crate::http;\n/// See [`crate::cache`].\n//! crate::origin\n\
                  /* crate::proxy /* nested crate::server */ still crate::admin */\n\
                  /** crate::reload */ use crate::config;\n";
    assert_eq!(refs(source), [(5, "config".to_owned())]);
}

#[test]
fn crate_in_string_and_char_literals_is_not_counted() {
    let source = r###"
        let a = "use crate::http; \" crate::cache";
        let b = r#"crate::origin "quoted" crate::proxy"#;
        let c = b"crate::server";
        let d = br##"crate::admin"##;
        let e = c"crate::reload";
        let f = ('"', '\'', b'"', '\u{22}');
        #[doc = "crate::coalesce"]
        let g = crate::config::X;
    "###;
    assert_eq!(refs(source), [(9, "config".to_owned())]);
}

#[test]
fn lifetimes_and_raw_identifiers_do_not_confuse_the_lexer() {
    let source = "fn f<'a>(x: &'a str) -> &'static str { 'outer: loop { break 'outer; } }\n\
                  let r#type = crate::http::X; let q = '\"';\nuse crate::cache;\n";
    assert_eq!(
        refs(source),
        [(2, "http".to_owned()), (3, "cache".to_owned())]
    );
}

#[test]
fn pub_crate_visibility_is_not_a_reference_but_its_use_is() {
    let source = "pub(crate) use crate::http::Outcome;\npub(crate) fn f() {}\n\
                  pub(crate) struct S(pub(crate) u8);\nextern crate alloc;\n";
    assert_eq!(refs(source), [(1, "http".to_owned())]);
}

#[test]
fn use_as_alias_counts_the_module() {
    assert_eq!(
        segments("use crate::http as h;\nuse crate::cache::Cache as C;\nuse crate::{origin as o};"),
        ["http", "cache", "origin"]
    );
}

#[test]
fn self_and_super_paths_inside_the_module_are_not_counted() {
    let source = "use self::inner::X;\nuse super::body::Body;\nmod tests {\n    use super::*;\n    \
                  use super::super::window::W;\n}\n";
    // Depth 2: a file such as src/proxy/error.rs.
    assert!(crate_references(source, 2).is_empty());
}

#[test]
fn super_chains_that_climb_out_of_the_module_count() {
    // In src/metrics.rs (depth 1), `super::` is the crate root.
    assert_eq!(segments("use super::http::CacheOutcome;"), ["http"]);
    assert_eq!(
        crate_references(
            "mod tests {\n    use super::super::{cache::C, origin};\n}\n",
            1
        ),
        [(2, "cache".to_owned()), (2, "origin".to_owned())]
    );
    assert_eq!(
        crate_references("use super::super::config;", 2),
        [(1, "config".to_owned())]
    );
}

#[test]
fn test_modules_are_scanned_like_any_other_code() {
    let source = "fn f() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::proxy::Proxy;\n}\n";
    assert_eq!(refs(source), [(5, "proxy".to_owned())]);
}

#[test]
fn globs_and_self_of_the_root_and_dollar_crate_count() {
    assert_eq!(
        segments(
            "use crate::*;\nuse crate::{self, Corral};\nmacro_rules! m { () => { $crate::http::f() } }"
        ),
        [ROOT, ROOT, "Corral", "http"]
    );
}

#[test]
fn files_map_to_their_top_level_module_and_depth() {
    assert_eq!(module_of("src/lib.rs"), (ROOT, 0));
    assert_eq!(module_of("src/main.rs"), (BINARY, 0));
    assert_eq!(module_of("src/http.rs"), ("http", 1));
    assert_eq!(module_of("src/cache/mod.rs"), ("cache", 1));
    assert_eq!(module_of("src/cache/freshness.rs"), ("cache", 2));
    assert_eq!(module_of("src/proxy/forward/mod.rs"), ("proxy", 2));
    assert_eq!(module_of("src/proxy/forward/tls.rs"), ("proxy", 3));
}

#[test]
fn only_imports_from_strictly_lower_layers_are_allowed() {
    assert_eq!(forbidden("proxy", "cache"), None);
    assert_eq!(forbidden("cache", "cache"), None);
    assert_eq!(forbidden("server", "config"), None);
    assert_eq!(forbidden("testing", "server"), None);
    assert_eq!(forbidden(ROOT, "server"), None);
    assert_eq!(forbidden(BINARY, ROOT), None);
    assert_eq!(forbidden("testing", ROOT), None);
    assert_eq!(forbidden("admin", "reload"), None);
    assert_eq!(forbidden("http", "cache"), Some((5, 4)));
    assert_eq!(forbidden("cache", "origin"), Some((4, 4)));
    assert_eq!(forbidden("config", "metrics"), Some((6, 6)));
    assert_eq!(forbidden("proxy", ROOT), Some((3, 0)));
    assert_eq!(forbidden("reload", "admin"), Some((2, 1)));
    assert_eq!(forbidden("metrics", "config"), Some((6, 6)));
    // No layer: reported as an unlayered module instead.
    assert_eq!(forbidden("demo", "config"), None);
    assert_eq!(forbidden("proxy", "demo"), None);
}

#[test]
fn metrics_imports_nothing_from_the_crate() {
    // Metrics sits in the bottom layer, so the layer rule forbids this too;
    // IMPORTS_NOTHING keeps it forbidden if a layer is ever added below.
    assert!(IMPORTS_NOTHING.contains(&"metrics"));
    assert_eq!(forbidden("metrics", "http"), Some((6, 5)));
    assert_eq!(forbidden("metrics", ROOT), Some((6, 0)));
}

#[test]
fn layer_table_names_each_module_once() {
    let mut seen = BTreeSet::new();
    for name in LAYERS.iter().flat_map(|layer| layer.iter()) {
        assert!(seen.insert(*name), "{name} is listed twice in LAYERS");
    }
    for name in MAY_IMPORT_ANYTHING.iter().chain(IMPORTS_NOTHING) {
        assert!(layer_of(name).is_some(), "{name} is not in LAYERS");
    }
}
