//! The loader as a whole: every problem with its key path, defaults, environment
//! overrides, secrets never echoed, the source parts, `check --print`.

use super::*;
use crate::config::{MaxInFlight, ENV_PREFIX};
use crate::source::SourceConfig;

mod loading {
    use super::*;

    use std::time::Duration;

    const MINIMAL: &str = r#"
        [upstream]
        base_url = "http://127.0.0.1:8080"

        [[routes]]
        name = "get-order"
        subject = "orders.{id}.get"
        method = "GET"
        path = "/orders/{id}"
    "#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn one_thread_by_default_for_every_source() {
        use crate::config::RuntimeThreads;
        let threads = |extra: &str| {
            load_str(&format!("{MINIMAL}{extra}"), no_env())
                .unwrap()
                .config
                .runtime_threads()
        };
        assert_eq!(threads(""), RuntimeThreads::Single);
        assert_eq!(
            threads("[runtime]\nworker_threads = 1\n"),
            RuntimeThreads::Single
        );
        assert_eq!(
            threads("[runtime]\nworker_threads = 4\n"),
            RuntimeThreads::Multi(Some(4))
        );
        let kafka = "[[routes]]\nname = \"k\"\nsource = \"kafka\"\nsubject = \"requests\"\npath = \"/k\"\n[routes.kafka]\nbrokers = \"127.0.0.1:9092\"\nreply_topic = \"replies\"\n";
        assert_eq!(threads(kafka), RuntimeThreads::Single);
        assert_eq!(
            threads(&format!("{kafka}[runtime]\nworker_threads = 2\n")),
            RuntimeThreads::Multi(Some(2))
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = load_str(MINIMAL, no_env()).unwrap().config;
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(config.nats.queue_group, "ricochet");
        assert_eq!(config.upstream.request_timeout, Duration::from_secs(5));
        assert_eq!(config.routes[0].max_in_flight, MaxInFlight::Fixed(64));
        assert_eq!(config.admin.listen.port(), 9464);
    }

