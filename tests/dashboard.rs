//! The Grafana dashboard (`deploy/grafana/dashboards/ricochet.json`) and the Prometheus
//! alerting rules (`deploy/prometheus/alerts.yml`) held to the metrics ricochet registers.
//!
//! The catalogue is the code's: the metric names are the constants of
//! `src/telemetry/metrics.rs`, their labels and label values the metric table of
//! `docs/operations.md`, and every label name and value of that table must be a string literal
//! somewhere in `src/` (so a label renamed in the code fails here, not on a blank panel). Every
//! PromQL expression of the dashboard and the rules is scanned for the series it selects, the
//! labels it matches and groups by, and the labels its legends and annotations print: each must
//! exist. A metric added to the code without a panel fails too, and so does a compose file that
//! mounts what is not there. No broker needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(relative: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn dashboard() -> serde_json::Value {
    let file = "deploy/grafana/dashboards/ricochet.json";
    serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every `.rs` file under `src/`, concatenated: where label names and values must appear.
fn source_text() -> String {
    fn walk(dir: &Path, text: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, text);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut text = String::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut text,
    );
    text
}

/// One metric of the catalogue: its type and its labels, each with its documented values
/// (`None`: values the configuration or the broker gives, such as `route` or `partition`).
#[derive(Debug)]
struct Metric {
    kind: String,
    labels: BTreeMap<String, Option<BTreeSet<String>>>,
}

/// The names `src/telemetry/metrics.rs` defines: `pub const X: &str = "ricochet_...";`.
fn code_names() -> BTreeSet<String> {
    let names: BTreeSet<String> = read("src/telemetry/metrics.rs")
        .lines()
        .filter(|line| line.trim_start().starts_with("pub const ") && line.contains("\"ricochet_"))
        .filter_map(|line| line.split('"').nth(1).map(str::to_string))
        .collect();
    assert!(
        names.len() > 20,
        "found only {names:?} in src/telemetry/metrics.rs: has the way names are defined changed?"
    );
    names
}

