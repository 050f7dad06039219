//! The documentation against the code, so that the pages cannot drift unnoticed: every
//! configuration key is in `docs/configuration.md`, every metric in `docs/operations.md`,
//! every complete configuration in the pages passes `ricochet check`, and every link
//! between the pages leads somewhere. No broker needed. The conventions are described in
//! `docs/development.md` (Documentation).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The first line of a ```toml block that is a whole configuration file.
const COMPLETE_MARK: &str = "# complete configuration";

/// Tables whose keys are names the user chooses (librdkafka properties, metadata,
/// resource attributes): the table is the documented key, not what it holds.
const FREE_FORM: [&str; 4] = [
    "nats.service.metadata",
    "tracing.resource_attributes",
    "kafka.consumer",
    "kafka.producer",
];

fn read(relative: &str) -> String {
    let path = Path::new(ROOT).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// `README.md` and every page under `docs/`, as paths relative to the repository root.
fn pages() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&Path::new(ROOT).join("docs"), &mut paths);
    let mut pages: Vec<String> = paths
        .iter()
        .map(|p| p.strip_prefix(ROOT).unwrap().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    pages.insert(0, "README.md".into());
    pages
}

fn ricochet(args: &[&str]) -> Output {
    ricochet_with(args, &[])
}

/// `ricochet` with the documented files alone, not whatever overrides the test's
/// environment holds, plus `env` (the overrides a shipped manifest sets).
fn ricochet_with(args: &[&str], env: &[(String, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ricochet"));
    command.args(args).current_dir(ROOT);
    for (name, _) in std::env::vars() {
        if name.starts_with("RICOCHET__") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().cloned());
    command.output().unwrap()
}

/// The dotted key paths of `table` under `prefix`: nested and inline tables walked, lists
/// and plain values as leaves, free-form tables as one key.
fn collect_keys(table: &toml::Table, prefix: &str, keys: &mut BTreeSet<String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) if !FREE_FORM.contains(&key.as_str()) => {
                collect_keys(inner, &key, keys)
            }
            _ => {
                keys.insert(key);
            }
        }
    }
}

/// Keys of a whole configuration: top-level ones with their section (`nats.url`), route
/// keys relative to the route (`retry.max_attempts`), as `docs/configuration.md` writes them.
fn config_keys(text: &str, origin: &str) -> BTreeSet<String> {
    let mut document: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{origin} is not TOML: {e}"));
    let mut keys = BTreeSet::new();
    if let Some(routes) = document.remove("routes") {
        let routes = routes.as_array().expect("[[routes]] is a list of tables");
        for route in routes {
            collect_keys(route.as_table().expect("a route is a table"), "", &mut keys);
        }
    }
    collect_keys(&document, "", &mut keys);
    keys
}

