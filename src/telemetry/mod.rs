//! What ricochet tells operators: metrics (names in one place), logs, the admin HTTP
//! server with `/healthz`, `/readyz` and `/metrics`, per-route request statistics
//! (`stats`, for the service discovery API), and (`trace`) OpenTelemetry traces, exported
//! by `otlp`, their context on requests and replies by `propagation`.

pub mod admin;
pub mod liveness;
pub mod logging;
pub mod metrics;
mod otlp;
mod propagation;
pub mod stats;
pub mod trace;

pub use admin::{Health, HealthSlot};