/// Splits on commas outside parentheses.
fn top_level_items(text: &str) -> Vec<String> {
    let (mut items, mut current, mut depth) = (Vec::new(), String::new(), 0);
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

/// The metric table of docs/operations.md, for the names the code defines.
fn catalogue() -> BTreeMap<String, Metric> {
    let page = read("docs/operations.md");
    let mut catalogue = BTreeMap::new();
    for row in page.lines().filter(|l| l.starts_with("| `ricochet_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let mut labels = BTreeMap::new();
        for item in top_level_items(cells[3]) {
            let (label, values) = match item.split_once('(') {
                // A range (`1xx`..`5xx`): values not checked one by one.
                Some((label, values)) if values.contains("`..`") => {
                    (label.trim().to_string(), None)
                }
                Some((label, values)) => {
                    let values: BTreeSet<String> = values
                        .split('`')
                        .skip(1)
                        .step_by(2)
                        .map(str::to_string)
                        .collect();
                    (label.trim().to_string(), Some(values))
                }
                None => (item.clone(), None),
            };
            labels.insert(label, values);
        }
        let kind = cells[2].to_string();
        catalogue.insert(name, Metric { kind, labels });
    }
    let names = code_names();
    let documented: BTreeSet<String> = catalogue.keys().cloned().collect();
    assert_eq!(
        names, documented,
        "docs/operations.md's metric table names exactly the metrics of src/telemetry/metrics.rs"
    );
    catalogue
}

/// The job names deploy/prometheus/prometheus.yml scrapes: the values of `job`.
fn jobs() -> BTreeSet<String> {
    let config = yaml("deploy/prometheus/prometheus.yml");
    config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .map(|c| c["job_name"].as_str().expect("job_name").to_string())
        .collect()
}

/// A series selector of an expression: `name{label op "value", ...}`.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// What one expression uses: its selectors and the labels of its `by`, `without`, `on`,
/// `ignoring` and `group_*` clauses.
#[derive(Debug, Default)]
struct Uses {
    selectors: Vec<Selector>,
    grouping: BTreeSet<String>,
}

const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small PromQL scanner: enough to find selectors, matchers and grouping labels.
fn scan(expr: &str) -> Uses {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let string = |i: usize| -> (String, usize) {
        let quote = chars[i];
        let mut j = i + 1;
        let mut value = String::new();
        while j < chars.len() && chars[j] != quote {
            if chars[j] == '\\' {
                j += 1;
            }
            value.push(chars[j]);
            j += 1;
        }
        (value, j + 1)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = string(i).1;
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`0.95`, `5m`, `1e3`).
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c == '$' {
            // A Grafana variable (`$__rate_interval`).
            i += 1;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
        } else if is_ident(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(i);
            let opens = chars.get(next) == Some(&'(');
            if GROUPING.contains(&word.as_str()) && opens {
                let close = (next..chars.len()).find(|&j| chars[j] == ')').unwrap();
                let list: String = chars[next + 1..close].iter().collect();
                uses.grouping.extend(
                    list.split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
                i = close + 1;
            } else if !opens && (word.starts_with("ricochet_") || word == "up") {
                let mut selector = Selector {
                    metric: word,
                    matchers: Vec::new(),
                };
                if chars.get(next) == Some(&'{') {
                    let mut j = next + 1;
                    loop {
                        j = skip_space(j);
                        if chars[j] == '}' {
                            break;
                        }
                        let start = j;
                        while is_ident(chars[j]) {
                            j += 1;
                        }
                        let label: String = chars[start..j].iter().collect();
                        j = skip_space(j);
                        let start = j;
                        while "=!~".contains(chars[j]) {
                            j += 1;
                        }
                        let op: String = chars[start..j].iter().collect();
                        j = skip_space(j);
                        let (value, after) = string(j);
                        selector.matchers.push((label, op, value));
                        j = skip_space(after);
                        if chars[j] == ',' {
                            j += 1;
                        }
                    }
                    i = j + 1;
                }
                uses.selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    uses
}

/// The labels a selector's series carry, with their known values; `None` when the name is
/// not a series ricochet exports.
fn series_labels(
    metric: &str,
    catalogue: &BTreeMap<String, Metric>,
    jobs: &BTreeSet<String>,
) -> Option<BTreeMap<String, Option<BTreeSet<String>>>> {
    let mut labels: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    labels.insert("instance".into(), None);
    labels.insert("job".into(), Some(jobs.clone()));
    if metric == "up" {
        return Some(labels);
    }
    if let Some(m) = catalogue.get(metric) {
        // A histogram is only its _bucket, _sum and _count series.
        if m.kind == "histogram" {
            return None;
        }
        labels.extend(m.labels.clone());
        return Some(labels);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(m) = metric
            .strip_suffix(suffix)
            .and_then(|base| catalogue.get(base))
            .filter(|m| m.kind == "histogram")
        {
            labels.extend(m.labels.clone());
            if suffix == "_bucket" {
                labels.insert("le".into(), None);
            }
            return Some(labels);
        }
    }
    None
}

/// Every problem of one expression: unknown series, labels they do not carry, values a
/// label never takes. Returns the problems and the labels its result may carry.
fn check(
    expr: &str,
    catalogue: &BTreeMap<String, Metric>,
    jobs: &BTreeSet<String>,
) -> (Vec<String>, BTreeSet<String>) {
    let uses = scan(expr);
    let mut problems = Vec::new();
    let mut available = BTreeSet::new();
    if uses.selectors.is_empty() {
        problems.push(format!("{expr:?} selects no series of ricochet's"));
    }
    for selector in &uses.selectors {
        let Some(labels) = series_labels(&selector.metric, catalogue, jobs) else {
            problems.push(format!(
                "{expr:?}: {} is not a series ricochet exports",
                selector.metric
            ));
            continue;
        };
        available.extend(labels.keys().cloned());
        for (label, op, value) in &selector.matchers {
            let Some(values) = labels.get(label) else {
                problems.push(format!(
                    "{expr:?}: {} has no label {label}",
                    selector.metric
                ));
                continue;
            };
            let (Some(values), false) = (values, value.contains('$')) else {
                continue;
            };
            let literal: Vec<&str> = match op.as_str() {
                "=" | "!=" => vec![value.as_str()],
                // A regex of plain alternatives (`overloaded|rate_limited`).
                _ if value.chars().all(|c| is_ident(c) || c == '|') => value.split('|').collect(),
                _ => continue,
            };
            for v in literal {
                if !values.contains(v) {
                    problems.push(format!(
                        "{expr:?}: {}'s label {label} is never {v:?} (it is one of {values:?})",
                        selector.metric
                    ));
                }
            }
        }
    }
    for label in &uses.grouping {
        if !available.contains(label) {
            problems.push(format!(
                "{expr:?} groups by {label}, a label none of its series carries"
            ));
        }
    }
    // An aggregation keeps only its grouping labels.
    let aggregated = ["sum", "min", "max", "avg", "count"]
        .iter()
        .any(|op| expr.contains(&format!("{op} by")) || expr.contains(&format!("{op}(")));
    let result = if aggregated {
        uses.grouping.clone()
    } else {
        available
    };
    (problems, result)
}

/// The `{{label}}` / `{{ $labels.label }}` names a template prints.
fn printed_labels(template: &str) -> Vec<String> {
    template
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .map(|(inside, _)| {
            let inside = inside.trim();
            inside
                .strip_prefix("$labels.")
                .unwrap_or(inside)
                .to_string()
        })
        .filter(|name| !name.starts_with('$'))
        .collect()
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel.clone());
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested.iter().cloned());
        }
    }
    all
}

/// (expression, legend) of every query of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    panels(&dashboard())
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            (
                t["expr"]
                    .as_str()
                    .expect("every target has an expr")
                    .to_string(),
                t["legendFormat"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn rules() -> Vec<serde_yaml::Value> {
    let rules = yaml("deploy/prometheus/alerts.yml");
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

#[test]
fn the_dashboard_uses_only_metrics_and_labels_the_code_registers() {
    let (catalogue, jobs) = (catalogue(), jobs());
    let mut problems = Vec::new();
    let queries = dashboard_queries();
    assert!(
        queries.len() > 20,
        "the dashboard has {} queries",
        queries.len()
    );
    for (expr, legend) in &queries {
        let (found, result) = check(expr, &catalogue, &jobs);
        problems.extend(found);
        for label in printed_labels(legend) {
            if !result.contains(&label) {
                problems.push(format!(
                    "{expr:?}: its legend prints {label}, which its result does not carry"
                ));
            }
        }
    }
    // The template variables list values of labels that exist.
    let dashboard = dashboard();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let Some(query) = variable["definition"].as_str() else {
            continue;
        };
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {query:?} is label_values(series, label)"));
        let (series, label) = inner.rsplit_once(',').unwrap();
        let (found, result) = check(series, &catalogue, &jobs);
        problems.extend(found);
        if !result.contains(label.trim()) {
            problems.push(format!(
                "{query:?}: the series has no label {}",
                label.trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_alerting_rules_use_only_metrics_and_labels_the_code_registers() {
    let (catalogue, jobs) = (catalogue(), jobs());
    let mut problems = Vec::new();
    for rule in rules() {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        let expr = rule["expr"].as_str().expect("expr");
        let (found, result) = check(expr, &catalogue, &jobs);
        problems.extend(found.into_iter().map(|p| format!("{name}: {p}")));
        for text in ["summary", "description"] {
            for label in printed_labels(rule["annotations"][text].as_str().unwrap_or_default()) {
                if !result.contains(&label) {
                    problems.push(format!(
                        "{name}: its {text} prints {label}, which {expr:?} does not carry"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_metric_has_a_panel() {
    let catalogue = catalogue();
    let used: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|(expr, _)| scan(expr).selectors)
        .map(|s| s.metric)
        .collect();
    let missing: Vec<&String> = catalogue
        .keys()
        .filter(|name| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| used.contains(&format!("{name}{suffix}")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/grafana/dashboards/ricochet.json shows none of {missing:?}"
    );
}

/// The conditions an operator must act on each have a rule, with a severity and a reason.
#[test]
fn the_rules_cover_what_an_operator_must_act_on_and_say_why() {
    let rules = rules();
    let exprs: Vec<String> = rules
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    for (condition, needle) in [
        ("a circuit open for minutes", "ricochet_circuit_state"),
        ("dead letters rising", "ricochet_dead_letters_total"),
        ("Kafka lag growing", "ricochet_kafka_consumer_lag_messages"),
        (
            "JetStream backlog growing",
            "ricochet_jetstream_pending_messages",
        ),
        ("not ready: NATS lost", "ricochet_nats_connected"),
        ("not live", "ricochet_liveness_failures_total"),
        ("not scraped: down", "up{job="),
        (
            "trace exports failing",
            "ricochet_trace_exports_total{result=\"failed\"}",
        ),
        ("a reload refused", "ricochet_config_reloads_total"),
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needle)),
            "no alerting rule for {condition} ({needle})"
        );
    }
    let mut names = BTreeSet::new();
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        assert!(names.insert(name), "{name} is defined twice");
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{name} has a severity label, critical or warning"
        );
        assert!(
            !rule["annotations"]["summary"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{name} has a summary"
        );
        let why = rule["annotations"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            why.split_whitespace().count() >= 15,
            "{name}'s description says why it matters and what to do: {why:?}"
        );
        if let Some(wait) = rule.get("for") {
            let wait = wait.as_str().unwrap();
            assert!(
                wait.ends_with('m') && wait[..wait.len() - 1].parse::<u32>().is_ok(),
                "{name}: for = {wait:?} is a duration in minutes"
            );
        }
    }
}

/// The catalogue the checks above rely on is the code's: every documented label name and
/// value is a string literal in src/.
#[test]
fn the_documented_labels_are_the_codes() {
    let source = source_text();
    for (name, metric) in catalogue() {
        assert!(
            ["counter", "gauge", "histogram"].contains(&metric.kind.as_str()),
            "{name}: type {:?}",
            metric.kind
        );
        for (label, values) in &metric.labels {
            assert!(
                source.contains(&format!("\"{label}\"")),
                "{name}'s label {label} (docs/operations.md) is not in src/"
            );
            for value in values.iter().flatten() {
                assert!(
                    source.contains(&format!("\"{value}\"")),
                    "{name}'s label {label}={value} (docs/operations.md) is not in src/"
                );
            }
        }
    }
}

/// The checks can fail: a wrong name, label, value, grouping or legend is reported.
#[test]
fn the_checker_reports_a_wrong_name_label_value_and_grouping() {
    let (catalogue, jobs) = (catalogue(), jobs());
    for (expr, problem) in [
        (
            "rate(ricochet_requests_total[5m])",
            "ricochet_requests_total",
        ),
        (
            "ricochet_message_duration_seconds",
            "ricochet_message_duration_seconds",
        ),
        (
            "rate(ricochet_retries_total{reason=\"attempts\"}[5m])",
            "no label reason",
        ),
        (
            "rate(ricochet_errors_total{kind=\"timed_out\"}[5m])",
            "\"timed_out\"",
        ),
        (
            "rate(ricochet_errors_total{kind=~\"overloaded|shed\"}[5m])",
            "\"shed\"",
        ),
        (
            "sum by (topic) (ricochet_in_flight_messages)",
            "groups by topic",
        ),
        ("up{job=\"nats\"} == 0", "\"nats\""),
    ] {
        let (found, _) = check(expr, &catalogue, &jobs);
        assert!(
            found.iter().any(|p| p.contains(problem)),
            "{expr}: expected a problem naming {problem}, got {found:?}"
        );
    }
    let good = "histogram_quantile(0.99, sum by (route, le) (rate(ricochet_http_request_duration_seconds_bucket{route=~\"$route\", instance=~\"$instance\"}[$__rate_interval])))";
    let (found, result) = check(good, &catalogue, &jobs);
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(result, BTreeSet::from(["le".into(), "route".into()]));
}

#[test]
fn docker_compose_provisions_grafana_with_prometheus_the_dashboard_and_the_rules() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    // host path -> container path of a service's bind mounts, each host path existing.
    let mounts = |service: &str| -> BTreeMap<String, String> {
        let volumes = services[service]["volumes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{service} has volumes"));
        volumes
            .iter()
            .map(|v| {
                let parts: Vec<&str> = v.as_str().unwrap().split(':').collect();
                let host = parts[0].trim_start_matches("./").to_string();
                assert!(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(&host).exists(),
                    "{service} mounts {host}, which is not in the repository"
                );
                (host, parts[1].to_string())
            })
            .collect()
    };
    let ports = |service: &str| -> Vec<String> {
        (services[service]["ports"].as_sequence())
            .map(|p| p.iter().map(|p| p.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };

    // Prometheus: its configuration and rules, loaded where the configuration says.
    let prometheus = mounts("prometheus");
    assert_eq!(
        prometheus["deploy/prometheus/prometheus.yml"],
        "/etc/prometheus/prometheus.yml"
    );
    let config = yaml("deploy/prometheus/prometheus.yml");
    let rule_files: Vec<&str> = config["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        rule_files,
        vec![prometheus["deploy/prometheus/alerts.yml"].as_str()],
        "Prometheus loads deploy/prometheus/alerts.yml where compose mounts it"
    );
    // It scrapes ricochet's admin port (compose.toml's).
    let ricochet: toml::Value = toml::from_str(&read("config/compose.toml")).unwrap();
    let admin_port = ricochet["admin"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let target = config["scrape_configs"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap();
    assert!(
        target.ends_with(&format!(":{admin_port}")),
        "Prometheus scrapes {target}, ricochet's admin port is {admin_port}"
    );

    // Grafana: provisioning and the dashboards folder.
    assert!(
        ports("grafana").contains(&"3000:3000".to_string()),
        "Grafana at http://localhost:3000, as documented"
    );
    let grafana = mounts("grafana");
    assert_eq!(
        grafana["deploy/grafana/provisioning"],
        "/etc/grafana/provisioning"
    );
    let dashboards_dir = &grafana["deploy/grafana/dashboards"];
    let provider = yaml("deploy/grafana/provisioning/dashboards/ricochet.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some(dashboards_dir.as_str()),
        "the dashboard provider reads the folder compose mounts"
    );
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let source = &datasources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    let url = source["url"].as_str().unwrap();
    let host = url.trim_start_matches("http://").split(':').next().unwrap();
    assert!(
        !services[host].is_null(),
        "the data source {url} is a compose service"
    );
    assert!(
        ports(host)
            .iter()
            .any(|p| url.ends_with(p.split(':').next_back().unwrap())),
        "the data source {url} is Prometheus's port"
    );
    // The dashboard's data source variable defaults to the provisioned one.
    let dashboard = dashboard();
    let variable = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(
        variable["current"]["value"],
        source["uid"].as_str().unwrap()
    );
    for panel in panels(&dashboard) {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {} uses the data source variable",
                panel["title"]
            );
        }
    }
}

/// The picture docs/operations.md shows is there, and a PNG (tests/docs.rs reads links as
/// text, so an image is an `<img>` tag it does not follow: checked here).
#[test]
fn the_operations_page_shows_the_rendered_dashboard() {
    let page = read("docs/operations.md");
    let source = page
        .split("<img src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("docs/operations.md shows the dashboard as an <img>");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(source);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{source} is a PNG");
}
