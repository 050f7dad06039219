//! A tiny "legacy" REST service for demos: an in-memory orders API, plus endpoints that
//! misbehave on purpose so ricochet's timeouts, retries and circuit breaker can be seen.
//!
//! | endpoint | does |
//! |---|---|
//! | `POST /orders` | stores the JSON body as a new order, `201` with `{"id": N, ...}` |
//! | `GET /orders` | all orders |
//! | `GET /orders/{id}` | one order, or `404` |
//! | `GET /slow?ms=N` | answers after N ms (default 3000) |
//! | `GET /flaky?fail=N` | `503` N times in a row (default 2), then `200`, and again |
//! | `GET /healthz` | `200` |
//!
//! `ORDERS_LISTEN` sets the address (default `127.0.0.1:8080`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

#[derive(Default)]
struct Orders {
    next_id: AtomicU64,
    orders: Mutex<BTreeMap<u64, Value>>,
    /// Calls of `/flaky` so far, to fail in a repeating pattern.
    flaky_calls: AtomicU64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::var("ORDERS_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&listen).await?;
    println!(
        "orders service listening on http://{}",
        listener.local_addr()?
    );
    let state = Arc::new(Orders::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(state: &Orders, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => json_response(StatusCode::OK, json!({"status": "ok"})),
        (&Method::POST, ["orders"]) => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut fields)) => {
                let id = state.next_id.fetch_add(1, Ordering::SeqCst) + 1;
                fields.insert("id".into(), json!(id));
                fields.insert("state".into(), json!("created"));
                let order = Value::Object(fields);
                state.orders.lock().unwrap().insert(id, order.clone());
                json_response(StatusCode::CREATED, order)
            }
            _ => json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "body must be a JSON object"}),
            ),
        },
        (&Method::GET, ["orders"]) => {
            let orders: Vec<Value> = state.orders.lock().unwrap().values().cloned().collect();
            json_response(StatusCode::OK, json!(orders))
        }
        (&Method::GET, ["orders", id]) => {
            let order = id
                .parse::<u64>()
                .ok()
                .and_then(|id| state.orders.lock().unwrap().get(&id).cloned());
            match order {
                Some(order) => json_response(StatusCode::OK, order),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("no order {id}")}),
                ),
            }
        }
        (_, ["slow"]) => {
            let ms = param(&query, "ms").unwrap_or(3000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(StatusCode::OK, json!({"slept_ms": ms}))
        }
        (_, ["flaky"]) => {
            let fail = param(&query, "fail").unwrap_or(2);
            let call = state.flaky_calls.fetch_add(1, Ordering::SeqCst);
            if call % (fail + 1) < fail {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "flaky: try again", "call": call + 1}),
                )
            } else {
                json_response(StatusCode::OK, json!({"ok": true, "call": call + 1}))
            }
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no route for {method} {path}")}),
        ),
    }
}

fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}
