//! A short run of the benchmark: every leg, every request must get its correct reply (the
//! bench exits non-zero otherwise). Figures are not asserted: speed belongs to the
//! benchmark itself, not to tests on a shared machine.

use std::path::PathBuf;
use std::process::Command;

// The test suite's brokers: NATS_URL and KAFKA_BROKERS, else a nats-server and a tansu of
// this test binary's own.
#[path = "../../tests/common/brokers.rs"]
mod brokers;

/// The bench, pointed at the test brokers and at the workspace's ricochet.
fn bench() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ricochet-bench"));
    command
        .arg("--nats-url")
        .arg(brokers::nats_url())
        .arg("--kafka-brokers")
        .arg(brokers::kafka_brokers())
        .arg("--ricochet")
        .arg(ricochet());
    command
}

/// The ricochet binary the bench measures: the workspace's, next to the bench's own (a
/// `cargo test` at the root builds both).
fn ricochet() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_ricochet-bench")).with_file_name("ricochet");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test` at the workspace root, or `cargo build -p ricochet` first",
        path.display()
    );
    path
}

/// Runs `legs` briefly (300 ms, concurrency 1 and 4, 50/s) with `extra` flags: its stdout
/// and its JSON report, once it succeeded.
fn run_legs(legs: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let json = tempfile::NamedTempFile::new().unwrap();
    let output = bench()
        .args([
            "--duration",
            "300ms",
            "--concurrency",
            "1,4",
            "--rates",
            "50",
        ])
        .args(extra)
        .args(["--legs", legs])
        .arg("--json")
        .arg(json.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let report = serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap();
    (stdout, report)
}

#[test]
fn every_leg_answers_every_request_correctly() {
    let (stdout, report) = run_legs("L0,L1,L2,K1,K2,A1,A2", &["--payload", "512"]);
    let legs = report["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 7);
    for leg in legs {
        assert_eq!(leg["errors"], 0, "{leg}");
        let closed = leg["closed_loop"].as_array().unwrap();
        assert!(
            closed
                .iter()
                .all(|c| c["req_per_s"].as_f64().unwrap() > 0.0),
            "{leg}"
        );
        // ricochet, L1's responder and L0's client are measured processes: each reports
        // its CPU time and peak RSS.
        if !leg["measured_process"].is_null() {
            let open = &leg["open_loop"][0];
            assert!(open["cpu_ms_per_1000"].as_f64().is_some(), "{leg}");
            assert!(open["peak_rss_mb"].as_f64().unwrap() > 1.0, "{leg}");
        }
    }
    let measured =
        |name: &str| legs.iter().find(|l| l["leg"] == name).unwrap()["measured_process"].clone();
    assert_eq!(measured("L2"), "ricochet");
    assert_eq!(measured("L1"), "native responder");
    assert_eq!(measured("A1"), "native responder");
    assert_eq!(measured("A2"), "ricochet");
    assert!(report["derived"]["efficiency"].as_f64().is_some());
    assert!(report["derived"]["kafka_ratio"].as_f64().is_some());
    assert!(report["derived"]["amqp_ratio"].as_f64().is_some());
    assert!(stdout.contains("efficiency"), "{stdout}");
}

/// The legs over the upstream's Unix socket, beside their TCP twins (NATS only).
#[test]
fn the_unix_socket_legs_answer_every_request_correctly() {
    let (_, report) = run_legs("L0,U0,L2,U2", &[]);
    let legs = report["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 4);
    for leg in legs {
        assert_eq!(leg["errors"], 0, "{leg}");
        assert!(
            leg["open_loop"][0]["peak_rss_mb"].as_f64().unwrap() > 1.0,
            "{leg}"
        );
    }
    assert_eq!(legs[3]["measured_process"], "ricochet");
    let unix = &report["derived"]["unix_over_tcp"];
    assert!(unix["u0_over_l0"].as_f64().is_some(), "{unix}");
    assert!(unix["u2_over_l2"].as_f64().is_some(), "{unix}");
}

/// Runs the bench under callgrind at 20 requests/s for 1 s with `extra` flags; its stdout.
fn callgrind(extra: &[&str]) -> String {
    let output = bench()
        .args(["--callgrind", "--rates", "20", "--duration", "1s"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    stdout
}

/// The number printed right after the first `after` in `stdout`.
fn figure(stdout: &str, after: &str) -> u64 {
    (stdout.split(after).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure after {after:?} in:\n{stdout}"))
}

#[test]
fn callgrind_counts_ricochets_instructions_per_request_and_its_parts() {
    let stdout = callgrind(&["--by-function"]);
    // "ricochet under callgrind: 20 requests at 20/s, 58413 instructions per request ..."
    let per_request = figure(&stdout, "20 requests at 20/s, ");
    // A request takes tens of thousands of instructions; zero would mean nothing was counted.
    assert!(per_request > 1_000, "{stdout}");
    // The parts: "  L1 responder (async-nats alone)      11000  20 requests", and so on.
    let responder = figure(&stdout, "L1 responder (async-nats alone)");
    let client = figure(&stdout, "L0 client (hyper HTTP/1 alone)");
    let sum = figure(&stdout, "sum of the parts");
    assert!(responder > 1_000 && client > 1_000, "{stdout}");
    assert_eq!(sum, responder + client, "{stdout}");
    assert!(stdout.contains("ricochet / sum of the parts"), "{stdout}");
    assert!(stdout.contains("by group"), "{stdout}");
    assert!(stdout.contains("by function"), "{stdout}");
}

#[test]
fn callgrind_prices_json_schema_validation() {
    let stdout = callgrind(&["--validate-json"]);
    // "... 1024 byte JSON payload: 49866 instructions per request without validation (20
    // requests), 147469 with JSON Schema validation (20 requests): +97603 per request ..."
    let without = figure(&stdout, "1024 byte JSON payload: ");
    let with = figure(&stdout, "requests), ");
    // Validation costs something; an equal count would mean the schema was not applied.
    assert!(with > without && without > 1_000, "{stdout}");
}

#[test]
fn callgrind_prices_tracing() {
    let stdout = callgrind(&["--tracing", "--by-function"]);
    // "ricochet under callgrind: 49000 instructions per request with tracing off (20
    // requests), 81000 with tracing on, ...: +32000 per request (+65.3%)"
    let off = figure(&stdout, "ricochet under callgrind: ");
    let on = figure(&stdout, "requests), ");
    // Spans cost something; an equal count would mean tracing was not switched on.
    assert!(on > off && off > 1_000, "{stdout}");
    assert!(
        stdout.contains("tracing on less off, by function"),
        "{stdout}"
    );
}
