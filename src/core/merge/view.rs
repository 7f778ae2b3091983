//! The key as the merge rule sees it: a read-only view of what Redis holds,
//! and the planned state on top of it.
//!
//! Why a view and not a copy: the rule reads a handful of elements (the one
//! a record names, those the pending entries name) of keys that can hold
//! millions; the glue answers those reads through the key API, the
//! simulation from its map. The rule never writes: it builds a [`KeyPlan`]
//! that the caller executes, as `decide` does for key images.

use std::collections::BTreeMap;

use super::counter;
use crate::core::protocol::{Op, Shape, Value};

/// What a key holds, as far as the merge cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyShape {
    /// No such key.
    Missing,
    /// A key whose elements merge one by one.
    Elements(Shape),
    /// A type only whole-key images carry (list, stream, module type).
    Other,
}

/// Read access to one key, answered by the glue (Redis) or the simulation.
pub trait KeyView {
    /// Its type.
    fn shape(&self) -> KeyShape;
    /// Number of elements (0 for a missing key or another type).
    fn element_count(&self) -> usize;
    /// One element's value (a set member's value is empty).
    fn get(&self, elem: &[u8]) -> Option<Vec<u8>>;
}

/// The elements of a key image, for the rule to read after applying it.
pub fn image_elements(op: &Op) -> (KeyShape, BTreeMap<Vec<u8>, Vec<u8>>) {
    let pairs = |items: &[(Vec<u8>, Vec<u8>)]| items.iter().cloned().collect();
    match op {
        Op::Set { value, .. } => match value {
            Value::String(v) => (
                KeyShape::Elements(Shape::Str),
                BTreeMap::from([(Vec::new(), v.clone())]),
            ),
            Value::Hash(items) => (KeyShape::Elements(Shape::Hash), pairs(items)),
            Value::ZSet(items) => (KeyShape::Elements(Shape::ZSet), pairs(items)),
            Value::Set(members) => (
                KeyShape::Elements(Shape::Set),
                members.iter().map(|m| (m.clone(), Vec::new())).collect(),
            ),
            // A hash with field TTLs is a hash to the rule: element writes
            // on it are `HSET`/`HDEL`, which the server executes the same
            // on both sides (an `HSET` clears that field's TTL); the TTLs
            // themselves only travel with whole-key images.
            Value::HashTtl(items) => (
                KeyShape::Elements(Shape::Hash),
                items
                    .iter()
                    .map(|(f, v, _)| (f.clone(), v.clone()))
                    .collect(),
            ),
            Value::List(_) | Value::Stream(_) | Value::Dump(_) => {
                (KeyShape::Other, BTreeMap::new())
            }
        },
        _ => (KeyShape::Missing, BTreeMap::new()),
    }
}

/// What the key is reset to before the element writes of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset<'r> {
    /// Nothing: the writes go onto the key as it is.
    Keep,
    /// Delete the key first.
    Clear,
    /// Write this whole-key image first (an `Op::Set` or `Op::Delete`).
    Image(&'r Op),
}

/// The net effect of one remote record on one key: reset, then set or
/// delete single elements. Executing it in this order yields the state the
/// rule computed; a write of an element into a missing key creates the key
/// with `shape`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan<'r> {
    /// First step.
    pub reset: Reset<'r>,
    /// The key's family for the writes (meaningless when there are none).
    pub shape: Option<Shape>,
    /// Element, new value (`None`: delete it), in element order.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Element, increment: counters of a string or hash key as it is, whose
    /// value the plan did not need to read. Executed by the server's own
    /// increment (no read, one call); where the server refuses it (the sum
    /// overflows, the value is not an integer) the caller reads the element
    /// and writes [`counter::increment`] of it, which is what the rule means.
    /// Disjoint from `writes`.
    pub adds: Vec<(Vec<u8>, i64)>,
    /// A string's write keeps the key's expiry (only increments changed it
    /// since the reset); false when a `SET` of a value or a re-creation is
    /// part of it, which clears the expiry as on the side that made it.
    pub keep_ttl: bool,
}

/// Where unchanged elements are read from.
enum Base<'v> {
    View(&'v dyn KeyView),
    Image(BTreeMap<Vec<u8>, Vec<u8>>),
    Empty,
}

/// The key as planned so far: a base and the element writes on top.
pub(super) struct Planned<'v, 'r> {
    base: Base<'v>,
    reset: Reset<'r>,
    shape: KeyShape,
    /// Elements of the base; the planned count is derived on demand (only a
    /// delete needs it), so a plan of sets reads nothing from the key.
    base_count: usize,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Increments of base elements not read yet (see [`KeyPlan::adds`]).
    adds: BTreeMap<Vec<u8>, i64>,
    keep_ttl: bool,
}

