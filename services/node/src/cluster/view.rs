//! A membership view and placement: who is in the cluster at which epoch, and who owns what.
//!
//! Owner of a key (a shopper, a store) = rendezvous (highest-random-weight) hashing over the members that are
//! not leaving: every member scores `hash(member, key)` and the highest wins. Every node with the same view
//! computes the same owner; when a member joins or leaves, only the keys it wins or held move.

use std::sync::Arc;

use aisle_domain::hash::stable_hash;
use serde::{Deserialize, Serialize};

/// A member, as registered under its key in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id (unique in the cluster).
    pub node_id: String,
    /// Address peers reach its peer port at (`host:port`).
    pub addr: String,
    /// Changes every time the node (re)joins: a node that lost its lease and came back is a new incarnation.
    pub incarnation: String,
    /// The node is leaving (graceful shutdown): it owns nothing, but still answers peers until it is gone.
    #[serde(default)]
    pub leaving: bool,
}

impl Member {
    /// Checks a record read from etcd: a node id of 1 to 256 bytes, and an address of the form `host:port` that a
    /// peer client can use.
    ///
    /// # Errors
    /// What is wrong, for the log.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id.is_empty() || self.node_id.len() > aisle_domain::MAX_ID_BYTES {
            return Err("node_id must be 1 to 256 bytes".into());
        }
        if self.incarnation.len() > aisle_domain::MAX_ID_BYTES {
            return Err("incarnation longer than 256 bytes".into());
        }
        let authority: http::uri::Authority = self
            .addr
            .parse()
            .map_err(|e| format!("addr is not host:port: {e}"))?;
        if authority.as_str() != self.addr
            || authority.host().is_empty()
            || authority.port_u16().is_none_or(|p| p == 0)
            || self.addr.contains('@')
        {
            return Err("addr must be host:port with a non-zero port".into());
        }
        Ok(())
    }
}

/// The members at one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The membership revision this view was read at: the ownership epoch reported in answers and logs. Two
    /// nodes at the same epoch hold the same members (the state of etcd at that revision).
    pub epoch: u64,
    /// A hash of the members (ids, incarnations, leaving flags): equal fingerprints mean equal owners, whatever
    /// revision each node read the view at. Nodes compare fingerprints before acting for each other.
    pub fingerprint: u64,
    /// Members, sorted by node id.
    pub members: Vec<Member>,
}

fn fingerprint(members: &[Member]) -> u64 {
    let mut parts: Vec<String> = Vec::with_capacity(members.len());
    for m in members {
        parts.push(format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            m.node_id, m.incarnation, m.leaving, m.addr
        ));
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    stable_hash(&refs)
}

impl View {
    /// A view of one node alone (static mode): epoch 0.
    pub fn alone(node_id: &str, addr: &str) -> Self {
        Self::new(
            0,
            vec![Member {
                node_id: node_id.to_string(),
                addr: addr.to_string(),
                incarnation: "static".to_string(),
                leaving: false,
            }],
        )
    }

    /// Builds a view, sorting members.
    pub fn new(epoch: u64, mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Self {
            epoch,
            fingerprint: fingerprint(&members),
            members,
        }
    }

    /// The member with this id.
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }

    /// Members that own keys (not leaving).
    pub fn owners(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.leaving)
    }

    /// The owner of `key` in `space` (e.g. "shopper", "store"), if any member owns keys.
    pub fn owner_of(&self, space: &str, key: &str) -> Option<&Member> {
        self.owner_without(space, key, "")
    }

    /// The owner of `key` in `space` were `node_id` not a member: for the owner, the member that takes its keys
    /// over should it go (the next in rendezvous order); for another member, the owner.
    pub fn owner_without(&self, space: &str, key: &str, node_id: &str) -> Option<&Member> {
        let mut owners = self.owners().filter(|m| m.node_id != node_id);
        let first = owners.next()?;
        let Some(second) = owners.next() else {
            // One candidate (a node alone): it owns everything, no hash needed.
            return Some(first);
        };
        [first, second]
            .into_iter()
            .chain(owners)
            .map(|m| (stable_hash(&[space, &m.node_id, key]), m))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.node_id.cmp(&a.1.node_id)))
            .map(|(_, m)| m)
    }

    /// The owner of a shopper.
    pub fn shopper_owner(&self, shopper_id: &str) -> Option<&Member> {
        self.owner_of("shopper", shopper_id)
    }

    /// The node that orders a store's assist events.
    pub fn store_owner(&self, store_id: &str) -> Option<&Member> {
        self.owner_of("store", store_id)
    }
}

