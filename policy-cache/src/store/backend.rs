//! Where the store's entries live: the sled database ([`Db`]) or, while it cannot be used,
//! memory ([`Memory`]). Both hold the same encoded values under the same keys, so the store's
//! rules (decoding, failure lists) do not care which one it is on.

use super::{decode, encode_failures};
use crate::FailureRecord;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// One of the three trees (see the module doc of `store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tree {
    Policies,
    Negative,
    Failures,
}

impl Tree {
    const ALL: [Tree; 3] = [Tree::Policies, Tree::Negative, Tree::Failures];

    /// The sled tree's name.
    fn name(self) -> &'static str {
        match self {
            Tree::Policies => "policies",
            Tree::Negative => "negative",
            Tree::Failures => "failures",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A change of one value: the old value (if any) to the new one (`None` removes it). It may
/// be called more than once (sled retries it when another write got there first).
pub(super) type Change<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

pub(super) enum Backend {
    Db(Db),
    Memory(Memory),
}

/// The open database and its trees, indexed by [`Tree`].
pub(super) struct Db {
    db: sled::Db,
    trees: [sled::Tree; 3],
}

impl Db {
    pub(super) fn open(dir: &Path) -> sled::Result<Db> {
        let db = sled::open(dir)?;
        let trees = [
            db.open_tree(Tree::Policies.name())?,
            db.open_tree(Tree::Negative.name())?,
            db.open_tree(Tree::Failures.name())?,
        ];
        Ok(Db { db, trees })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.index()]
    }

    /// A handle to flush without holding the store's lock.
    pub(super) fn handle(&self) -> sled::Db {
        self.db.clone()
    }

    pub(super) fn flush(&self) -> sled::Result<()> {
        self.db.flush().map(drop)
    }

    pub(super) fn get(&self, tree: Tree, key: &str) -> sled::Result<Option<sled::IVec>> {
        self.tree(tree).get(key.as_bytes())
    }

    pub(super) fn update(
        &self,
        tree: Tree,
        key: &str,
        change: &mut Change<'_>,
    ) -> sled::Result<Option<Vec<u8>>> {
        let old = self.tree(tree).fetch_and_update(key.as_bytes(), change)?;
        Ok(old.map(|v| v.to_vec()))
    }

    /// Every entry of `tree` that can be read; read errors are logged.
    pub(super) fn for_each(&self, tree: Tree, what: &str, f: &mut dyn FnMut(&str, &[u8])) {
        for item in self.tree(tree).iter() {
            match item {
                Ok((key, bytes)) => f(&String::from_utf8_lossy(&key), &bytes),
                Err(e) => tracing::warn!(error = %e, "policy cache: cannot read {what}s"),
            }
        }
    }

    #[cfg(test)]
    pub(super) fn insert_raw(&self, tree: Tree, key: &str, bytes: &[u8]) {
        self.tree(tree).insert(key, bytes).expect("insert");
    }
}

/// The entries while the database cannot be used.
pub(super) struct Memory {
    /// Per tree ([`Tree::index`]), by domain: the value, or `None` for one removed, so that it
    /// is removed from the database too when the store gets back to it.
    trees: [BTreeMap<String, Option<Vec<u8>>>; 3],
    /// A copy of the whole database (taken when it failed a write), rather than only what
    /// changed since the database failed to open. Failure lists of the latter are appended to
    /// the database's lists rather than replacing them.
    complete: bool,
    /// No attempt to reopen the database before this.
    next_attempt: Instant,
}

impl Memory {
    /// Nothing yet: the database never opened.
    pub(super) fn empty(next_attempt: Instant) -> Memory {
        Memory {
            trees: Default::default(),
            complete: false,
            next_attempt,
        }
    }

    /// Everything that can be read from `db`.
    pub(super) fn copy_of(db: &Db, next_attempt: Instant) -> Memory {
        let mut memory = Memory {
            complete: true,
            ..Memory::empty(next_attempt)
        };
        for tree in Tree::ALL {
            let entries = &mut memory.trees[tree.index()];
            db.for_each(tree, tree.name(), &mut |key, bytes| {
                entries.insert(key.to_string(), Some(bytes.to_vec()));
            });
        }
        memory
    }

    /// Entries held (removals not counted).
    pub(super) fn len(&self) -> usize {
        self.trees
            .iter()
            .map(|t| t.values().filter(|v| v.is_some()).count())
            .sum()
    }

    pub(super) fn get(&self, tree: Tree, key: &str) -> Option<&[u8]> {
        self.trees[tree.index()].get(key)?.as_deref()
    }

    pub(super) fn update(
        &mut self,
        tree: Tree,
        key: &str,
        change: &mut Change<'_>,
    ) -> Option<Vec<u8>> {
        let slot = self.trees[tree.index()].entry(key.to_string()).or_default();
        let new = change(slot.as_deref());
        std::mem::replace(slot, new)
    }

    pub(super) fn for_each(&self, tree: Tree, f: &mut dyn FnMut(&str, &[u8])) {
        for (key, value) in &self.trees[tree.index()] {
            if let Some(bytes) = value {
                f(key, bytes);
            }
        }
    }

    pub(super) fn retry_due(&self, now: Instant) -> bool {
        now >= self.next_attempt
    }

    pub(super) fn postpone(&mut self, until: Instant) {
        self.next_attempt = until;
    }

    /// Writes every entry and removal into `db` and flushes it; returns the entries written.
    pub(super) fn copy_into(&self, db: &Db) -> sled::Result<usize> {
        let mut copied = 0;
        for tree in Tree::ALL {
            for (key, value) in &self.trees[tree.index()] {
                let Some(bytes) = value else {
                    db.tree(tree).remove(key.as_bytes())?;
                    continue;
                };
                if tree == Tree::Failures && !self.complete {
                    db.update(tree, key, &mut |old| Some(append_failures(key, old, bytes)))?;
                } else {
                    db.tree(tree).insert(key.as_bytes(), bytes.as_slice())?;
                }
                copied += 1;
            }
        }
        db.flush()?;
        Ok(copied)
    }
}

/// The failure list `old` (from the database) followed by `new` (from memory), bounded; `new`
/// alone when `old` does not decode.
fn append_failures(domain: &str, old: Option<&[u8]>, new: &[u8]) -> Vec<u8> {
    let mut list: Vec<FailureRecord> = old
        .and_then(|b| decode(domain, b, "failure list"))
        .unwrap_or_default();
    let Some(newer) = decode::<Vec<FailureRecord>>(domain, new, "failure list") else {
        return new.to_vec();
    };
    list.extend(newer);
    encode_failures(list).unwrap_or_else(|_| new.to_vec())
}