#[test]
fn every_configuration_key_is_in_the_configuration_page() {
    let page = "docs/configuration.md";
    let doc = read(page);
    let mut sources: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut shipped: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.strip_prefix(ROOT).unwrap().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert!(
        shipped.contains(&"config/ricochet.toml".to_string()),
        "{shipped:?}"
    );
    for file in &shipped {
        sources.push((file.clone(), config_keys(&read(file), file)));
    }
    // The effective configuration adds every key that has a default (the `[tracing]`
    // table, `nats.tls.first`, ...), also where the shipped file leaves it out. Its routes
    // are printed in their typed form, so only its top-level tables are compared.
    let out = ricochet(&["check", "--print", "--config", "config/ricochet.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut printed: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    printed.remove("routes");
    let mut defaults = BTreeSet::new();
    collect_keys(&printed, "", &mut defaults);
    assert!(
        defaults.contains("upstream.base_url") && defaults.contains("tracing.enabled"),
        "{defaults:?}"
    );
    sources.push((
        "ricochet check --print --config config/ricochet.toml".into(),
        defaults,
    ));

    let mut missing = Vec::new();
    for (origin, keys) in &sources {
        for key in keys {
            if !doc.contains(&format!("`{key}`")) {
                missing.push(format!("`{key}` (from {origin})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{page} does not document these configuration keys:\n  {}",
        missing.join("\n  ")
    );
}

/// The metric names `src/telemetry/metrics.rs` defines: `pub const X: &str = "ricochet_...";`.
fn metric_names() -> Vec<String> {
    let source = read("src/telemetry/metrics.rs");
    let names: Vec<String> = source
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("pub const ") && line.contains(": &str = \"ricochet_"))
        .filter_map(|line| line.split('"').nth(1).map(str::to_string))
        .collect();
    assert!(
        names.len() >= 10,
        "found only {names:?} in src/telemetry/metrics.rs: has the way names are defined changed?"
    );
    names
}

#[test]
fn every_metric_is_in_the_operations_page() {
    let page = "docs/operations.md";
    let doc = read(page);
    let missing: Vec<String> = metric_names()
        .into_iter()
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "{page} does not list these metrics of src/telemetry/metrics.rs:\n  {}",
        missing.join("\n  ")
    );
}

/// A fenced code block: its language, first line number (1-based) and text.
struct Block {
    language: String,
    line: usize,
    text: String,
}

fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut open, fence) {
            (None, true) => {
                open = Some(Block {
                    language: line.trim_start().trim_start_matches('`').trim().to_string(),
                    line: index + 2,
                    text: String::new(),
                })
            }
            (Some(_), true) => blocks.push(open.take().unwrap()),
            (Some(block), false) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, false) => {}
        }
    }
    blocks
}

/// Whether a ```` ```toml ```` block is a whole configuration file: marked as one, or
/// (so that a new example is covered even when its author forgets the mark) a TOML
/// document with an `[upstream]` table and `[[routes]]`.
fn is_complete(block: &Block) -> bool {
    if block.language != "toml" {
        return false;
    }
    if block.text.lines().next().map(str::trim) == Some(COMPLETE_MARK) {
        return true;
    }
    (block.text.parse::<toml::Table>())
        .is_ok_and(|t| t.contains_key("upstream") && t.contains_key("routes"))
}

/// One configuration the project ships or documents.
struct Example {
    /// Where it is: a file, a page and line, or a manifest.
    name: String,
    text: String,
    /// The `RICOCHET__...` overrides its manifest sets (with placeholder values).
    env: Vec<(String, String)>,
}

/// Every files under `dir` (relative to the root), recursively, sorted.
fn files_under(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(ROOT).join(dir), &mut files);
    files.sort();
    files
}

/// The `<name>.toml: |` blocks of a YAML manifest (a Kubernetes ConfigMap), unindented.
fn embedded_configurations(yaml: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if !(trimmed.ends_with(".toml: |") || trimmed.ends_with(".toml: |-")) {
            continue;
        }
        let outer = line.len() - line.trim_start().len();
        let body: Vec<&str> = lines[index + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
            .copied()
            .collect();
        let indent = (body.iter().filter(|l| !l.trim().is_empty()))
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let text: String = (body.iter())
            .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
            .collect();
        found.push((index + 2, text));
    }
    found
}

