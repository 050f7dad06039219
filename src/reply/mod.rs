//! Publishing replies and dead letters back to the broker.

pub mod amqp;
pub mod dead_letter;
pub mod kafka;
pub mod nats;

pub use dead_letter::DeadLetter;
pub use kafka::KafkaReplier;
pub use nats::{ListingError, NatsReplier, PublishError, Unpublished};
