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
    let mut command = Command::new(env!("CARGO_BIN_EXE_ricochet"));
    command.args(args).current_dir(ROOT);
    // The documented files alone, not whatever overrides the test's environment holds.
    for (name, _) in std::env::vars() {
        if name.starts_with("RICOCHET__") {
            command.env_remove(name);
        }
    }
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

#[test]
fn every_complete_configuration_in_the_pages_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for page in pages() {
        for block in code_blocks(&read(&page)) {
            let complete = block.language == "toml"
                && block.text.lines().next().map(str::trim) == Some(COMPLETE_MARK);
            if !complete {
                continue;
            }
            let file = dir.path().join(format!("block-{}.toml", checked.len()));
            std::fs::write(&file, &block.text).unwrap();
            let out = ricochet(&["check", "--config", file.to_str().unwrap()]);
            if !out.status.success() {
                failures.push(format!(
                    "{page}, the block starting on line {}:\n{}",
                    block.line,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            checked.push(format!("{page}:{}", block.line));
        }
    }
    assert!(
        failures.is_empty(),
        "`ricochet check` refuses these complete configurations:\n{}",
        failures.join("\n")
    );
    // The convention is in use: a page that drops every mark would pass vacuously.
    for page in ["README.md", "docs/configuration.md"] {
        assert!(
            checked.iter().any(|c| c.starts_with(&format!("{page}:"))),
            "{page} has no ```toml block marked `{COMPLETE_MARK}`; checked: {checked:?}"
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
/// they can give (the constants of `src/reply/dead_letter.rs`, the policy's reasons).
#[test]
fn every_dead_letter_header_and_reason_is_in_its_source_page() {
    let code = read("src/reply/dead_letter.rs");
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

/// `ricochet check --print` prints what loads again and means the same: for every shipped
/// configuration in `config/` and every complete configuration in the pages, the print
/// passes `ricochet check`, and the configuration loaded from it equals the one loaded from
/// the original (compared as the effective configuration with secrets redacted on both
/// sides: a print holds `***` where a secret was), so printing it again gives the same text.
#[test]
fn check_print_reads_back_as_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut sources: Vec<(String, String)> = Vec::new();
    let mut shipped: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("config"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    shipped.sort();
    for path in shipped {
        let name = path
            .strip_prefix(ROOT)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        sources.push((name, std::fs::read_to_string(&path).unwrap()));
    }
    for page in pages() {
        for block in code_blocks(&read(&page)) {
            if block.language == "toml"
                && block.text.lines().next().map(str::trim) == Some(COMPLETE_MARK)
            {
                sources.push((format!("{page}:{}", block.line), block.text));
            }
        }
    }
    assert!(sources.len() >= 10, "too few configurations: {sources:?}");
    let mut failures = Vec::new();
    for (index, (name, text)) in sources.iter().enumerate() {
        let original = dir.path().join(format!("original-{index}.toml"));
        std::fs::write(&original, text).unwrap();
        let out = ricochet(&["check", "--print", "--config", original.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed_text = String::from_utf8(out.stdout).unwrap();
        let printed = dir.path().join(format!("printed-{index}.toml"));
        std::fs::write(&printed, &printed_text).unwrap();
        let again = ricochet(&["check", "--print", "--config", printed.to_str().unwrap()]);
        if !again.status.success() {
            failures.push(format!(
                "{name}: its print is refused:\n{}",
                String::from_utf8_lossy(&again.stderr)
            ));
            continue;
        }
        let first = ricochet::config::load_str(text, Vec::new()).unwrap();
        let second = ricochet::config::load_str(&printed_text, Vec::new()).unwrap();
        // Secrets (and credentials in URLs) print as `***`: compared redacted on both sides.
        let as_value = |config: &ricochet::config::Config| {
            (ricochet::config::printable(config).unwrap())
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