    #[test]
    fn environment_overrides_any_key() {
        let env = vec![
            (
                "RICOCHET__UPSTREAM__REQUEST_TIMEOUT".to_string(),
                "250ms".to_string(),
            ),
            (
                "RICOCHET__ROUTES__0__MAX_IN_FLIGHT".to_string(),
                "8".to_string(),
            ),
            (
                "RICOCHET__NATS__URL".to_string(),
                "nats://10.0.0.1:4222".to_string(),
            ),
            ("RICOCHET__NATS__PASSWORD".to_string(), "1234".to_string()),
            ("RICOCHET__NATS__USER".to_string(), "svc".to_string()),
            ("RICOCHET__ROUTES__0__NAME".to_string(), "42".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = load_str(MINIMAL, env).unwrap().config;
        assert_eq!(config.upstream.request_timeout, Duration::from_millis(250));
        assert_eq!(config.routes[0].max_in_flight, MaxInFlight::Fixed(8));
        assert_eq!(config.nats.url, "nats://10.0.0.1:4222");
        // A numeric-looking value stays a string where a string is expected.
        assert_eq!(config.nats.password.unwrap().expose(), "1234");
        assert_eq!(config.routes[0].name, "42");
    }

    #[test]
    fn environment_override_errors_name_the_variable() {
        let env = vec![("RICOCHET__ROUTES__7__NAME".to_string(), "x".to_string())];
        let errors = load_str(MINIMAL, env).unwrap_err().0;
        assert_eq!(errors[0].key, "environment RICOCHET__ROUTES__7__NAME");
    }

    #[test]
    fn a_toml_syntax_error_names_line_column_and_key_never_the_text() {
        let text = format!("{MINIMAL}\n[nats]\nuser = \"svc\"\npassword = \"s3cret\n");
        let errors = load_str(&text, no_env()).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "nats.password");
        let line = text
            .lines()
            .position(|l| l.starts_with("password"))
            .unwrap()
            + 1;
        assert!(
            errors[0]
                .message
                .contains(&format!("line {line}, column 19")),
            "{errors:?}"
        );
        assert!(!format!("{errors:?}").contains("s3cret"), "{errors:?}");
        // Every way a line can be broken around a secret: the secret is never echoed.
        for broken in [
            "password = 's3cretX",
            "password = \"\"\"s3cretX",
            "password = \"\\q s3cretX\"",
            "password = \"a\" s3cretX",
            "password = s3cretX",
            "password = [\"s3cretX\"",
            "password = \"s3cretX\"\npassword = \"s3cretX\"",
            "password = 1979-05-27T07:32:00s3cretX",
            "password = { v = \"s3cretX\" ",
        ] {
            let text = format!("{MINIMAL}\n[nats]\nuser = \"svc\"\n{broken}\n");
            let errors = load_str(&text, no_env()).unwrap_err().0;
            assert!(
                !format!("{errors:?}").contains("s3cretX"),
                "{broken}: {errors:?}"
            );
            assert!(
                errors[0].message.contains("not valid TOML at line"),
                "{broken}: {errors:?}"
            );
        }
        // In a list of tables, the entry is counted; its sub-table belongs to it.
        let text = format!(
            "{MINIMAL}[[routes]]\nname = \"k\"\n[routes.kafka]\nsasl_password = \"hunter2\n"
        );
        let errors = load_str(&text, no_env()).unwrap_err().0;
        assert_eq!(errors[0].key, "routes[1].kafka.sasl_password");
        assert!(!errors[0].message.contains("hunter2"), "{errors:?}");
    }

    #[test]
    fn serde_texts_are_said_in_ricochets_words() {
        let text = MINIMAL.replace(
            "path = \"/orders/{id}\"",
            "path = \"/orders/{id}\"\ntimeout = { secs = 1, nanos = 0 }\nmax_in_flight = \"many\"\n[routes.source]\nkind = \"nats\"\nmax_pending = 1",
        );
        let errors = load_str(&text, no_env()).unwrap_err().0;
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown.contains(&"routes[0].timeout: expected a duration, found a table".to_string()),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s
                    .starts_with("routes[0].source: expected one name (a string), found a table")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("routes[0].max_in_flight: expected")
                    && s.ends_with("found a string")),
            "{shown:?}"
        );
        let text = MINIMAL.replace(
            "path = \"/orders/{id}\"",
            "path = \"/orders/{id}\"\nmax_in_flight = -1\nsuccess_statuses = [70000]\nsource = \"pigeon\"",
        );
        let errors = load_str(&text, no_env()).unwrap_err().0;
        let shown: Vec<String> = (errors.iter().map(ToString::to_string))
            .chain(shown)
            .collect();
        for expected in [
            "routes[0].max_in_flight: expected a whole number, 0 or more, or \"auto\", found -1",
            "routes[0].success_statuses[0]: expected a whole number from 0 to 65535, found 70000",
            // (In tests the toy source `memory` follows the four.)
            "routes[0].source: \"pigeon\" is not one of the names this key accepts: \"nats\", \"jetstream\", \"kafka\", \"amqp\"",
        ] {
            assert!(
                shown.iter().any(|s| s.starts_with(expected)),
                "{expected}: {shown:?}"
            );
        }
        for serde_words in [
            "invalid type",
            "invalid value",
            "unknown variant",
            "wanted exactly",
            "more than 1 element",
            "many",
            "usize",
        ] {
            assert!(!shown.iter().any(|s| s.contains(serde_words)), "{shown:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            [nats]
            url = "nats://127.0.0.1:4222"
            colour = "blue"

            [upstream]
            base_url = "ftp://example"
            request_timeout = "5 fortnights"

            [admin]
            listen = "not an address"

            [[routes]]
            name = "a"
            subject = "orders..get"
            method = "G T"
            path = "orders/{id}"
            max_in_flight = 0

            [[routes]]
            name = "a"
            subject = "x.{id}"
            path = "/x/{other}"
            max_payload = "12 parsecs"
        "#;
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "nats.colour",
            "upstream.request_timeout",
            "admin.listen",
            "routes[1].max_payload",
            "upstream.base_url",
            "routes[0].subject",
            "routes[0].method",
            "routes[0].path",
            "routes[0].max_in_flight",
            "routes[1].name",
            "routes[1].path",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn max_in_flight_is_a_number_or_auto_with_its_bounds_checked() {
        use crate::config::ConcurrencyConfig;
        let route = |extra: &str| format!("{MINIMAL}{extra}");
        let auto = load_str(&route("max_in_flight = \"auto\"\n"), no_env()).unwrap();
        let auto = &auto.config.routes[0];
        assert_eq!(auto.max_in_flight, MaxInFlight::Auto);
        assert_eq!(auto.adaptive(), Some(ConcurrencyConfig::default()));
        assert_eq!(auto.max_in_flight_bound(), 256);
        let bounded = "max_in_flight = \"auto\"\n[routes.concurrency]\nmin = 5\nmax = 40\n";
        let bounded = load_str(&route(bounded), no_env()).unwrap();
        let table = bounded.config.routes[0].adaptive().unwrap();
        assert_eq!(
            (table.min, table.max, table.sample_interval),
            (5, 40, Duration::from_millis(100))
        );
        // From the environment, like any key.
        let env = vec![(
            "RICOCHET__ROUTES__0__MAX_IN_FLIGHT".to_string(),
            "auto".to_string(),
        )];
        let overridden = load_str(MINIMAL, env).unwrap();
        assert_eq!(overridden.config.routes[0].max_in_flight, MaxInFlight::Auto);
        // A fixed number is as before: no adaptive settings, its own bound.
        let fixed = load_str(&route("max_in_flight = 12\n"), no_env()).unwrap();
        assert_eq!(fixed.config.routes[0].adaptive(), None);
        assert_eq!(fixed.config.routes[0].max_in_flight_bound(), 12);

        for (extra, key, says) in [
            (
                "max_in_flight = 8\n[routes.concurrency]\nmax = 9\n",
                "routes[0].concurrency",
                "only with max_in_flight = \"auto\"",
            ),
            (
                "max_in_flight = \"auto\"\n[routes.concurrency]\nmin = 0\n",
                "routes[0].concurrency.min",
                "at least 1",
            ),
            (
                "max_in_flight = \"auto\"\n[routes.concurrency]\nmin = 10\nmax = 9\n",
                "routes[0].concurrency.max",
                "at least concurrency.min (10)",
            ),
            (
                "max_in_flight = \"auto\"\n[routes.concurrency]\nsample_interval = \"0s\"\n",
                "routes[0].concurrency.sample_interval",
                "greater than zero",
            ),
            (
                "max_in_flight = \"auto\"\n[routes.concurrency]\nmin_rtt_interval = \"50ms\"\n",
                "routes[0].concurrency.min_rtt_interval",
                "longer than concurrency.sample_interval",
            ),
            (
                "max_in_flight = \"auto\"\n[routes.concurrency]\nmaximum = 9\n",
                "routes[0].concurrency.maximum",
                "unknown",
            ),
            (
                "max_in_flight = \"automatic\"\n",
                "routes[0].max_in_flight",
                "expected a whole number, 0 or more, or \"auto\", found a string",
            ),
            (
                "max_in_flight = 1.5\n",
                "routes[0].max_in_flight",
                "expected a whole number",
            ),
        ] {
            let errors = load_str(&route(extra), no_env()).unwrap_err().0;
            assert!(
                errors
                    .iter()
                    .any(|e| e.key == key && e.to_string().contains(says)),
                "{extra}: no {key} saying {says:?} in {errors:?}"
            );
        }
        let amqp = "[[routes]]\nname = \"q\"\nsource = \"amqp\"\nsubject = \"orders\"\npath = \"/o\"\nmax_in_flight = \"auto\"\n[routes.concurrency]\nmax = 70000\n[routes.amqp]\nurl = \"amqp://127.0.0.1:5672/%2f\"\n";
        let errors = load_str(&route(amqp), no_env()).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.key == "routes[1].concurrency.max" && e.to_string().contains("65535")),
            "{errors:?}"
        );
    }

