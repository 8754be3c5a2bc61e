//! Longest-prefix match from overlay addresses to peers (cryptokey routing).
//!
//! Routes change rarely (a node joins or leaves) and are looked up for every packet, so the
//! table keeps its entries in a plain list and rebuilds two binary tries (IPv4 and IPv6)
//! from it on every change. Lookups walk at most 32 or 128 nodes and never allocate.

use core::net::IpAddr;

use culvert_wire::addr::Prefix;

/// A routing table from prefixes to values (peer ids).
#[derive(Debug, Clone)]
pub struct Router<T: Copy + PartialEq> {
    entries: Vec<(Prefix, T)>,
    v4: Trie<T>,
    v6: Trie<T>,
}

impl<T: Copy + PartialEq> Default for Router<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            v4: Trie::default(),
            v6: Trie::default(),
        }
    }
}

impl<T: Copy + PartialEq> Router<T> {
    /// Adds or replaces the route for `prefix` (its host bits are ignored).
    pub fn insert(&mut self, prefix: Prefix, value: T) {
        let prefix = prefix.network();
        self.entries.retain(|(p, _)| *p != prefix);
        self.entries.push((prefix, value));
        self.rebuild();
    }

    /// Removes every route that points at `value`.
    pub fn remove_value(&mut self, value: T) {
        let before = self.entries.len();
        self.entries.retain(|(_, v)| *v != value);
        if self.entries.len() != before {
            self.rebuild();
        }
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        match ip {
            IpAddr::V4(a) => self.v4.lookup(u128::from(u32::from(a)) << 96),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// All routes, in insertion order.
    pub fn entries(&self) -> &[(Prefix, T)] {
        &self.entries
    }

    fn rebuild(&mut self) {
        self.v4 = Trie::default();
        self.v6 = Trie::default();
        for &(p, v) in &self.entries {
            match p.addr() {
                IpAddr::V4(a) => self.v4.insert(u128::from(u32::from(a)) << 96, p.len(), v),
                IpAddr::V6(a) => self.v6.insert(u128::from(a), p.len(), v),
            }
        }
    }
}

/// A binary trie over the top bits of a `u128` key, nodes in an arena.
#[derive(Debug, Clone)]
struct Trie<T> {
    nodes: Vec<Node<T>>,
}

#[derive(Debug, Clone)]
struct Node<T> {
    child: [u32; 2],
    value: Option<T>,
}

/// Index 0 is the root, so 0 also means "no child".
const NONE: u32 = 0;

impl<T: Copy> Default for Trie<T> {
    fn default() -> Self {
        Self {
            nodes: vec![Node {
                child: [NONE; 2],
                value: None,
            }],
        }
    }
}

impl<T: Copy> Trie<T> {
    fn insert(&mut self, key: u128, len: u8, value: T) {
        let mut at = 0usize;
        for depth in 0..len {
            let bit = ((key >> (127 - depth)) & 1) as usize;
            if self.nodes[at].child[bit] == NONE {
                self.nodes.push(Node {
                    child: [NONE; 2],
                    value: None,
                });
                let index = u32::try_from(self.nodes.len() - 1).expect("routes fit in u32 nodes");
                self.nodes[at].child[bit] = index;
            }
            at = self.nodes[at].child[bit] as usize;
        }
        self.nodes[at].value = Some(value);
    }

    fn lookup(&self, key: u128) -> Option<T> {
        let mut at = 0usize;
        let mut best = self.nodes[0].value;
        for depth in 0..128 {
            let bit = ((key >> (127 - depth)) & 1) as usize;
            match self.nodes[at].child[bit] {
                NONE => break,
                next => at = next as usize,
            }
            if let Some(v) = self.nodes[at].value {
                best = Some(v);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut r = Router::default();
        r.insert(p("10.0.0.0/8"), 1);
        r.insert(p("10.1.0.0/16"), 2);
        r.insert(p("10.1.2.3/32"), 3);
        r.insert(p("fd00::/64"), 4);
        r.insert(p("0.0.0.0/0"), 5);
        assert_eq!(r.lookup("10.1.2.3".parse().unwrap()), Some(3));
        assert_eq!(r.lookup("10.1.2.4".parse().unwrap()), Some(2));
        assert_eq!(r.lookup("10.2.0.1".parse().unwrap()), Some(1));
        assert_eq!(r.lookup("192.0.2.1".parse().unwrap()), Some(5));
        assert_eq!(r.lookup("fd00::9".parse().unwrap()), Some(4));
        assert_eq!(r.lookup("fd01::9".parse().unwrap()), None);
        r.remove_value(2);
        assert_eq!(r.lookup("10.1.2.4".parse().unwrap()), Some(1));
        r.insert(p("10.1.2.3/32"), 7);
        assert_eq!(r.lookup("10.1.2.3".parse().unwrap()), Some(7));
        assert_eq!(r.entries().len(), 4);
    }

    /// The reference: scan every route, keep the longest match.
    fn slow_lookup(routes: &[(Prefix, u8)], ip: IpAddr) -> Option<u8> {
        let mut best: Option<(u8, u8)> = None;
        for &(p, v) in routes {
            if p.contains(ip) && best.is_none_or(|(len, _)| p.len() >= len) {
                best = Some((p.len(), v));
            }
        }
        best.map(|(_, v)| v)
    }

    proptest! {
        #[test]
        fn matches_linear_scan(
            routes in proptest::collection::vec((any::<u32>(), 0u8..=32, any::<u8>()), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let mut r = Router::default();
            let mut reference: Vec<(Prefix, u8)> = Vec::new();
            for (a, len, v) in routes {
                let prefix = Prefix::new(IpAddr::V4(a.into()), len).unwrap().network();
                r.insert(prefix, v);
                reference.retain(|(q, _)| *q != prefix);
                reference.push((prefix, v));
            }
            for a in probes.iter().copied().chain(reference.iter().map(|(p, _)| match p.addr() {
                IpAddr::V4(a) => u32::from(a), IpAddr::V6(_) => 0 }))
            {
                let ip = IpAddr::V4(a.into());
                prop_assert_eq!(r.lookup(ip), slow_lookup(&reference, ip));
            }
        }
    }
}
