//! Publishing replies and dead letters back to the broker.

pub mod dead_letter;
pub mod nats;

pub use dead_letter::DeadLetter;
pub use nats::{NatsReplier, PublishError};
