//! Element-level merge (DESIGN §11): hash fields, set and sorted-set
//! members and counters merged one by one, with no metadata beyond the
//! un-acknowledged writes table.
//!
//! # Layout
//! - [`counter`]: which values count and how increments add (overflow wraps).
//! - [`view`]: the key as the rule reads it ([`view::KeyView`], answered by
//!   the glue or the simulation) and the plan it returns ([`view::KeyPlan`]).
//! - [`rule`]: the rule itself, for one remote record on one key.
//! - [`memory`]: a key in memory that executes plans (the reference the
//!   glue's executor must match; tests and the simulation use it).
//! - [`entry`]: one entry of a remote batch, with the table (dedup of
//!   re-sent changes, flushes, pruning).
//!
//! Why pure, in the shape of [`crate::core::decide`]: convergence depends on
//! these decisions alone; the glue only reads and writes elements, and the
//! seeded simulation (`tests/simulation.rs`) runs this very code.
//!
//! # What the glue must do around it (mirrored by the simulation)
//! - Capture: one [`crate::core::protocol::Op::Element`] per write it can
//!   describe, in execution order, with `seen` = the peer's seq applied here
//!   when the write ran; the same change recorded with
//!   [`crate::core::pending::PendingWrites::record_element`]. Anything else
//!   ships a whole-key image, recorded as today.
//! - Apply: for each entry of a batch, [`entry::plan_entry`] with a view of
//!   the entry's key, then execute the step before planning the next (a
//!   plan must leave the key as [`memory::MemoryKey::execute`] would).
//! - Dirty-key resync: re-send every pending element change exactly (its
//!   stamp, `shipped_in` = the seq that first carried it, its `seen`); a
//!   key with a pending image is re-sent as an image of its current content
//!   **stamped now** and replaces the key's entries in the table
//!   ([`crate::core::pending::PendingWrites::forget_elements`], then
//!   `record_key`): its content already holds the peer's later changes,
//!   which a recorded stamp would make the peer apply twice.
//! - Protocol: bump [`crate::core::protocol::PROTOCOL_VERSION`] when it
//!   sends these records; until then `decide` refuses them.

pub mod coalesce;
pub mod counter;
pub mod entry;
pub mod memory;
pub mod rule;
pub mod view;

use thiserror::Error;

use crate::core::protocol::{ElementChange, Shape};

/// Why an element change from the peer cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ElementError {
    /// A string key has exactly one element, named by the empty string.
    #[error("a string key's change must name the empty element")]
    StringElement,
    /// A set member carries no value.
    #[error("a set member cannot carry a value")]
    SetValue,
    /// Set members do not count.
    #[error("a set member cannot be incremented")]
    SetIncrement,
}

/// Refuse a change no capture of ours would ship (the peer is not trusted
/// to send only sensible ones; nothing it sends may panic the rule).
pub fn check(change: &ElementChange) -> Result<(), ElementError> {
    match change {
        ElementChange::Set {
            shape: Shape::Set,
            value,
            ..
        } if !value.is_empty() => Err(ElementError::SetValue),
        ElementChange::Incr {
            shape: Shape::Set, ..
        } => Err(ElementError::SetIncrement),
        c if c.shape() == Some(Shape::Str) && c.elem().is_some_and(|e| !e.is_empty()) => {
            Err(ElementError::StringElement)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
