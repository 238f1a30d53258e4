//! Activation epochs: which activation of an agent a message, an entry or a report is about.
//!
//! An epoch is a `u64` made of two parts:
//!
//! ```text
//!  63        48 47     40 39                                   0
//! ┌────────────┬─────────┬──────────────────────────────────────┐
//! │ generation │ moves   │ tag: who allocated it                │
//! └────────────┴─────────┴──────────────────────────────────────┘
//! ```
//!
//! The generation orders activations: a new one is one past the newest the allocator knows.
//! A live migration keeps the generation and counts one more move: a placement by an owner
//! (a spawn, a failover) outranks every move of the activations before it. That matters when
//! a move is made on one side of a split before that side notices it, and the other side's
//! owner fails the same agent over: the failover's activation must be the newer one.
//! The tag tells apart activations that were given the same generation by allocators that did
//! not know of each other (an owner that lost its entries in a crash, two owners on either side
//! of a partition): it is derived from the allocator's name, its incarnation (which grows with
//! every restart, see the node's state directory) and a count of the epochs it allocated in that
//! incarnation. No two allocations share all three, so a crash or a restart never makes an
//! allocator repeat an epoch; two different allocations share an epoch only if their 40-bit tags
//! collide (about one chance in 10^12 for two activations of one agent in the same generation).
//!
//! Comparing epochs as integers compares generations first, so "newer" keeps its meaning. Epoch
//! 0 means "any" in an envelope. Hand-written epochs below 2^40 (generation 0: tests, a host
//! used on its own) are valid too.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Bits of an epoch that hold the tag.
pub const TAG_BITS: u32 = 40;
/// Bits of an epoch that count the moves within a generation.
pub const MOVE_BITS: u32 = 8;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const MAX_MOVES: u64 = (1 << MOVE_BITS) - 1;
const MAX_GENERATION: u64 = u64::MAX >> (TAG_BITS + MOVE_BITS);

/// The generation of `epoch`.
pub fn generation(epoch: u64) -> u64 {
    epoch >> (TAG_BITS + MOVE_BITS)
}

/// The moves of `epoch` within its generation.
pub fn moves(epoch: u64) -> u64 {
    (epoch >> TAG_BITS) & MAX_MOVES
}

/// The tag of `epoch`.
pub fn tag(epoch: u64) -> u64 {
    epoch & TAG_MASK
}

/// The tag of the `seq`th epoch allocated by node `node` in its incarnation `life`.
pub fn tag_of(node: &str, life: u64, seq: u64) -> u64 {
    // SipHash with fixed keys: deterministic (the simulator replays allocations), and the tag
    // only has to differ, not to stay the same across builds
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    (node, life, seq).hash(&mut h);
    (h.finish() & TAG_MASK).max(1)
}

/// The epoch after `newest` (the newest known, 0 if none), tagged with `tag`. At the last
/// generation (2^24 - 1 activations of one agent) the generation stays, and the tag still tells
/// activations apart.
pub fn next(newest: u64, tag: u64) -> u64 {
    let generation = (generation(newest) + 1).min(MAX_GENERATION);
    (generation << (TAG_BITS + MOVE_BITS)) | (tag & TAG_MASK)
}

/// The epoch of `current` moved to another node: the same generation, one more move (past
/// the last count the move stays, and the tag tells them apart).
pub fn next_move(current: u64, tag: u64) -> u64 {
    let moves = (moves(current) + 1).min(MAX_MOVES);
    (generation(current) << (TAG_BITS + MOVE_BITS)) | (moves << TAG_BITS) | (tag & TAG_MASK)
}

/// How an epoch reads in logs and the CLI: `generation.tag` (the tag in hex), or just the
/// number for a hand-written epoch of generation 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown(pub u64);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (generation(self.0), moves(self.0)) {
            (0, 0) => write!(f, "{}", self.0),
            (g, 0) => write!(f, "{g}.{:010x}", tag(self.0)),
            (g, m) => write!(f, "{g}m{m}.{:010x}", tag(self.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_generations_compare_greater_whatever_the_tag() {
        let a = next(0, tag_of("r1", 1, 1));
        let b = next(a, 1);
        assert_eq!((generation(a), generation(b)), (1, 2));
        assert!(b > a);
        assert!(next(0, TAG_MASK) < next(next(0, 1), 1));
    }

    #[test]
    fn tags_differ_by_node_life_and_count() {
        let tags = [
            tag_of("r1", 1, 1),
            tag_of("r1", 1, 2),
            tag_of("r1", 2, 1),
            tag_of("r2", 1, 1),
        ];
        for (i, a) in tags.iter().enumerate() {
            assert!(*a != 0 && *a <= TAG_MASK);
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(tag_of("r1", 1, 1), tag_of("r1", 1, 1), "deterministic");
    }

    #[test]
    fn a_move_keeps_the_generation_and_any_placement_outranks_it() {
        let placed = next(0, tag_of("r1", 1, 1));
        let moved = next_move(placed, tag_of("r2", 1, 1));
        let moved_again = next_move(moved, tag_of("r3", 1, 1));
        assert!(placed < moved && moved < moved_again);
        assert_eq!((generation(moved_again), moves(moved_again)), (1, 2));
        // the other side of a split fails the first activation over: that one wins
        let failover = next(placed, 1);
        assert!(failover > moved_again);
        assert_eq!(Shown(moved).to_string().split('.').next(), Some("1m1"));
    }

    #[test]
    fn the_last_generation_saturates() {
        let last = (MAX_GENERATION << (TAG_BITS + MOVE_BITS)) | 7;
        assert_eq!(generation(next(last, 9)), MAX_GENERATION);
        assert_eq!(tag(next(last, 9)), 9);
    }

    #[test]
    fn shown_as_generation_and_tag() {
        assert_eq!(Shown(3).to_string(), "3");
        assert_eq!(Shown(next(0, 0xab)).to_string(), "1.00000000ab");
    }
}