/// A shared view.
pub type SharedView = Arc<View>;

/// Views for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A member `id` at `id:1`, incarnation 1.
    pub(crate) fn member(id: &str) -> Member {
        Member {
            node_id: id.into(),
            addr: format!("{id}:1"),
            incarnation: "1".into(),
            leaving: false,
        }
    }

    /// A view of these members.
    pub(crate) fn view(epoch: u64, ids: &[&str]) -> SharedView {
        Arc::new(View::new(epoch, ids.iter().map(|i| member(i)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::member;
    use super::*;

    #[test]
    fn owners_are_spread_and_stable() {
        let v = View::new(5, vec![member("c"), member("a"), member("b")]);
        assert_eq!(v.members[0].node_id, "a");
        let mut counts = std::collections::HashMap::new();
        for i in 0..30_000 {
            let o = v.shopper_owner(&format!("s{i}")).unwrap();
            *counts.entry(o.node_id.clone()).or_insert(0) += 1;
        }
        for (_, n) in counts {
            assert!((9_000..11_000).contains(&n), "{n}");
        }
        // Same view, same answer, whatever the member order.
        let w = View::new(5, vec![member("b"), member("c"), member("a")]);
        for i in 0..1_000 {
            let s = format!("s{i}");
            assert_eq!(v.shopper_owner(&s), w.shopper_owner(&s));
        }
    }

    #[test]
    fn a_join_moves_only_the_keys_the_newcomer_wins() {
        let before = View::new(1, vec![member("a"), member("b"), member("c")]);
        let after = View::new(2, vec![member("a"), member("b"), member("c"), member("d")]);
        let mut moved = 0;
        for i in 0..20_000 {
            let s = format!("s{i}");
            let (o1, o2) = (
                before.shopper_owner(&s).unwrap(),
                after.shopper_owner(&s).unwrap(),
            );
            if o1 != o2 {
                assert_eq!(o2.node_id, "d", "a key only ever moves to the newcomer");
                moved += 1;
            }
        }
        assert!((4_000..6_000).contains(&moved), "{moved}");
    }

    #[test]
    fn leaving_members_own_nothing() {
        let mut leaving = member("b");
        leaving.leaving = true;
        let v = View::new(3, vec![member("a"), leaving, member("c")]);
        for i in 0..2_000 {
            assert_ne!(v.shopper_owner(&format!("s{i}")).unwrap().node_id, "b");
        }
        // Keys of the remaining members stay where they were.
        let full = View::new(2, vec![member("a"), member("b"), member("c")]);
        for i in 0..2_000 {
            let s = format!("s{i}");
            let o = full.shopper_owner(&s).unwrap();
            if o.node_id != "b" {
                assert_eq!(v.shopper_owner(&s), Some(o));
            }
        }
        assert!(View::new(1, vec![]).shopper_owner("x").is_none());
    }

    #[test]
    fn fingerprints_follow_the_members_not_the_revision() {
        let a = View::new(10, vec![member("a"), member("b")]);
        let b = View::new(17, vec![member("b"), member("a")]);
        assert_eq!(a.fingerprint, b.fingerprint);
        let mut rejoined = member("b");
        rejoined.incarnation = "2".into();
        assert_ne!(
            a.fingerprint,
            View::new(10, vec![member("a"), rejoined]).fingerprint
        );
        let mut leaving = member("b");
        leaving.leaving = true;
        assert_ne!(
            a.fingerprint,
            View::new(10, vec![member("a"), leaving]).fingerprint
        );
    }
}
