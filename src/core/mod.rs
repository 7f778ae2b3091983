//! The pure core: no Redis, no sockets. Everything here is unit-tested.

pub mod auth;
pub mod codec;
pub mod config;
pub mod decide;
pub mod dirty;
pub mod fuzzing;
pub mod hlc;
pub mod image;
pub mod merge;
pub mod outbox;
pub mod pairing;
pub mod pending;
pub mod pending_elements;
pub mod protocol;
pub mod stats;
pub mod table_key;
