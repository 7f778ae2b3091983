//! The pure core: no Redis, no sockets. Everything here is unit-tested.

pub mod auth;
pub mod codec;
pub mod config;
pub mod decide;
pub mod dirty;
pub mod endpoint;
pub mod fuzzing;
pub mod history;
pub mod hlc;
pub mod image;
pub mod inbound_budget;
pub mod link_slot;
pub mod list_op;
pub mod merge;
pub mod outbox;
pub mod pairing;
pub mod pending;
pub mod pending_elements;
pub mod protect;
pub mod protocol;
pub mod restart;
pub mod served;
pub mod stats;
pub mod table_key;
pub mod unshared;
pub mod write_hint;
