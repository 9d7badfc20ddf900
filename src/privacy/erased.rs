//! The erasure list as a batch is filtered with it: the erased users' keys,
//! as first read and as added since, looked up at every key version a key
//! in memory may be of.

use std::collections::HashSet;
use std::sync::Arc;

use crate::privacy::masking::{Masker, Token};

/// The erased users' keys, as a batch is filtered with them: the list as
/// first read, and what was added since, each a set of its own (an
/// erasure adds one key: reading it is one index range, not the list).
#[derive(Debug, Clone, Default)]
pub struct ErasedUsers {
    sets: Vec<Arc<HashSet<String>>>,
    /// The oldest key version a key in memory may be of: the database's
    /// (or the version a re-key moved from) when the list was first read.
    /// rotate-key re-keys the list in place, so a key read before keeps
    /// its version; a user is looked up at every version since.
    pub(crate) oldest: u16,
}

/// More sets than this are merged into one (a set per erasure since the
/// list was first read).
const MAX_ERASED_SETS: usize = 16;

impl ErasedUsers {
    /// The list `keys`, read at key version `oldest` or later.
    pub fn new(keys: HashSet<String>, oldest: u16) -> Self {
        Self {
            sets: vec![Arc::new(keys)],
            oldest,
        }
    }

    /// This list with `added` (keys listed since, at the current version).
    pub(crate) fn with(&self, added: HashSet<String>) -> Self {
        let mut sets = self.sets.clone();
        if !added.is_empty() {
            sets.push(Arc::new(added));
        }
        if sets.len() > MAX_ERASED_SETS {
            let all: HashSet<String> = sets.iter().flat_map(|s| s.iter().cloned()).collect();
            sets = vec![Arc::new(all)];
        }
        Self {
            sets,
            oldest: self.oldest,
        }
    }

    /// Nobody is erased.
    pub fn is_empty(&self) -> bool {
        self.sets.iter().all(|s| s.is_empty())
    }

    /// Whether `user_id` is on the list, its user key computed by `masker`
    /// at the batch's version and at every older one a key in memory may
    /// be of (one chain computes them all).
    pub fn contains(&self, masker: &Masker, user_id: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let has = |k: &Token| self.sets.iter().any(|s| s.contains(k.as_str()));
        if self.oldest < masker.version() {
            masker
                .users()
                .user_keys_since(user_id, self.oldest)
                .iter()
                .any(has)
        } else {
            has(&masker.user_key(user_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::masking::KeyVersions;

    fn masker(keys: &[&str], version: u16) -> Masker {
        let doc = serde_json::json!({ "versions": keys }).to_string();
        let v = KeyVersions::parse(&doc, "test").unwrap();
        Masker::versions(&v, Some(&v)).unwrap().at(version).unwrap()
    }

    #[test]
    fn a_user_is_found_at_every_version_a_key_in_memory_may_be_of_and_in_every_set() {
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let one = masker(&[&a], 1);
        let three = masker(&[&a, &b, &c], 3);
        let (early, late) = ("user-early", "user-late");
        // Read at version 1; the database then moved to 3 (two rotations)
        // and listed another user there.
        let list = ErasedUsers::new(
            [one.user_key(early).as_str().to_owned()]
                .into_iter()
                .collect(),
            1,
        );
        let list = list.with(
            [three.user_key(late).as_str().to_owned()]
                .into_iter()
                .collect(),
        );
        assert!(
            list.contains(&three, early),
            "its key of version 1, still in memory"
        );
        assert!(list.contains(&three, late));
        assert!(!list.contains(&three, "someone-else"));
        // Read at version 3: only version 3 is looked at.
        let fresh = ErasedUsers::new(
            [one.user_key(early).as_str().to_owned()]
                .into_iter()
                .collect(),
            3,
        );
        assert!(
            !fresh.contains(&three, early),
            "a key of version 1 is not looked for"
        );
        // Many additions are merged into one set, nothing lost.
        let mut many = ErasedUsers::new(HashSet::new(), 3);
        for i in 0..40 {
            many = many.with(
                [three.user_key(&format!("u{i}")).as_str().to_owned()]
                    .into_iter()
                    .collect(),
            );
        }
        assert!(many.sets.len() <= MAX_ERASED_SETS);
        assert!((0..40).all(|i| many.contains(&three, &format!("u{i}"))));
        assert!(ErasedUsers::default().is_empty());
    }
}
