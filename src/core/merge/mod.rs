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