/// Every configuration the project ships or documents, found by scanning so that a new one
/// is covered without touching this test: `*.toml` files with `[[routes]]` under
/// `config/`, `examples/` and `deploy/`; configurations embedded in the YAML manifests
/// there (with the `RICOCHET__` variables the manifest sets); and every complete
/// ```` ```toml ```` block of `README.md` and `docs/` (see [`is_complete`]).
fn configurations() -> Vec<Example> {
    let mut examples = Vec::new();
    let relative = |path: &Path| (path.strip_prefix(ROOT).unwrap().to_string_lossy()).into_owned();
    for path in ["config", "examples", "deploy"]
        .into_iter()
        .flat_map(files_under)
    {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match extension {
            "toml"
                if text
                    .parse::<toml::Table>()
                    .is_ok_and(|t| t.contains_key("routes")) =>
            {
                examples.push(Example {
                    name: relative(&path),
                    text,
                    env: Vec::new(),
                });
            }
            "yaml" | "yml" => {
                let env: Vec<(String, String)> = (text.lines())
                    .filter_map(|l| l.trim().strip_prefix("- name: "))
                    .filter(|name| name.starts_with("RICOCHET__"))
                    .map(|name| (name.to_string(), "set-by-the-manifest".to_string()))
                    .collect();
                for (line, embedded) in embedded_configurations(&text) {
                    examples.push(Example {
                        name: format!("{}:{line}", relative(&path)),
                        text: embedded,
                        env: env.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    for page in pages() {
        for block in code_blocks(&read(&page)) {
            if is_complete(&block) {
                examples.push(Example {
                    name: format!("{page}:{}", block.line),
                    text: block.text,
                    env: Vec::new(),
                });
            }
        }
    }
    examples
}

#[test]
fn every_shipped_and_documented_configuration_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let examples = configurations();
    for (index, example) in examples.iter().enumerate() {
        let file = dir.path().join(format!("example-{index}.toml"));
        std::fs::write(&file, &example.text).unwrap();
        let out = ricochet_with(&["check", "--config", file.to_str().unwrap()], &example.env);
        if !out.status.success() {
            failures.push(format!(
                "{}:\n{}",
                example.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "`ricochet check` refuses these configurations:\n{}",
        failures.join("\n")
    );
    // The scan finds what it should: a scan that finds nothing would pass vacuously.
    let names: Vec<&str> = examples.iter().map(|e| e.name.as_str()).collect();
    for place in [
        "README.md:",
        "docs/configuration.md:",
        "config/ricochet.toml",
        "deploy/",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(place)),
            "no configuration found in {place}; found: {names:?}"
        );
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings (outside code blocks), with GitHub's `-1`, `-2`
/// suffixes for repeated ones.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for line in prose_lines(markdown) {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let title = rest.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let base = anchor(title);
        let count = seen.entry(base.clone()).or_default();
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// The lines of a page outside fenced code blocks.
fn prose_lines(markdown: &str) -> Vec<&str> {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
        } else if !inside {
            lines.push(line);
        }
    }
    lines
}

/// The targets of a line's Markdown links, `[text](target)`.
fn link_targets(line: &str) -> Vec<&str> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        match rest.find(')') {
            Some(end) => {
                targets.push(&rest[..end]);
                rest = &rest[end..];
            }
            None => break,
        }
    }
    targets
}

#[test]
fn every_link_between_the_pages_resolves() {
    let mut broken = Vec::new();
    let mut links = 0;
    for page in pages() {
        let text = read(&page);
        let dir = Path::new(&page).parent().unwrap_or(Path::new(""));
        for line in prose_lines(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                links += 1;
                let (path, fragment) = match target.split_once('#') {
                    Some((path, fragment)) => (path, Some(fragment)),
                    None => (target, None),
                };
                let file = if path.is_empty() {
                    PathBuf::from(&page)
                } else {
                    dir.join(path)
                };
                let Ok(target_text) = std::fs::read_to_string(Path::new(ROOT).join(&file)) else {
                    broken.push(format!("{page}: ({target}): no file {}", file.display()));
                    continue;
                };
                if let Some(fragment) = fragment {
                    if !anchors(&target_text).contains(fragment) {
                        broken.push(format!(
                            "{page}: ({target}): {} has no heading with the anchor #{fragment}",
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(links > 20, "only {links} links found: is the scan broken?");
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn anchors_follow_githubs_rule() {
    assert_eq!(anchor(" AMQP (RabbitMQ)"), "amqp-rabbitmq");
    assert_eq!(
        anchor(" The consumer the server keeps"),
        "the-consumer-the-server-keeps"
    );
    assert_eq!(
        anchor(" Request message -> HTTP request"),
        "request-message---http-request"
    );
    assert_eq!(anchor(" `[tracing]` keys"), "tracing-keys");
    let page = "# A\n## B\n```\n# not a heading\n```\n## B\n";
    let found = anchors(page);
    assert_eq!(
        found,
        ["a", "b", "b-1"].map(String::from).into_iter().collect()
    );
}

/// Each durable source's page names every header its dead letters carry and every reason
/// they can give (the constants of `src/message/dead_letter.rs`, the policy's reasons).
#[test]
fn every_dead_letter_header_and_reason_is_in_its_source_page() {
    let code = read("src/message/dead_letter.rs");
    let header = |constant: &str| -> String {
        let line = (code.lines())
            .find(|l| l.starts_with(&format!("pub const {constant}: &str = ")))
            .unwrap_or_else(|| panic!("{constant} in dead_letter.rs"));
        line.split('"').nth(1).unwrap().to_string()
    };
    let common = ["REASON", "LAST_STATUS", "DELIVERY_COUNT", "ROUTE", "DETAIL"];
    let pages = [
        (
            "docs/sources/jetstream.md",
            &[
                "ORIGINAL_STREAM",
                "ORIGINAL_SUBJECT",
                "ORIGINAL_SEQUENCE",
                "ORIGINAL_MSG_ID",
            ][..],
            "max_deliver",
        ),
        (
            "docs/sources/kafka.md",
            &[
                "ORIGINAL_TOPIC",
                "ORIGINAL_PARTITION",
                "ORIGINAL_OFFSET",
                "PAYLOAD_OMITTED",
            ][..],
            "dead_letter_after",
        ),
        (
            "docs/sources/amqp.md",
            &[
                "ORIGINAL_QUEUE",
                "ORIGINAL_EXCHANGE",
                "ORIGINAL_ROUTING_KEY",
            ][..],
            "max_deliver",
        ),
    ];
    let mut missing = Vec::new();
    for (page, origin, exhausted) in pages {
        let text = read(page);
        for constant in common.iter().chain(origin) {
            let name = header(constant);
            if !text.contains(&format!("`{name}`")) {
                missing.push(format!("{page}: {name}"));
            }
        }
        for reason in [exhausted, "undeliverable", "publish_failed", "bad_request"] {
            if !text.contains(&format!("`{reason}`")) {
                missing.push(format!("{page}: reason {reason}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in the pages: {missing:#?}");
}

/// `ricochet check --print` prints what loads again and means the same: for every
/// configuration [`configurations`] finds, the print passes `ricochet check`, and the
/// settings loaded from it equal those loaded from the original (compared as the effective
/// configuration with secrets redacted on both sides: a print holds `***` where a secret
/// was), so printing it again gives the same text.
#[test]
fn check_print_reads_back_as_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let examples = configurations();
    assert!(
        examples.len() >= 10,
        "too few configurations: {}",
        examples.len()
    );
    let mut failures = Vec::new();
    for (index, Example { name, text, env }) in examples.iter().enumerate() {
        let original = dir.path().join(format!("original-{index}.toml"));
        std::fs::write(&original, text).unwrap();
        let out = ricochet_with(
            &["check", "--print", "--config", original.to_str().unwrap()],
            env,
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed_text = String::from_utf8(out.stdout).unwrap();
        let printed = dir.path().join(format!("printed-{index}.toml"));
        std::fs::write(&printed, &printed_text).unwrap();
        let again = ricochet_with(
            &["check", "--print", "--config", printed.to_str().unwrap()],
            env,
        );
        if !again.status.success() {
            failures.push(format!(
                "{name}: its print is refused:\n{}",
                String::from_utf8_lossy(&again.stderr)
            ));
            continue;
        }
        // Relative schema paths resolve from the package root, the tests' directory.
        let load = |text: &str| ricochet::settings::load_str(text, env.clone()).unwrap();
        let (first, second) = (load(text), load(&printed_text));
        // Secrets (and credentials in URLs) print as `***`: compared redacted on both sides.
        let as_value = |settings: &ricochet::settings::Settings| {
            (settings.printable().unwrap())
                .parse::<toml::Table>()
                .unwrap()
        };
        if as_value(&first) != as_value(&second) {
            failures.push(format!(
                "{name}: loaded from its print, it differs:\n{}\n---\n{}",
                as_value(&first),
                as_value(&second)
            ));
        }
        if String::from_utf8_lossy(&again.stdout) != printed_text {
            failures.push(format!("{name}: printed twice, the prints differ"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
