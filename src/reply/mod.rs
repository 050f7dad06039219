//! Publishing replies back to the broker.

pub mod nats;

pub use nats::{NatsReplier, PublishError};
