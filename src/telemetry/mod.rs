//! What ricochet tells operators: metrics (names in one place), logs, and the admin HTTP
//! server with `/healthz`, `/readyz` and `/metrics`.

pub mod admin;
pub mod logging;
pub mod metrics;

pub use admin::Health;
