//! The command line: `check` reports every problem, `request` prints a reply.

mod common;

use std::process::Command;

use common::*;

fn ricochet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ricochet"))
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = ricochet()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/ricochet.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn check_reports_every_problem_with_its_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[nats]
url = "nats://127.0.0.1:4222"
password = "s3cret-value"
typo = 1

[upstream]
base_url = "http://127.0.0.1:8080"
request_timeout = "soon"

[[routes]]
name = "get-order"
subject = "orders.{id}.get"
method = "GET"
path = "/orders/{order_id}"

[[routes]]
name = "get-order"
subject = "orders.>.x"
path = "/x"
max_in_flight = 0
"#,
    )
    .unwrap();
    let out = ricochet()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "nats.password:",
        "nats.typo:",
        "upstream.request_timeout:",
        "routes[0].path:",
        "routes[1].name:",
        "routes[1].subject:",
        "routes[1].max_in_flight:",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    assert!(
        !stderr.contains("s3cret-value"),
        "secrets never reach error output"
    );
}

#[test]
fn run_refuses_an_invalid_config_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[upstream]\nbase_url = \"ftp://x\"\n").unwrap();
    let out = ricochet()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstream.base_url") && stderr.contains("routes"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = ricochet()
        .args(["check", "--config", "/nonexistent/ricochet.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn request_prints_status_headers_and_body() {
    let upstream = Upstream::echo().await;
    let prefix = unique("cli");
    let admin = free_port();
    let routes = format!(
        "[[routes]]\nname = \"cli\"\nsubject = \"{prefix}.{{id}}\"\nmethod = \"PUT\"\npath = \"/items/{{id}}\"\n"
    );
    let _ricochet = Ricochet::start(&config(&upstream.base_url(), admin, &routes), admin).await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ricochet"))
        .args([
            "request",
            &format!("{prefix}.9"),
            "--data",
            "hello",
            "--header",
            "X-Test=1",
            "--timeout",
            "5s",
        ])
        .args(["--nats-url", &nats_url()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("status: 200\n"), "{stdout}");
    assert!(stdout.contains("x-echo-path: /items/9"), "{stdout}");
    assert!(stdout.trim_end().ends_with("hello"), "{stdout}");
    assert_eq!(upstream.seen()[0].headers["x-test"], "1");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ricochet"))
        .args([
            "request",
            &format!("{prefix}-nobody.here"),
            "--timeout",
            "1s",
            "--nats-url",
            &nats_url(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody listens"));
}

#[test]
fn check_accepts_the_validation_example() {
    let out = ricochet()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "--config", "config/validation.toml"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_schemas_that_are_missing_or_do_not_compile_with_their_route_key() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{"type": "object", "properties": {"id": {"type": 12}}}"#,
    )
    .unwrap();
    let path = dir.path().join("schemas.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[upstream]
base_url = "http://127.0.0.1:8080"

[[routes]]
name = "fine"
subject = "a"
path = "/a"

[[routes]]
name = "missing"
subject = "b"
path = "/b"
[routes.validate]
format = "json_schema"
schema = "/nonexistent/order.json"

[[routes]]
name = "broken"
subject = "c"
path = "/c"
[routes.validate]
format = "json_schema"
schema = "{broken}"
[routes.validate.response]
format = "json_schema"

[[routes]]
name = "avro"
subject = "d"
path = "/d"
[routes.validate]
format = "avro"
schema = "/x.json"
"#,
            broken = broken.display()
        ),
    )
    .unwrap();
    let out = ricochet()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "routes[1].validate.schema: cannot read /nonexistent/order.json",
        "routes[2].validate.schema:",
        "is not a valid JSON Schema",
        "routes[2].validate.response.schema: required",
        "routes[3].validate.schema: only used with format = \"json_schema\"",
        "routes[3].validate.format: Avro needs a [schema_registry]",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

/// `--help` of the command and of each subcommand names the configuration file and its
/// default, the environment overrides and an example invocation; the default it names is
/// the file `check` reads when given none.
#[test]
fn help_names_the_config_file_the_environment_and_examples() {
    let default = "config/ricochet.toml";
    for (args, example, variables) in [
        (
            &["--help"][..],
            "ricochet check --config",
            &["RUST_LOG", "NATS_URL"][..],
        ),
        (
            &["run", "--help"][..],
            "ricochet run --config",
            &["RUST_LOG"][..],
        ),
        (
            &["check", "--help"][..],
            "ricochet check --config",
            &["RUST_LOG"][..],
        ),
        (
            &["request", "--help"][..],
            "ricochet request orders.42.get",
            &["NATS_URL"][..],
        ),
    ] {
        let out = ricochet().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        let named = [
            default,
            "RICOCHET__<SECTION>__<KEY>",
            "RICOCHET__ROUTES__0__TIMEOUT=2s",
            example,
        ];
        for expected in named.iter().chain(variables) {
            assert!(
                help.contains(expected),
                "`ricochet {}` does not name {expected:?}:\n{help}",
                args.join(" ")
            );
        }
    }

    // Without --config, `check` reads the named default: the shipped file from the
    // repository root, nothing from an empty directory.
    let root = ricochet()
        .arg("check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(
        root.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
    let empty = tempfile::tempdir().unwrap();
    let elsewhere = ricochet()
        .arg("check")
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_eq!(elsewhere.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        stderr.contains(default) && stderr.contains("cannot read"),
        "{stderr}"
    );
}

/// A route, an upstream and a free admin port, after `top` (TOML text).
fn small_config(top: &str) -> String {
    format!(
        "{top}\n[upstream]\nbase_url = \"http://127.0.0.1:8080\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n[[routes]]\nname = \"r\"\nsubject = \"{}\"\npath = \"/r\"\n",
        free_port(),
        unique("cli.")
    )
}

/// `command` (check or run) on `toml`: its exit code and everything it printed. `run` on a
/// configuration that passes would run, so it is only used on refused ones.
fn on_config(command: &str, toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ricochet.toml");
    std::fs::write(&path, toml).unwrap();
    let out = ricochet()
        .args([command, "--config"])
        .arg(&path)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    code_and_printed(&out)
}

#[test]
fn a_toml_syntax_error_names_line_column_and_key_but_never_the_text() {
    let secret = unique("s3cret");
    // Unterminated: the rest of the line, secret and all, is what toml would quote.
    let toml = small_config(&format!(
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"svc\"\npassword = \"{secret}\n"
    ));
    for command in ["check", "run"] {
        let (code, printed) = on_config(command, &toml);
        assert_eq!(code, Some(64), "{command}: {printed}");
        assert!(!printed.contains(&secret), "{command}: {printed}");
        assert!(
            printed.contains("nats.password: not valid TOML at line 4, column"),
            "{command}: {printed}"
        );
    }
}

#[test]
fn a_creds_file_that_is_not_one_is_refused_by_check_and_run_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("user.creds");
    std::fs::write(&creds, "this is not a creds file\n").unwrap();
    let toml = small_config(&format!(
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\ncreds_file = {:?}\n",
        creds.display().to_string()
    ));
    for command in ["check", "run"] {
        let (code, printed) = on_config(command, &toml);
        assert_eq!(code, Some(64), "{command}: {printed}");
        assert_eq!(
            printed.matches("nats.creds_file").count(),
            1,
            "{command}: one message with the key:\n{printed}"
        );
        assert!(
            printed.contains("is not a NATS credentials file"),
            "{command}: {printed}"
        );
        assert_eq!(
            printed.matches("user.creds").count(),
            1,
            "{command}: the path once:\n{printed}"
        );
    }
}

#[test]
fn credentials_in_urls_that_would_not_be_used_as_written_are_refused_with_their_key() {
    let secret = unique("pw");
    let cases = [
        (
            format!("[nats]\nurl = \"nats://svc:{secret}@127.0.0.1:4222\"\nuser = \"svc\"\npassword = \"other\"\n"),
            "nats.url: carries credentials, and so does nats.user",
        ),
        (
            format!("[nats]\nurl = \"nats://{secret}@127.0.0.1:4222\"\ntoken_file = \"/dev/null\"\n"),
            "nats.url: carries credentials, and so does nats.token_file",
        ),
        (
            format!("[nats]\nurl = \"nats://a:{secret}@127.0.0.1:4222,nats://b:{secret}x@127.0.0.1:4223\"\n"),
            "nats.url: its URLs carry different credentials",
        ),
        (
            format!("[tracing]\nendpoint = \"http://otel:{secret}@127.0.0.1:4318\"\n"),
            "tracing.endpoint: \"http://***@127.0.0.1:4318\": credentials in the URL are not sent",
        ),
    ];
    for (top, expected) in cases {
        let (code, printed) = on_config("check", &small_config(&top));
        assert_eq!(code, Some(64), "{top}: {printed}");
        assert!(printed.contains(expected), "{top}: {printed}");
        assert!(!printed.contains(&secret), "{top}: {printed}");
    }
    let toml = small_config("").replace(
        "base_url = \"http://127.0.0.1:8080\"",
        &format!("base_url = \"http://svc:{secret}@127.0.0.1:8080\""),
    );
    let (code, printed) = on_config("check", &toml);
    assert_eq!(code, Some(64), "{printed}");
    assert!(
        printed.contains(
            "upstream.base_url: \"http://***@127.0.0.1:8080\": credentials in the URL are not sent"
        ),
        "{printed}"
    );
    assert!(!printed.contains(&secret), "{printed}");
}

#[test]
fn a_remote_ref_in_a_json_schema_is_refused_in_ricochets_words_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("order.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"customer": {"$ref": "https://schemas.example.com/customer.json"}}}"#,
    )
    .unwrap();
    let toml = format!(
        "{}[routes.validate]\nformat = \"json_schema\"\nschema = {:?}\n",
        small_config(""),
        schema.display().to_string()
    );
    let (code, printed) = on_config("check", &toml);
    assert_eq!(code, Some(64), "{printed}");
    assert!(
        printed.contains("routes[0].validate.schema: ")
            && printed.contains("refers to https://schemas.example.com/customer.json")
            && printed.contains("remote references are not fetched"),
        "{printed}"
    );
    assert!(!printed.contains("resolve-http"), "{printed}");
}
