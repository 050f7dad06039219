//! The shape of `src/`, checked: what `docs/development.md` promises about the code.
//!
//! - The top-level modules form no cycle, and their graph is the one the document lists
//!   (between the `module-graph` markers), so a new edge is a deliberate, documented one.
//! - No source's name (nats, jetstream, kafka, amqp, rabbitmq) appears in the shared stages
//!   (`pipeline/`, `invoke/`, `mapping/`, `telemetry/`) outside the exceptions the document
//!   lists with their reasons (between the `source-names` markers).
//! - No module is longer than 400 lines before its tests, unless its first lines say why
//!   (`//! Longer than 400 lines: ...`).
//!
//! Test code (a module's `#[cfg(test)]` part and `tests.rs` files) may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/development.md");
const MAX_LINES: usize = 400;
const SOURCE_NAMES: [&str; 5] = ["nats", "jetstream", "kafka", "amqp", "rabbitmq"];
const SHARED_STAGES: [&str; 4] = ["pipeline", "invoke", "mapping", "telemetry"];

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Whether the module in `path` exists only in tests (`#[cfg(test)] mod x;` in its parent).
fn test_only(path: &Path) -> bool {
    let stem = path.file_stem().unwrap().to_string_lossy();
    let parent = path.parent().unwrap().join("mod.rs");
    let text = std::fs::read_to_string(parent).unwrap_or_default();
    ["", "pub ", "pub(crate) "]
        .iter()
        .any(|visibility| text.contains(&format!("#[cfg(test)]\n{visibility}mod {stem};")))
}

/// The file's code before its tests; nothing for a module of tests.
fn code_of(path: &Path) -> String {
    if test_only(path) {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let end = text.find("#[cfg(test)]\nmod ").unwrap_or(text.len());
    text[..end].to_string()
}

/// Lines that are code: not blank, not comments.
fn code_lines(code: &str) -> impl Iterator<Item = &str> {
    code.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
}

/// The top-level module a file belongs to (`src/source/nats/mod.rs` -> `source`).
fn top_module(path: &Path) -> String {
    let relative = path.strip_prefix(SRC).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// Which top-level modules each one uses (`crate::<name>` in its code).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files(Path::new(SRC));
    let modules: BTreeSet<String> = files.iter().map(|f| top_module(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = top_module(file);
        if from == "main" || from == "lib" {
            continue;
        }
        let uses = graph.entry(from.clone()).or_default();
        for line in code_lines(&code_of(file)) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != from && modules.contains(&name) {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// The lines of `docs/development.md` between `<!-- name -->` and `<!-- /name -->`.
fn documented(name: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let start = format!("<!-- {name} -->");
    let end = format!("<!-- /{name} -->");
    let from = doc
        .find(&start)
        .unwrap_or_else(|| panic!("{DOC} has no {start}"));
    let to = doc[from..]
        .find(&end)
        .unwrap_or_else(|| panic!("{DOC} has no {end}"));
    doc[from + start.len()..from + to]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("```"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_top_level_modules_form_no_cycle_and_their_graph_is_the_documented_one() {
    let graph = module_graph();
    // Depth-first search for a cycle, reporting it.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            panic!("module cycle: {} -> {node}", path[at..].join(" -> "));
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
    let actual: Vec<String> = graph
        .iter()
        .map(|(module, uses)| {
            let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
            format!("{module} -> {}", uses.join(" "))
                .trim_end()
                .to_string()
        })
        .collect();
    assert_eq!(
        documented("module-graph"),
        actual,
        "docs/development.md's module graph is not the code's: list it as it is"
    );
}

#[test]
fn the_shared_stages_name_no_source_outside_the_documented_exceptions() {
    // `path: reason` lines.
    let exceptions: BTreeSet<String> = documented("source-names")
        .iter()
        .filter_map(|l| l.trim_start_matches("- ").split_once(':'))
        .map(|(path, _)| path.trim().trim_matches('`').to_string())
        .collect();
    let mut found = Vec::new();
    for stage in SHARED_STAGES {
        for file in rust_files(&Path::new(SRC).join(stage)) {
            let relative = file.strip_prefix(Path::new(SRC).parent().unwrap()).unwrap();
            let relative = relative.to_string_lossy().to_string();
            if exceptions.contains(&relative) {
                continue;
            }
            for (n, line) in code_of(&file).lines().enumerate() {
                let lower = line.to_ascii_lowercase();
                if let Some(name) = SOURCE_NAMES.iter().find(|s| lower.contains(*s)) {
                    found.push(format!("{relative}:{}: {name}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "source names in the shared stages (move the code into the source, or list the file \
         with its reason in docs/development.md):\n{}",
        found.join("\n")
    );
    for exception in &exceptions {
        let path = Path::new(SRC).parent().unwrap().join(exception);
        assert!(
            path.exists(),
            "a listed exception that is gone: {exception}"
        );
    }
}

#[test]
fn no_module_is_longer_than_400_lines_without_saying_why() {
    let mut long = Vec::new();
    for file in rust_files(Path::new(SRC)) {
        let code = code_of(&file);
        let lines = code.lines().count();
        let says_why = code
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .any(|l| l.starts_with("//! Longer than 400 lines: "));
        if lines > MAX_LINES && !says_why {
            long.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "modules over {MAX_LINES} lines of code with no `//! Longer than 400 lines: <why>` at \
         their top:\n{}",
        long.join("\n")
    );
}
