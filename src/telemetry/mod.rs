//! What ricochet tells operators: metrics (names in one place), logs, the admin HTTP
//! server with `/healthz`, `/readyz` and `/metrics`, and (`discovery`) the NATS micro
//! services API, and (`trace`) OpenTelemetry traces.

pub mod admin;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod stats;
pub mod trace;

pub use admin::{Health, HealthSlot};
