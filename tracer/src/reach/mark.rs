//! The mark phase: which tracked blocks the roots reach, and how, in memcheck's four classes.
//!
//! The definitions are valgrind's (memcheck manual §4.2.8, `mc_leakcheck.c`), so a verdict can
//! be checked against valgrind's on the same program:
//! - a block pointed to at its start from a root, or from a block that is itself still
//!   reachable, is *still reachable*;
//! - one reached from the roots only through interior pointers (or through blocks that are
//!   only possibly lost) is *possibly lost*;
//! - of the rest, each block no other unreached block points to leads a clique: it is
//!   *definitely lost*, and every unreached block it reaches (by any pointer) is *indirectly
//!   lost*. A cycle with no pointer from outside has its lowest block as leader.

/// A tracked block: `[start, start + size)`. A zero-size block is matched by its start only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub start: u64,
    pub size: u64,
}

/// What a block is, as valgrind's leak check would say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    DefinitelyLost,
    IndirectlyLost,
    PossiblyLost,
    StillReachable,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::DefinitelyLost,
        Class::IndirectlyLost,
        Class::PossiblyLost,
        Class::StillReachable,
    ];

    /// As JSON and the text report spell it.
    pub fn name(self) -> &'static str {
        match self {
            Class::DefinitelyLost => "definitely_lost",
            Class::IndirectlyLost => "indirectly_lost",
            Class::PossiblyLost => "possibly_lost",
            Class::StillReachable => "still_reachable",
        }
    }
}

/// The pointer graph: the blocks, sorted by start and not overlapping, the candidate words
/// found in each block's contents, and those found in the roots.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    /// `edges[offsets[i]..offsets[i + 1]]`: the words in block `i`.
    offsets: Vec<usize>,
    edges: Vec<u64>,
    roots: Vec<u64>,
}

/// Mark states in memcheck's order: a block only ever moves up.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Unreached,
    Indirect,
    Possible,
    Reachable,
}

