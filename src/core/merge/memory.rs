//! A key held in memory: a [`KeyView`] that executes [`KeyPlan`]s.
//!
//! Why in the core: it is the reference meaning of a plan. The glue's
//! executor must leave Redis holding what this one leaves in memory; the
//! rule's tests and the simulation (`tests/simulation.rs`) store keys in it.

use std::collections::BTreeMap;

use super::counter;
use super::view::{image_elements, KeyPlan, KeyShape, KeyView, Reset};
use crate::core::protocol::{Op, Shape, Value};

/// One key's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryKey {
    /// No such key.
    Missing,
    /// A key whose elements merge one by one (never empty: like Redis, a
    /// collection goes with its last element).
    Elements(Shape, BTreeMap<Vec<u8>, Vec<u8>>),
    /// Another type, held whole.
    Other(Value),
}

impl MemoryKey {
    /// The key a whole-key image (`Op::Set` / `Op::Delete`) describes.
    pub fn from_image(op: &Op) -> MemoryKey {
        match (image_elements(op), op) {
            ((KeyShape::Elements(s), m), _) => MemoryKey::Elements(s, m),
            ((KeyShape::Other, _), Op::Set { value, .. }) => MemoryKey::Other(value.clone()),
            _ => MemoryKey::Missing,
        }
    }

    /// The key as a whole-key value (what an image of it carries).
    pub fn to_value(&self) -> Option<Value> {
        match self {
            MemoryKey::Missing => None,
            MemoryKey::Other(v) => Some(v.clone()),
            MemoryKey::Elements(shape, m) => Some(match shape {
                Shape::Str => Value::String(m.get(&Vec::new()).cloned().unwrap_or_default()),
                Shape::Hash => Value::Hash(m.clone().into_iter().collect()),
                Shape::ZSet => Value::ZSet(m.clone().into_iter().collect()),
                Shape::Set => Value::Set(m.keys().cloned().collect()),
            }),
        }
    }

    /// Execute a plan: reset, then the element writes.
    pub fn execute(&mut self, plan: &KeyPlan<'_>) {
        match plan.reset {
            Reset::Keep => {}
            Reset::Clear => *self = MemoryKey::Missing,
            Reset::Image(op) => *self = MemoryKey::from_image(op),
        }
        for (elem, value) in &plan.writes {
            match value {
                Some(v) => {
                    let shape = plan.shape.unwrap_or(Shape::Hash);
                    match self {
                        MemoryKey::Elements(s, m) if *s == shape => {
                            m.insert(elem.clone(), v.clone());
                        }
                        _ => {
                            *self = MemoryKey::Elements(
                                shape,
                                BTreeMap::from([(elem.clone(), v.clone())]),
                            );
                        }
                    }
                }
                None => {
                    if let MemoryKey::Elements(_, m) = self {
                        m.remove(elem);
                        if m.is_empty() {
                            *self = MemoryKey::Missing;
                        }
                    }
                }
            }
        }
        // As the server's INCRBY/HINCRBY, or the read-and-write fallback.
        let shape = plan.shape.unwrap_or(Shape::Str);
        for (elem, delta) in &plan.adds {
            let current = self.get(elem);
            let value = counter::increment(shape, current.as_deref(), *delta);
            match self {
                MemoryKey::Elements(s, m) if *s == shape => {
                    m.insert(elem.clone(), value);
                }
                _ => *self = MemoryKey::Elements(shape, BTreeMap::from([(elem.clone(), value)])),
            }
        }
    }
}

impl KeyView for MemoryKey {
    fn shape(&self) -> KeyShape {
        match self {
            MemoryKey::Missing => KeyShape::Missing,
            MemoryKey::Elements(s, _) => KeyShape::Elements(*s),
            MemoryKey::Other(_) => KeyShape::Other,
        }
    }

    fn element_count(&self) -> usize {
        match self {
            MemoryKey::Elements(_, m) => m.len(),
            _ => 0,
        }
    }

    fn get(&self, elem: &[u8]) -> Option<Vec<u8>> {
        match self {
            MemoryKey::Elements(_, m) => m.get(elem).cloned(),
            _ => None,
        }
    }
}
