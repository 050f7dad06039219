//! Pure mapping between messages and HTTP, both ways: no I/O here, so every rule of the
//! message contract is unit-tested in isolation.
//!
//! `Inbound` -> `http::Request` ([`request`]), `http::Response` -> [`Reply`] ([`reply`]).

pub mod headers;
#[cfg(test)]
mod hostile;
pub mod path;
pub mod reply;
pub mod request;

pub use headers::HeaderFilter;
pub use path::PathTemplate;
pub use request::{MapError, RequestMapping, SetupError};