impl Graph {
    /// `nodes` sorted by start; `contents` the (owner index, word) pairs found in the blocks,
    /// in any order; `roots` the words found outside them.
    pub fn new(nodes: Vec<Node>, mut contents: Vec<(u32, u64)>, roots: Vec<u64>) -> Self {
        debug_assert!(nodes.windows(2).all(|w| w[0].start < w[1].start));
        contents.sort_unstable();
        contents.dedup();
        let mut offsets = Vec::with_capacity(nodes.len() + 1);
        let mut next = 0;
        for index in 0..nodes.len() {
            offsets.push(next);
            while next < contents.len() && contents[next].0 as usize == index {
                next += 1;
            }
        }
        offsets.push(next);
        let edges = contents.into_iter().map(|(_, word)| word).collect();
        Self {
            nodes,
            offsets,
            edges,
            roots,
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The block `word` points into, and whether it points at its start.
    pub fn find(&self, word: u64) -> Option<(usize, bool)> {
        find(&self.nodes, word)
    }

    /// Every block's class, in the order of [`Self::nodes`].
    pub fn classify(&self) -> Vec<Class> {
        self.classify_with(&mut |_, _| false)
    }

    /// [`Self::classify`], where `heuristic(block, offset)` may accept an interior pointer at
    /// `offset` into `block` from a root or a reachable block as a start pointer (memcheck's
    /// "reachable via heuristic": a length-prefixed string points past its header).
    pub fn classify_with(&self, heuristic: &mut dyn FnMut(usize, u64) -> bool) -> Vec<Class> {
        let n = self.nodes.len();
        let mut state = vec![State::Unreached; n];
        let mut work: Vec<usize> = Vec::new();

        // Roots, then whatever their blocks reach. A start pointer from a root or a reachable
        // block makes its target reachable; any other pointer makes it at most possible.
        let raise = |state: &mut [State], work: &mut Vec<usize>, index: usize, definite: bool| {
            if definite && state[index] != State::Reachable {
                state[index] = State::Reachable;
                work.push(index);
            } else if state[index] == State::Unreached {
                state[index] = State::Possible;
                work.push(index);
            }
        };
        // A pointer counts as a start pointer at the start, or where a heuristic accepts it
        // (asked only when it could change something).
        let mut definite_at = |state: &[State], word: u64, target: usize, at_start: bool| {
            at_start
                || (state[target] != State::Reachable
                    && heuristic(target, word - self.nodes[target].start))
        };
        for word in &self.roots {
            if let Some((index, at_start)) = self.find(*word) {
                let definite = definite_at(&state, *word, index, at_start);
                raise(&mut state, &mut work, index, definite);
            }
        }
        while let Some(index) = work.pop() {
            let from_reachable = state[index] == State::Reachable;
            for word in self.words(index) {
                if let Some((target, at_start)) = self.find(*word) {
                    let definite = from_reachable && definite_at(&state, *word, target, at_start);
                    raise(&mut state, &mut work, target, definite);
                }
            }
        }

        // Cliques among what is left, leaders in address order. A leader reached later from
        // another leader joins that clique (so a list's head leads, whatever the addresses).
        for leader in 0..n {
            if state[leader] != State::Unreached {
                continue;
            }
            work.push(leader);
            while let Some(index) = work.pop() {
                for word in self.words(index) {
                    if let Some((target, _)) = self.find(*word)
                        && target != leader
                        && state[target] == State::Unreached
                    {
                        state[target] = State::Indirect;
                        work.push(target);
                    }
                }
            }
        }

        state
            .into_iter()
            .map(|s| match s {
                State::Unreached => Class::DefinitelyLost,
                State::Indirect => Class::IndirectlyLost,
                State::Possible => Class::PossiblyLost,
                State::Reachable => Class::StillReachable,
            })
            .collect()
    }

    fn words(&self, index: usize) -> &[u64] {
        &self.edges[self.offsets[index]..self.offsets[index + 1]]
    }
}

/// The block of sorted `nodes` that `word` points into, and whether at its start.
pub fn find(nodes: &[Node], word: u64) -> Option<(usize, bool)> {
    let after = nodes.partition_point(|node| node.start <= word);
    let index = after.checked_sub(1)?;
    let node = nodes[index];
    (word - node.start < node.size.max(1)).then_some((index, word == node.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of 64 bytes at 0x1000, 0x2000, ...; `links` (from, to, offset) puts a pointer to
    /// `to + offset` in block `from`; `roots` likewise from outside.
    fn classes(count: usize, links: &[(usize, usize, u64)], roots: &[(usize, u64)]) -> Vec<Class> {
        let nodes: Vec<Node> = (0..count)
            .map(|i| Node {
                start: 0x1000 * (i as u64 + 1),
                size: 64,
            })
            .collect();
        let contents = links
            .iter()
            .map(|(from, to, offset)| (*from as u32, nodes[*to].start + offset))
            .collect();
        let roots = roots
            .iter()
            .map(|(to, offset)| nodes[*to].start + offset)
            .collect();
        Graph::new(nodes, contents, roots).classify()
    }

    use Class::*;

    #[test]
    fn start_pointers_from_roots_and_reachable_blocks_reach() {
        // root -> 0 -> 1 -> 2; 3 alone.
        let got = classes(4, &[(0, 1, 0), (1, 2, 0)], &[(0, 0)]);
        assert_eq!(
            got,
            [
                StillReachable,
                StillReachable,
                StillReachable,
                DefinitelyLost
            ]
        );
    }

    #[test]
    fn interior_pointers_only_make_blocks_possible_and_so_do_possible_blocks() {
        // root -> 0+16 (possible) -> 1 (start, but from a possible block: possible).
        let got = classes(2, &[(0, 1, 0)], &[(0, 16)]);
        assert_eq!(got, [PossiblyLost, PossiblyLost]);
        // A later start pointer from a root upgrades a possible block and what it reaches.
        let got = classes(2, &[(0, 1, 0)], &[(0, 16), (0, 0)]);
        assert_eq!(got, [StillReachable, StillReachable]);
    }

    #[test]
    fn a_dropped_list_head_leads_its_tail_whatever_the_addresses() {
        // 2 -> 0 -> 1: the head is the highest block.
        let got = classes(3, &[(2, 0, 0), (0, 1, 0)], &[]);
        assert_eq!(got, [IndirectlyLost, IndirectlyLost, DefinitelyLost]);
    }

    #[test]
    fn a_cycle_without_outside_pointers_is_led_by_its_lowest_block() {
        let got = classes(2, &[(0, 1, 0), (1, 0, 0)], &[]);
        assert_eq!(got, [DefinitelyLost, IndirectlyLost]);
    }

    #[test]
    fn lost_blocks_reach_by_interior_pointers_too() {
        let got = classes(2, &[(0, 1, 40)], &[]);
        assert_eq!(got, [DefinitelyLost, IndirectlyLost]);
    }

    #[test]
    fn pointers_past_the_end_and_into_gaps_match_nothing() {
        let got = classes(2, &[], &[(0, 64), (1, 0x800)]);
        assert_eq!(got, [DefinitelyLost, DefinitelyLost]);
    }

    #[test]
    fn a_heuristic_makes_an_interior_pointer_from_reachable_memory_a_start() {
        let nodes: Vec<Node> = (1..=2)
            .map(|i| Node {
                start: 0x1000 * i,
                size: 64,
            })
            .collect();
        // root -> 0+8 (accepted), 0 -> 1+8 (accepted), and a root -> 1+16 (not).
        let graph = Graph::new(nodes, vec![(0, 0x2008)], vec![0x1008, 0x2010]);
        let mut asked = Vec::new();
        let classes = graph.classify_with(&mut |block, offset| {
            asked.push((block, offset));
            offset == 8
        });
        assert_eq!(classes, [StillReachable, StillReachable]);
        assert!(asked.contains(&(0, 8)) && asked.contains(&(1, 8)));
        // Without it: both only possibly lost.
        assert_eq!(graph.classify(), [PossiblyLost, PossiblyLost]);
    }

    #[test]
    fn zero_size_blocks_match_their_start_only() {
        let nodes = vec![
            Node {
                start: 0x1000,
                size: 0,
            },
            Node {
                start: 0x1010,
                size: 8,
            },
        ];
        assert_eq!(find(&nodes, 0x1000), Some((0, true)));
        assert_eq!(find(&nodes, 0x1001), None);
        assert_eq!(find(&nodes, 0x1017), Some((1, false)));
        assert_eq!(find(&nodes, 0x0fff), None);
    }
}
