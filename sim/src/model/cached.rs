//! [`Cached`]: a shared value whose hash is computed once.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A shared value with its hash computed once.
///
/// The checker fingerprints every generated state by hashing all of it; hashing a whole
/// [`Node`] again for each state would dominate the run time. The fingerprint comes from
/// the std SipHash with fixed keys, so it is the same in every run.
#[derive(Debug)]
pub struct Cached<T> {
    value: Arc<T>,
    fingerprint: u64,
}

impl<T: Hash> Cached<T> {
    /// Wraps `value`, hashing it once.
    pub fn new(value: T) -> Cached<T> {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        Cached {
            fingerprint: hasher.finish(),
            value: Arc::new(value),
        }
    }
}

impl<T> Clone for Cached<T> {
    fn clone(&self) -> Self {
        Cached {
            value: Arc::clone(&self.value),
            fingerprint: self.fingerprint,
        }
    }
}

impl<T> Deref for Cached<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Hash for Cached<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

impl<T: PartialEq> PartialEq for Cached<T> {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && (Arc::ptr_eq(&self.value, &other.value) || *self.value == *other.value)
    }
}

impl<T: Eq> Eq for Cached<T> {}

impl<T: Ord> PartialOrd for Cached<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: Ord> Ord for Cached<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}