impl<'v, 'r> Planned<'v, 'r> {
    /// Start from what the key holds now.
    pub fn new(view: &'v dyn KeyView) -> Self {
        Planned {
            shape: view.shape(),
            base_count: view.element_count(),
            base: Base::View(view),
            reset: Reset::Keep,
            writes: BTreeMap::new(),
            adds: BTreeMap::new(),
            keep_ttl: true,
        }
    }

    /// Does a change of `shape` fit the key without changing its type?
    pub fn fits(&self, shape: Shape) -> bool {
        match self.shape {
            KeyShape::Missing => true,
            KeyShape::Elements(s) => s == shape,
            KeyShape::Other => false,
        }
    }

    /// One element's planned value.
    pub fn get(&self, elem: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.writes.get(elem) {
            return v.clone();
        }
        match (self.adds.get(elem), self.shape) {
            (Some(d), KeyShape::Elements(shape)) => Some(counter::increment(
                shape,
                self.base_get(elem).as_deref(),
                *d,
            )),
            _ => self.base_get(elem),
        }
    }

    fn base_get(&self, elem: &[u8]) -> Option<Vec<u8>> {
        match &self.base {
            Base::View(v) => v.get(elem),
            Base::Image(m) => m.get(elem).cloned(),
            Base::Empty => None,
        }
    }

    /// The planned number of elements.
    fn len(&self) -> usize {
        let mut n = self.base_count as i64;
        for (elem, after) in &self.writes {
            let before = self.base_get(elem).is_some();
            n += i64::from(after.is_some()) - i64::from(before);
        }
        // An increment leaves its element present (created at 0 if missing).
        for elem in self.adds.keys() {
            n += 1 - i64::from(self.base_get(elem).is_some());
        }
        n.max(0) as usize
    }

    /// Delete the key.
    pub fn clear(&mut self) {
        self.reset = Reset::Clear;
        self.base = Base::Empty;
        self.shape = KeyShape::Missing;
        self.base_count = 0;
        self.writes.clear();
        self.adds.clear();
        self.keep_ttl = false;
    }

    /// A string's value was overwritten (a `SET`): its expiry is cleared.
    pub fn drop_ttl(&mut self) {
        self.keep_ttl = false;
    }

    /// Replace the key with a whole-key image.
    pub fn image(&mut self, op: &'r Op) {
        let (shape, elements) = image_elements(op);
        self.reset = Reset::Image(op);
        self.shape = shape;
        self.base_count = elements.len();
        self.base = Base::Image(elements);
        self.writes.clear();
        self.adds.clear();
        self.keep_ttl = true;
    }

    /// Set an element; a key of another type is replaced by one of `shape`.
    pub fn set(&mut self, shape: Shape, elem: &[u8], value: Vec<u8>) {
        if !self.fits(shape) {
            self.clear();
        }
        self.shape = KeyShape::Elements(shape);
        self.adds.remove(elem);
        self.writes.insert(elem.to_vec(), Some(value));
    }

    /// Delete an element (of a key of `shape`; another type has none).
    pub fn delete(&mut self, shape: Shape, elem: &[u8]) {
        if !self.fits(shape) || self.get(elem).is_none() {
            return;
        }
        self.adds.remove(elem);
        self.writes.insert(elem.to_vec(), None);
        if self.len() == 0 {
            // Redis deletes a collection with its last element.
            self.clear();
        }
    }

    /// Add `delta` to an element (missing = 0, a non-integer absorbs it).
    ///
    /// On a string or hash key as it is (nothing written to the element in
    /// this plan) the increment is deferred to the server instead of read:
    /// a counter applied from the peer then costs one call, like `INCRBY`.
    pub fn increment(&mut self, shape: Shape, elem: &[u8], delta: i64) {
        let deferrable = matches!(shape, Shape::Str | Shape::Hash)
            && matches!(self.base, Base::View(_))
            && self.fits(shape)
            && !self.writes.contains_key(elem);
        if deferrable {
            self.shape = KeyShape::Elements(shape);
            let d = self.adds.entry(elem.to_vec()).or_insert(0);
            *d = counter::add(shape, *d, delta);
            return;
        }
        let current = if self.fits(shape) {
            self.get(elem)
        } else {
            None
        };
        let value = counter::increment(shape, current.as_deref(), delta);
        self.set(shape, elem, value);
    }

    /// The plan: reset, then the writes.
    pub fn finish(self) -> KeyPlan<'r> {
        KeyPlan {
            reset: self.reset,
            shape: match self.shape {
                KeyShape::Elements(s) => Some(s),
                _ => None,
            },
            writes: self.writes.into_iter().collect(),
            adds: self.adds.into_iter().collect(),
            keep_ttl: self.keep_ttl,
        }
    }
}
