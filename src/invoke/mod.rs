//! The invoker: calls the co-located HTTP service and classifies the result once.
//!
//! It owns the hyper client (a keep-alive pool to `upstream.base_url`). The resilience
//! stack (limit, breaker, retry with backoff, each attempt inside its timeout) wraps
//! [`client::Upstream::call`] in this module.

pub mod classify;
pub mod client;
pub mod error;

pub use classify::{classify, Class};
pub use client::{Upstream, UpstreamResponse};
pub use error::InvokeError;
