//! The message contract every part of ricochet shares, at the bottom of the module graph
//! (it imports nothing of ricochet's): the request as a source hands it over
//! ([`Inbound`]), the [`Reply`] and the error kinds ricochet answers itself, the
//! [`DeadLetter`] header set, and the [`Settle`] contract through which the pipeline has a
//! source publish and settle, with its typed outcomes and errors.

pub mod dead_letter;
pub mod inbound;
pub mod reply;
pub mod settle;

pub use dead_letter::DeadLetter;
pub use inbound::{header, reply_destination, Inbound, Position, UnreadableHeader};
pub use reply::{ErrorKind, Reply, ReplyHeaders};
pub use settle::{
    Accepted, Cause, Confirmed, DeadLettered, Redelivered, Settle, SettleError, Undelivered,
};
