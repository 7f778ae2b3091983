//! The only code that talks to Redis: capture, flush, apply, commands,
//! server events, and module load.

pub mod apply;
pub mod capture;
pub mod commands;
pub mod configs;
pub mod events;
pub mod ffi;
pub mod flush;
pub mod fullsync;
pub mod group_waiters;
pub mod guard;
pub mod hash_set;
pub mod load;
pub mod node;
pub mod persist;
pub mod served_guard;
pub mod server;
pub mod stream_append;
pub mod stream_groups;
pub mod stream_merge;
pub mod trace;
pub mod unshared;
pub mod waiters;
