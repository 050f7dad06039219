//! The two demos must show the same thing. `scripts/demo.sh` runs ricochet with
//! `config/demo.toml` on loopback; `docker-compose.yml` runs it with `config/compose.toml`
//! beside containers. Both use the same example programs (the orders service and the demo
//! caller). Without a Docker engine here, these tests keep the compose path honest: the two
//! configs hold the same routes and differ only in where the brokers are, and the compose
//! file, the Dockerfile and the caller agree with them on names, subjects and ports.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Value;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn toml_file(relative: &str) -> Value {
    toml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn yaml_file(relative: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The host and port of an address or URL (`host:port`, `scheme://user@host:port/...`).
fn host_and_port(address: &str) -> (String, u16) {
    let authority = address.split("://").last().unwrap();
    let authority = authority.split('/').next().unwrap();
    let authority = authority.rsplit('@').next().unwrap();
    let port =
        (authority.rsplit_once(':')).and_then(|(host, port)| Some((host, port.parse().ok()?)));
    let (host, port) = port.unwrap_or_else(|| panic!("no port in {address:?}"));
    (host.to_string(), port)
}

fn port(address: &str) -> u16 {
    host_and_port(address).1
}

fn host(address: &str) -> String {
    host_and_port(address).0
}

fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    path.split('.')
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{path} is missing"))
}

/// The routes by name, without what depends on where ricochet runs: broker addresses and
/// the consumer tuning for the local Kafka-protocol broker.
fn routes_without_addresses(config: &Value) -> BTreeMap<String, Value> {
    let routes = config["routes"].as_array().expect("routes");
    routes
        .iter()
        .map(|route| {
            let mut route = route.clone();
            let table = route.as_table_mut().unwrap();
            if let Some(kafka) = table.get_mut("kafka").and_then(Value::as_table_mut) {
                kafka.remove("brokers");
                kafka.remove("consumer");
            }
            if let Some(amqp) = table.get_mut("amqp").and_then(Value::as_table_mut) {
                amqp.remove("url");
            }
            (route["name"].as_str().unwrap().to_string(), route)
        })
        .collect()
}

/// The route of `source`: the demos have one Kafka and one AMQP route.
fn route<'a>(config: &'a Value, source: &str) -> &'a Value {
    let routes = config["routes"].as_array().expect("routes");
    let found: Vec<&Value> = routes
        .iter()
        .filter(|r| r.get("source").and_then(Value::as_str) == Some(source))
        .collect();
    assert_eq!(found.len(), 1, "one {source} route");
    found[0]
}

#[test]
fn both_demo_configs_hold_the_same_routes() {
    let native = toml_file("config/demo.toml");
    let compose = toml_file("config/compose.toml");
    let (native_routes, compose_routes) = (
        routes_without_addresses(&native),
        routes_without_addresses(&compose),
    );
    let names = |r: &BTreeMap<String, Value>| r.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&native_routes),
        names(&compose_routes),
        "config/demo.toml and config/compose.toml name the same routes"
    );
    for (name, route) in &native_routes {
        assert_eq!(
            route, &compose_routes[name],
            "route {name} is the same in config/demo.toml and config/compose.toml, broker addresses aside"
        );
    }
    for key in ["upstream.base_url", "upstream.request_timeout"] {
        assert_eq!(text(&native, key), text(&compose, key), "{key}");
    }
    assert_eq!(
        port(text(&native, "admin.listen")),
        port(text(&compose, "admin.listen")),
        "the admin port"
    );
}

#[test]
fn the_compose_file_runs_the_compose_config_against_its_own_services() {
    let config = toml_file("config/compose.toml");
    let compose = yaml_file("docker-compose.yml");
    let services = &compose["services"];
    let strings = |value: &serde_yaml::Value| -> Vec<String> {
        value
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };

    let ricochet = &services["ricochet"];
    assert!(
        strings(&ricochet["command"]).contains(&"/etc/ricochet/compose.toml".to_string()),
        "the ricochet service runs config/compose.toml: {:?}",
        ricochet["command"]
    );
    assert!(
        strings(&ricochet["volumes"]).contains(&"./config:/etc/ricochet:ro".to_string()),
        "config/ is mounted at /etc/ricochet"
    );
    assert_eq!(ricochet["network_mode"].as_str(), Some("service:orders"));

    // ricochet shares the orders container's network: the service and the admin server are
    // published there.
    let published = strings(&services["orders"]["ports"]);
    for (what, address) in [
        ("the service", text(&config, "upstream.base_url")),
        ("the admin server", text(&config, "admin.listen")),
    ] {
        let port = port(address);
        assert!(
            published.contains(&format!("{port}:{port}")),
            "the orders service publishes {what}'s port {port}: {published:?}"
        );
    }

    // Every broker compose.toml names is a service of the compose file.
    let kafka = route(&config, "kafka");
    let amqp = route(&config, "amqp");
    for address in [
        text(&config, "nats.url"),
        text(kafka, "kafka.brokers"),
        text(amqp, "amqp.url"),
    ] {
        let host = host(address);
        assert!(
            services.get(host.as_str()).is_some(),
            "compose.toml's broker {address} is a service of docker-compose.yml"
        );
    }

    // The caller talks to the same brokers and waits for the same admin server.
    let environment = &services["demo"]["environment"];
    let env = |key: &str| environment[key].as_str().unwrap_or_default().to_string();
    assert_eq!(env("NATS_URL"), text(&config, "nats.url"));
    assert_eq!(env("KAFKA_BROKERS"), text(kafka, "kafka.brokers"));
    assert_eq!(env("AMQP_URL"), text(amqp, "amqp.url"));
    assert_eq!(
        port(&env("READY_URL")),
        port(text(&config, "admin.listen")),
        "the caller waits for ricochet's /readyz"
    );
}

