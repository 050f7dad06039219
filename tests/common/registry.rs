//! A schema registry for the tests, following the Confluent Schema Registry API that
//! ricochet uses (`GET /schemas/ids/{id}`, `GET /schemas/ids/{id}/versions`,
//! `GET /subjects/{subject}/versions/{version|latest}`), on port 0. It can go down (every
//! connection is closed at once, as a crashed registry behind a proxy) and come back.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    /// Index + 1 is the id.
    schemas: Vec<(String, Vec<Value>)>,
    /// subject -> ids, version n at index n - 1.
    subjects: HashMap<String, Vec<u32>>,
}

pub struct SchemaRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    /// When not 0: the status every request is answered with (a misconfigured registry).
    failing: Arc<std::sync::atomic::AtomicU16>,
    /// Requests answered (not counting those refused while down).
    answered: Arc<AtomicUsize>,
}

impl SchemaRegistry {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let down = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let (s, d, a, f) = (
            state.clone(),
            down.clone(),
            answered.clone(),
            failing.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let (state, answered, failing) = (s.clone(), a.clone(), f.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (state, answered) = (state.clone(), answered.clone());
                        let failing = failing.load(Ordering::SeqCst);
                        async move {
                            answered.fetch_add(1, Ordering::SeqCst);
                            if failing != 0 {
                                let status = StatusCode::from_u16(failing).unwrap();
                                let body = json!({"error_code": failing, "message": "failing"});
                                return Ok::<_, Infallible>(reply(status, body));
                            }
                            Ok::<_, Infallible>(answer(&state, &req))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            down,
            failing,
            answered,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The config section pointing ricochet at this registry.
    pub fn config(&self) -> String {
        format!(
            "[schema_registry]\nurl = \"{}\"\ntimeout = \"1s\"\n",
            self.url()
        )
    }

    /// Registers `schema` as the next version of `subject`, with references given as
    /// (name, subject, version); returns its id (a new id every time, as a test needs).
    pub fn register(&self, subject: &str, schema: &str, references: &[(&str, &str, u32)]) -> u32 {
        let mut state = self.state.lock().unwrap();
        let references = (references.iter())
            .map(|(name, subject, version)| {
                json!({"name": name, "subject": subject, "version": version})
            })
            .collect();
        state.schemas.push((schema.to_string(), references));
        let id = state.schemas.len() as u32;
        state.subjects.entry(subject.into()).or_default().push(id);
        id
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Answers every request with `status` (e.g. 401), or normally again with `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        self.failing.store(status.unwrap_or(0), Ordering::SeqCst);
    }

    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

fn answer(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !accept.contains("application/vnd.schemaregistry.v1+json") {
        return reply(
            StatusCode::NOT_ACCEPTABLE,
            json!({"error_code": 406, "message": "Not Acceptable"}),
        );
    }
    let state = state.lock().unwrap();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let schema_body = |id: u32| {
        let (schema, references) = &state.schemas[id as usize - 1];
        let mut body = json!({"schema": schema});
        if !references.is_empty() {
            body["references"] = Value::Array(references.clone());
        }
        body
    };
    let not_found = |code: u32, message: &str| {
        reply(
            StatusCode::NOT_FOUND,
            json!({"error_code": code, "message": message}),
        )
    };
    match segments.as_slice() {
        ["schemas", "ids", id] | ["schemas", "ids", id, "versions"] => {
            let id: u32 = id.parse().unwrap_or(0);
            if id == 0 || id as usize > state.schemas.len() {
                return not_found(40403, "Schema not found");
            }
            if segments.len() == 3 {
                return reply(StatusCode::OK, schema_body(id));
            }
            let versions: Vec<Value> = (state.subjects.iter())
                .flat_map(|(subject, ids)| {
                    (ids.iter().enumerate())
                        .filter(|(_, i)| **i == id)
                        .map(move |(n, _)| json!({"subject": subject, "version": n + 1}))
                })
                .collect();
            reply(StatusCode::OK, Value::Array(versions))
        }
        ["subjects", subject, "versions", version] => {
            let subject = percent_decode(subject);
            let Some(ids) = state.subjects.get(&subject) else {
                return not_found(40401, "Subject not found");
            };
            let index = match *version {
                "latest" => ids.len(),
                v => v.parse().unwrap_or(0),
            };
            let Some(id) = index.checked_sub(1).and_then(|i| ids.get(i)) else {
                return not_found(40402, "Version not found");
            };
            let mut body = schema_body(*id);
            body["subject"] = json!(subject);
            body["version"] = json!(index);
            body["id"] = json!(id);
            reply(StatusCode::OK, body)
        }
        _ => not_found(404, "no such endpoint"),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Avro produced and read by an independent implementation: Python's fastavro, through
/// `tests/avro_tool.py` (`pip install fastavro`).
pub mod fastavro {
    use std::process::Command;

    fn tool(args: &[&str]) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/avro_tool.py");
        let out = Command::new("python3")
            .arg(script)
            .args(args)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "avro_tool.py {args:?} failed (is fastavro installed? pip install fastavro): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `record` (JSON) in the Confluent wire format with schema `id`; `references` are the
    /// named schemas `schema` uses.
    pub fn encode(schema: &str, references: &[&str], id: u32, record: &str) -> Vec<u8> {
        let id = id.to_string();
        let mut args = vec!["encode", schema, &id, record];
        for reference in references {
            args.extend(["--ref", reference]);
        }
        hex(&tool(&args))
    }

    /// The schema id and the record (JSON) of a wire-format message.
    pub fn decode(schema: &str, references: &[&str], wire: &[u8]) -> (u32, serde_json::Value) {
        let wire: String = wire.iter().map(|b| format!("{b:02x}")).collect();
        let mut args = vec!["decode", schema, &wire];
        for reference in references {
            args.extend(["--ref", reference]);
        }
        let out: serde_json::Value = serde_json::from_str(&tool(&args)).unwrap();
        (out["id"].as_u64().unwrap() as u32, out["record"].clone())
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