    #[test]
    fn resilience_settings_are_checked() {
        let text = format!(
            "{MINIMAL}\nmax_payload = \"1MiB\"\n[routes.retry]\nmax_attempts = 0\nmultiplier = 0.5\njitter = 1.5\nretry_on = [999, \"sometimes\"]\n[routes.circuit_breaker]\nminimum_calls = 500\nmax_break_duration = \"1s\"\n[routes.rate_limit]\nburst_bytes = \"1KiB\"\n"
        );
        let errors = load_str(&text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "routes[0].retry.max_attempts",
            "routes[0].retry.multiplier",
            "routes[0].retry.jitter",
            "routes[0].retry.retry_on[1]",
            "routes[0].circuit_breaker.minimum_calls",
            "routes[0].circuit_breaker.max_break_duration",
            "routes[0].rate_limit",
            "routes[0].rate_limit.burst_bytes",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn lifetime_settings_are_checked_with_their_keys() {
        let problems = |table: &str| {
            let text = format!("{MINIMAL}\n[routes.lifetime]\n{table}\n");
            let errors = load_str(&text, no_env()).unwrap_err().0;
            (errors.iter())
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect::<Vec<_>>()
        };
        let zero = problems("max_age = \"0s\"");
        assert!(
            zero[0].starts_with("routes[0].lifetime.max_age: must be greater"),
            "{zero:?}"
        );
        let short = problems("max_age = \"10ms\"\nmin_budget = \"10ms\"");
        assert!(
            short[0].contains("longer than lifetime.min_budget (10ms)"),
            "{short:?}"
        );
        for (table, key) in [
            ("expired = \"drop\"", "routes[0].lifetime.expired"),
            ("max_age = 30", "routes[0].lifetime.max_age"),
            ("maximum_age = \"1s\"", "routes[0].lifetime.maximum_age"),
        ] {
            let found = problems(table);
            assert!(found[0].starts_with(key), "{table}: {found:?}");
        }
        let text =
            format!("{MINIMAL}\n[routes.lifetime]\nmax_age = \"30s\"\nexpired = \"dead_letter\"\n");
        let settings = load_str(&text, no_env()).unwrap();
        let lifetime = &settings.config.routes[0].lifetime;
        assert_eq!(lifetime.max_age, Some(Duration::from_secs(30)));
        assert_eq!(lifetime.min_budget, Duration::from_millis(5));
        assert!(lifetime.attempt_headers && !lifetime.reply_expired);
    }

    #[test]
    fn jetstream_deadline_must_fit_in_ack_wait_without_in_progress() {
        let route = |in_progress: bool| {
            format!(
                "[upstream]\nbase_url = \"http://h:1\"\nrequest_timeout = \"5s\"\n[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"a.{{id}}\"\npath = \"/a/{{id}}\"\n[routes.jetstream]\nstream = \"S\"\nack_wait = \"10s\"\nin_progress = {in_progress}\n"
            )
        };
        // 3 attempts of 5 s plus 2 backoffs of up to 2 s: 19 s > 10 s.
        let errors = load_str(&route(false), no_env()).unwrap_err().0;
        assert_eq!(errors[0].key, "routes[0].jetstream.ack_wait");
        assert!(errors[0].message.contains("19s"), "{}", errors[0].message);
        load_str(&route(true), no_env()).expect("in-progress keeps the message alive");
    }

    #[test]
    fn source_specific_keys_are_checked() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"core\"\nsubject = \"a\"\npath = \"/\"\ndelivery = \"at_least_once\"\ndead_letter = \"dlq\"\n[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"b\"\npath = \"/\"\nreply_subject = \"r.*\"\n[routes.jetstream]\nstream = \"S\"\n[[routes]]\nname = \"no-table\"\nsource = \"jetstream\"\nsubject = \"c\"\npath = \"/\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "routes[0].delivery",
            "routes[0].dead_letter",
            "routes[1].reply_subject",
            "routes[2].jetstream",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn a_queue_group_belongs_to_core_nats_routes_only() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"b\"\npath = \"/\"\nqueue_group = \"g\"\n[routes.jetstream]\nstream = \"S\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["routes[0].queue_group"]);
        let core = text
            .replace("source = \"jetstream\"\n", "")
            .replace("[routes.jetstream]\nstream = \"S\"\n", "");
        load_str(&core, no_env()).expect("a core route may name its queue group");
    }

    #[test]
    fn max_pending_belongs_to_core_nats_routes_and_defaults_to_max_in_flight() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"b\"\npath = \"/\"\nmax_pending = 3\n[routes.jetstream]\nstream = \"S\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["routes[0].max_pending"]);
        let core = text
            .replace("source = \"jetstream\"\n", "")
            .replace("[routes.jetstream]\nstream = \"S\"\n", "");
        let pending = |text: &str| {
            let settings = load_str(text, no_env()).unwrap();
            match &settings.sources[0] {
                SourceConfig::Nats(nats) => nats.max_pending(&settings.config.routes[0]),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(pending(&core), 3);
        let default = core.replace("max_pending = 3\n", "max_in_flight = 9\n");
        assert_eq!(pending(&default), 9);
    }

    #[test]
    fn secret_values_are_not_echoed_in_errors() {
        let text = format!("{MINIMAL}\n[nats]\nuser = \"u\"\npassword = 987654321\nurl = \"nats://u:hunter2@h:bad\"\n");
        let errors = load_str(&text, no_env()).unwrap_err();
        let shown = errors.to_string();
        assert!(shown.contains("nats.password"), "{shown}");
        assert!(
            !shown.contains("987654321") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn kafka_settings_are_checked() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\nrequest_timeout = \"60s\"\n[[routes]]\nname = \"k\"\nsource = \"kafka\"\nsubject = \"t\"\npath = \"/\"\nreply_subject = \"x\"\n[routes.kafka]\nbrokers = \"h:9092\"\ntopic_pattern = \"orders.*\"\nreply_topic = \"bad topic\"\n[routes.kafka.consumer]\n\"enable.auto.commit\" = \"true\"\n\"max.poll.interval.ms\" = \"60000\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "routes[0].reply_subject",
            "routes[0].kafka.topic_pattern",
            "routes[0].kafka.reply_topic",
            "routes[0].kafka.consumer",
            // 3 x 60 s + backoff is not under half of a 60 s max.poll.interval.ms
            "routes[0].total_timeout",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
    }

    #[test]
    fn amqp_settings_are_checked_with_their_keys_and_no_secret() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"orders.{id}\"\npath = \"/o/{id}\"\ndead_letter = \"x\"\ndelivery = \"exactly_once\"\nmax_in_flight = 70000\n[routes.amqp]\nurl = \"amqp://u:hunter2@h:5672/%2f\"\npassword = \"hunter3\"\nrouting_keys = [\"a.b\"]\nmax_deliver = 0\nredelivery_backoff = []\ndead_letter_routing_key = \"dl\"\n[[routes]]\nname = \"b\"\nsubject = \"s\"\npath = \"/\"\n[routes.amqp]\nurl = \"nope://\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "routes[0].dead_letter",
            "routes[0].delivery",
            "routes[0].max_in_flight",
            // A subject with wildcards names no queue, and needs an exchange to route it.
            "routes[0].amqp.queue",
            "routes[0].amqp.exchange",
            "routes[0].amqp.routing_keys",
            // Credentials in the URL and in the table.
            "routes[0].amqp.url",
            "routes[0].amqp.max_deliver",
            "routes[0].amqp.redelivery_backoff",
            "routes[0].amqp.dead_letter_routing_key",
            // An [routes.amqp] table on a core NATS route.
            "routes[1].amqp",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        let shown = ConfigErrors(errors).to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );

        let bad_url = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"s\"\npath = \"/\"\n[routes.amqp]\nurl = \"http://u:hunter2@h\"\n";
        let errors = load_str(bad_url, no_env()).unwrap_err().0;
        let url = errors
            .iter()
            .find(|e| e.key == "routes[0].amqp.url")
            .expect("the url refused");
        assert!(
            url.message.contains("not an AMQP URL") && !url.message.contains("hunter2"),
            "{}",
            url.message
        );
    }

    #[test]
    fn an_amqp_route_with_a_literal_subject_needs_only_a_url() {
        let text = "[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"orders.create\"\npath = \"/orders\"\n[routes.amqp]\nurl = \"amqp://127.0.0.1:5672/%2f\"\n";
        let settings = load_str(text, no_env()).unwrap();
        let SourceConfig::Amqp(amqp) = &settings.sources[0] else {
            panic!("an AMQP route");
        };
        assert_eq!(amqp.delivery, crate::config::Delivery::AtLeastOnce);
        assert_eq!(amqp.settings.max_deliver, 5);
        assert!(amqp.settings.exchange.is_none());
    }

    #[test]
    fn the_micro_service_name_and_version_are_checked() {
        let text = "[nats.service]\nname = \"orders api\"\nversion = \"1.2\"\n[upstream]\nbase_url = \"http://h:1\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/\"\n";
        let errors = load_str(text, no_env()).unwrap_err().0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["nats.service.name", "nats.service.version"]);
        let fine = text
            .replace("orders api", "orders-api")
            .replace("\"1.2\"", "\"1.2.0-rc.1+build.5\"");
        let config = load_str(&fine, no_env()).unwrap().config;
        assert_eq!(config.nats.service.unwrap().version, "1.2.0-rc.1+build.5");
        for bad in ["01.2.3", "1.2.3-", "1.2.x", "1..3"] {
            let text = fine.replace("1.2.0-rc.1+build.5", bad);
            assert!(load_str(&text, no_env()).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_required_keys_are_reported() {
        let errors = load_str("[[routes]]\nname = \"x\"\n", no_env())
            .unwrap_err()
            .0;
        assert!(errors
            .iter()
            .any(|e| e.key == "upstream" && e.message.contains("missing")));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Any text and environment overrides: a config or errors, never a panic, and never
        /// the password's value in an error (whatever else is wrong, wherever it is set).
        #[test]
        fn any_text_and_environment_load_without_panic_or_echoed_secret(
            text in proptest::prop_oneof![
                proptest::prelude::any::<String>(),
                "(\\[[a-z.]{1,12}\\]\n|[a-z_]{1,12} = (\"[^\"]{0,8}\"|[0-9]{1,4}|true|\\[\\])\n){0,12}",
            ],
            env in proptest::collection::vec(("[A-Z_0-9]{1,24}", ".{0,12}"), 0..6),
            secret_key in proptest::sample::select(vec![
                "RICOCHET__NATS__PASSWORD", "RICOCHET__NATS__TOKEN", "RICOCHET__NATS__NKEY_SEED",
                "RICOCHET__ROUTES__0__KAFKA__SASL_PASSWORD", "RICOCHET__ROUTES__0__AMQP__PASSWORD",
            ]),
        ) {
            const SECRET: &str = "zq-secret-7c1d";
            let text = format!("{MINIMAL}\n{}", text.replace(SECRET, ""));
            let env: Vec<(String, String)> = (env.into_iter())
                .map(|(name, value)| (format!("{ENV_PREFIX}{name}"), value.replace(SECRET, "")))
                .chain([(secret_key.to_string(), SECRET.to_string())])
                .collect();
            if let Err(errors) = load_str(&text, env) {
                let shown = errors.to_string();
                proptest::prop_assert!(!shown.contains(SECRET), "{}", shown);
            }
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        let errors = load_str("[upstream\n", no_env()).unwrap_err().0;
        assert!(errors[0].message.contains("TOML"));
    }
}

mod printing {
    use super::*;

    #[test]
    fn an_adaptive_limit_prints_and_loads_back_the_same() {
        let text = "[upstream]\nbase_url = \"http://127.0.0.1:8080\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/s\"\nmax_in_flight = \"auto\"\n[routes.concurrency]\nmax = 40\nmin_rtt_interval = \"30s\"\n[[routes]]\nname = \"f\"\nsubject = \"f\"\npath = \"/f\"\nmax_in_flight = 7\n";
        let printed = load_str(text, Vec::new()).unwrap().printable().unwrap();
        assert!(printed.contains("max_in_flight = \"auto\""), "{printed}");
        let again = load_str(&printed, Vec::new()).unwrap().config;
        assert_eq!(
            again.routes[0]
                .adaptive()
                .map(|c| (c.max, c.min_rtt_interval)),
            Some((40, std::time::Duration::from_secs(30)))
        );
        assert_eq!(again.routes[1].max_in_flight, MaxInFlight::Fixed(7));
    }

    #[test]
    fn credentials_in_nats_url_print_redacted() {
        let text = "[nats]\nurl = \"nats://svc:hunter1@127.0.0.1:4222\"\n[upstream]\nbase_url = \"http://127.0.0.1:8080\"\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/s\"\n";
        let printed = load_str(text, Vec::new()).unwrap().printable().unwrap();
        assert!(!printed.contains("hunter1"), "{printed}");
        assert!(printed.contains("nats://***@127.0.0.1:4222"), "{printed}");
    }

    #[test]
    fn the_effective_configuration_prints_without_secrets() {
        let text = "[nats]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"svc\"\npassword = \"hunter2\"\n[upstream]\nbase_url = \"http://127.0.0.1:8080\"\n[[routes]]\nname = \"k\"\nsource = \"kafka\"\nsubject = \"requests\"\npath = \"/k\"\n[routes.kafka]\nbrokers = \"127.0.0.1:9092\"\nreply_topic = \"replies\"\nsecurity_protocol = \"sasl_plaintext\"\nsasl_username = \"svc\"\n[routes.kafka.producer]\n\"sasl.jaas.config\" = \"hunter4\"\n[[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"orders\"\npath = \"/o\"\n[routes.amqp]\nurl = \"amqp://guest:hunter5@127.0.0.1:5672/%2f\"\n";
        let env = vec![
            (
                "RICOCHET__ROUTES__0__KAFKA__SASL_PASSWORD".to_string(),
                "hunter3".to_string(),
            ),
            (
                "RICOCHET__UPSTREAM__REQUEST_TIMEOUT".to_string(),
                "250ms".to_string(),
            ),
        ];
        let config = load_str(text, env).unwrap();
        let printed = config.printable().unwrap();
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!printed.contains(secret), "{secret} in\n{printed}");
        }
        // Overrides and defaults are there, and the output reads back as TOML.
        assert!(printed.contains("request_timeout = \"250ms\""), "{printed}");
        assert!(printed.contains("queue_group = \"ricochet\""), "{printed}");
        assert!(printed.contains("amqp://***@127.0.0.1:5672"), "{printed}");
        assert!(printed.contains("sasl_username = \"svc\""), "{printed}");
        printed.parse::<toml::Table>().expect("valid TOML");
    }
}

mod schemas {
    use super::*;

    /// The problems of a route with this `[routes.validate]` body (and `top`-level text).
    fn problems(top: &str, validate: &str) -> Vec<String> {
        let text = format!(
            "[upstream]\nbase_url = \"http://127.0.0.1:1\"\n{top}\n[[routes]]\nname = \"r\"\nsubject = \"s\"\npath = \"/p\"\n[routes.validate]\n{validate}\n"
        );
        match load_str(&text, Vec::new()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const REGISTRY: &str = "[schema_registry]\nurl = \"http://127.0.0.1:8081\"";

    #[test]
    fn each_misplaced_or_missing_key_is_reported_with_its_path() {
        let cases = [
            (
                "",
                "format = \"json_schema\"",
                "routes[0].validate.schema: required",
            ),
            (
                REGISTRY,
                "format = \"avro\"\nschema = \"x.json\"",
                "routes[0].validate.schema: only used",
            ),
            (
                "",
                "decode = \"json\"",
                "routes[0].validate.decode: only used",
            ),
            (
                "",
                "content_types = [\"\"]",
                "routes[0].validate.content_types:",
            ),
            ("", "max_headers = 0", "routes[0].validate.max_headers:"),
            (
                "",
                "max_header_bytes = 0",
                "routes[0].validate.max_header_bytes:",
            ),
            ("", "format = \"xml\"", "routes[0].validate.format:"),
            (
                "",
                "[routes.validate.response]",
                "routes[0].validate.response: names neither",
            ),
            (
                REGISTRY,
                "[routes.validate.response]\nencode = \"avro\"",
                "routes[0].validate.response.subject: required",
            ),
            (
                REGISTRY,
                "[routes.validate.response]\nformat = \"avro\"\nsubject = \"s\"\nencode = \"avro\"",
                "routes[0].validate.response.encode:",
            ),
            (
                REGISTRY,
                "[routes.validate.response]\nformat = \"avro\"\nsubject = \"s\"\nversion = 2",
                "routes[0].validate.response.version:",
            ),
            (
                "",
                "[routes.validate.response]\nencode = \"avro\"\nsubject = \"s\"",
                "routes[0].validate.response.encode: Avro needs a [schema_registry]",
            ),
            (
                "[schema_registry]\nurl = \"https://u:secret@r:8081\"",
                "format = \"avro\"",
                "schema_registry.url: https is not supported",
            ),
            (
                "[schema_registry]\nurl = \"http://u:secret@r:8081\"",
                "format = \"avro\"",
                "schema_registry.url: credentials",
            ),
        ];
        for (top, validate, expected) in cases {
            let found = problems(top, validate);
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{validate:?}: expected {expected:?} in {found:?}"
            );
            assert!(!found.iter().any(|p| p.contains("secret")), "{found:?}");
        }
    }

    #[test]
    fn a_valid_table_loads() {
        assert_eq!(problems(REGISTRY, "format = \"avro\"\nsubject = \"orders-value\"\ndecode = \"json\"\ncontent_types = [\"application/octet-stream\"]\n[routes.validate.response]\nencode = \"avro\"\nsubject = \"replies-value\"\nversion = 3"), Vec::<String>::new());
    }
}

mod sources {
    use super::*;

    const UPSTREAM: &str = "[upstream]\nbase_url = \"http://h:1\"\n";

    fn problems(routes: &str, env: Vec<(String, String)>) -> Vec<String> {
        match load_str(&format!("{UPSTREAM}{routes}"), env) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_key_of_another_source_names_the_routes_source_and_its_keys() {
        let found = problems(
            "[[routes]]\nname = \"js\"\nsource = \"jetstream\"\nsubject = \"s\"\npath = \"/\"\nmax_pending = 3\n[routes.jetstream]\nstream = \"S\"\n[routes.kafka]\nbrokers = \"h:9092\"\n",
            Vec::new(),
        );
        assert_eq!(
            found,
            [
                "routes[0].kafka: not a key of a route with source = \"jetstream\" (its keys: delivery, reply_subject, dead_letter, jetstream)",
                "routes[0].max_pending: not a key of a route with source = \"jetstream\" (its keys: delivery, reply_subject, dead_letter, jetstream)",
            ]
        );
        // A key no source has stays an unknown key of the route.
        let found = problems(
            "[[routes]]\nname = \"n\"\nsubject = \"s\"\npath = \"/\"\ncolour = \"blue\"\n",
            Vec::new(),
        );
        assert_eq!(found, ["routes[0].colour: unknown field `colour`"]);
    }

    #[test]
    fn an_unknown_source_is_one_problem_not_one_per_key() {
        let found = problems(
            "[[routes]]\nname = \"p\"\nsource = \"pigeon\"\nsubject = \"s\"\npath = \"/\"\ndelivery = \"at_least_once\"\n[routes.kafka]\nbrokers = \"h:9092\"\n",
            Vec::new(),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("routes[0].source: \"pigeon\""),
            "{found:?}"
        );
    }

    #[test]
    fn a_sources_keys_are_reported_at_their_path_and_take_environment_overrides() {
        let kafka = "[[routes]]\nname = \"k\"\nsource = \"kafka\"\nsubject = \"t\"\npath = \"/\"\n[routes.kafka]\nbrokers = \"h:9092\"\nordering = \"sideways\"\n";
        let found = problems(kafka, Vec::new());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("routes[0].kafka.ordering: "),
            "{found:?}"
        );
        let env = |name: &str, value: &str| vec![(name.to_string(), value.to_string())];
        let fixed = env("RICOCHET__ROUTES__0__KAFKA__ORDERING", "partition");
        assert_eq!(problems(kafka, fixed), Vec::<String>::new());
        let settings = load_str(
            &format!(
                "{UPSTREAM}{}",
                kafka.replace("ordering = \"sideways\"\n", "")
            ),
            env("RICOCHET__ROUTES__0__KAFKA__DEAD_LETTER_AFTER", "4"),
        )
        .unwrap();
        let SourceConfig::Kafka(source) = &settings.sources[0] else {
            panic!("a Kafka route");
        };
        assert_eq!(source.settings.dead_letter_after, Some(4));
    }

    #[test]
    fn every_source_prints_what_loads_back_as_the_same() {
        let text = format!(
            "{UPSTREAM}[[routes]]\nname = \"n\"\nsubject = \"n\"\npath = \"/\"\nqueue_group = \"own\"\nmax_pending = 7\n\
             [[routes]]\nname = \"j\"\nsource = \"jetstream\"\nsubject = \"j\"\npath = \"/\"\ndelivery = \"at_most_once\"\nreply_subject = \"r\"\ndead_letter = \"d\"\n[routes.jetstream]\nstream = \"S\"\nack_wait = \"1m\"\n\
             [[routes]]\nname = \"k\"\nsource = \"kafka\"\nsubject = \"k\"\npath = \"/\"\ndelivery = \"exactly_once\"\n[routes.kafka]\nbrokers = \"h:9092\"\nordering = \"unordered\"\nsasl_password = \"hunter2\"\nsecurity_protocol = \"sasl_plaintext\"\nsasl_username = \"u\"\n\
             [[routes]]\nname = \"a\"\nsource = \"amqp\"\nsubject = \"a\"\npath = \"/\"\n[routes.amqp]\nurl = \"amqp://h:5672/%2f\"\nqueue_type = \"quorum\"\n"
        );
        let first = load_str(&text, Vec::new()).unwrap();
        let printed = first.printable().unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        let second = load_str(&printed, Vec::new()).unwrap();
        assert_eq!(second.printable().unwrap(), printed);
        let kinds: Vec<&str> = (second.sources.iter()).map(|s| s.kind()).collect();
        assert_eq!(kinds, ["nats", "jetstream", "kafka", "amqp"]);
        let SourceConfig::Nats(nats) = &second.sources[0] else {
            panic!("a core route");
        };
        assert_eq!(nats.queue_group.as_deref(), Some("own"));
        assert_eq!(nats.max_pending(&second.config.routes[0]), 7);
    }
}