#[test]
fn the_dockerfile_and_demo_sh_use_the_same_programs() {
    let dockerfile = read("Dockerfile");
    let compose = yaml_file("docker-compose.yml");
    for (service, target) in [
        ("orders", "orders-service"),
        ("ricochet", "ricochet"),
        ("demo", "demo-caller"),
    ] {
        assert_eq!(
            compose["services"][service]["build"]["target"].as_str(),
            Some(target),
            "docker-compose.yml builds {service} from the Dockerfile's {target} stage"
        );
        assert!(
            dockerfile.contains(&format!(" AS {target}")),
            "the Dockerfile has a {target} stage"
        );
    }
    let demo = read("scripts/demo.sh");
    for example in ["orders-service", "demo-caller"] {
        assert!(
            dockerfile.contains(&format!("--example {example}")),
            "the Dockerfile builds {example}"
        );
        assert!(
            demo.contains(&format!("examples/{example}")),
            "scripts/demo.sh runs {example}"
        );
    }
    assert!(
        demo.contains("--config config/demo.toml"),
        "scripts/demo.sh runs config/demo.toml"
    );
    // The orders service listens where both configs expect it.
    let service = read("examples/orders_service.rs");
    let config = toml_file("config/demo.toml");
    let upstream_port = port(text(&config, "upstream.base_url"));
    assert!(
        service.contains(&format!("127.0.0.1:{upstream_port}")),
        "the orders service's default address has port {upstream_port}"
    );
    assert!(
        dockerfile.contains(&format!("ORDERS_LISTEN=0.0.0.0:{upstream_port}")),
        "the orders container listens on {upstream_port}"
    );
}

#[test]
fn the_caller_sends_to_the_routes_of_the_configs() {
    let caller = read("examples/demo_caller.rs");
    let constant = |name: &str| -> String {
        let start = format!("const {name}: &str = \"");
        let rest = caller
            .split(&start)
            .nth(1)
            .unwrap_or_else(|| panic!("examples/demo_caller.rs defines {name}"));
        rest.split('"').next().unwrap().to_string()
    };
    let config = toml_file("config/demo.toml");
    let kafka = route(&config, "kafka");
    let amqp = route(&config, "amqp");
    assert_eq!(constant("REQUEST_TOPIC"), text(kafka, "subject"));
    assert_eq!(constant("REPLY_TOPIC"), text(kafka, "kafka.reply_topic"));
    let queue = amqp
        .get("amqp")
        .and_then(|a| a.get("queue"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| text(amqp, "subject"));
    assert_eq!(constant("AMQP_QUEUE"), queue);
    // The core NATS subjects the caller sends to are routes of the config.
    let subjects: Vec<&str> = config["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("source").is_none())
        .map(|r| r["subject"].as_str().unwrap())
        .collect();
    for subject in [
        "orders.create",
        "orders.list",
        "orders.flaky",
        "orders.slow",
    ] {
        assert!(
            caller.contains(&format!("\"{subject}\"")),
            "the caller sends {subject}"
        );
        assert!(subjects.contains(&subject), "{subject} is a route");
    }
    assert!(subjects.contains(&"orders.{id}.get"));
}

/// Until tansu is ready, `scripts/demo.sh` runs config/demo.toml less its Kafka route (an awk
/// program in the script): that config must hold every other route unchanged and pass
/// `ricochet check`, or the first replies a newcomer waits for would not come.
#[test]
fn the_demo_without_kafka_runs_every_route_but_kafkas() {
    let demo = read("scripts/demo.sh");
    let program = demo
        .split("awk '")
        .nth(1)
        .and_then(|rest| rest.split("' config/demo.toml").next())
        .expect("scripts/demo.sh strips the Kafka route with awk '...' config/demo.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("awk")
        .arg(program)
        .arg(root.join("config/demo.toml"))
        .output()
        .expect("awk runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stripped = String::from_utf8(out.stdout).unwrap();
    let without: Value = toml::from_str(&stripped).unwrap_or_else(|e| panic!("{e}\n{stripped}"));

    let whole = toml_file("config/demo.toml");
    let expected: Vec<&Value> = whole["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("source").and_then(Value::as_str) != Some("kafka"))
        .collect();
    let kept: Vec<&Value> = without["routes"].as_array().unwrap().iter().collect();
    assert_eq!(kept, expected, "every route but the Kafka one, unchanged");
    assert!(
        kept.len() < whole["routes"].as_array().unwrap().len(),
        "the Kafka route is gone"
    );
    for key in ["nats", "upstream", "admin"] {
        assert_eq!(without[key], whole[key], "[{key}] unchanged");
    }

    let file = std::env::temp_dir().join(format!(
        "ricochet-demo-without-kafka-{}.toml",
        std::process::id()
    ));
    std::fs::write(&file, &stripped).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_ricochet"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("ricochet check runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        check.status.success(),
        "ricochet check refuses the demo's config without Kafka: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
