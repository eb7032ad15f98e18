//! Rendezvous (highest-random-weight) placement: which peers hold a chunk.
//!
//! `score(node, id) = BLAKE3(NodeId ‖ id)`; a chunk belongs on the R live
//! peers with the highest scores. Every node computes the same answer with
//! no coordinator, and when a peer joins or leaves only the chunks it ranks
//! first for move. Pure: no I/O.

use crate::id::NodeId;

/// The rendezvous score of `node` for the object `id` (a chunk or manifest id).
pub fn score(node: &NodeId, id: &[u8; 32]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(node.as_bytes());
    hasher.update(id);
    *hasher.finalize().as_bytes()
}

/// The indices of `nodes`, best-placed first for `id`.
pub fn rank(nodes: &[NodeId], id: &[u8; 32]) -> Vec<usize> {
    let mut order: Vec<(usize, [u8; 32])> = nodes.iter().enumerate().map(|(i, n)| (i, score(n, id))).collect();
    order.sort_unstable_by_key(|&(_, score)| std::cmp::Reverse(score));
    order.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u8) -> Vec<NodeId> {
        (0..n).map(|i| NodeId([i; 32])).collect()
    }

    #[test]
    fn ranking_is_a_permutation_and_deterministic() {
        let nodes = nodes(5);
        let ranked = rank(&nodes, &[9; 32]);
        let mut sorted = ranked.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        assert_eq!(rank(&nodes, &[9; 32]), ranked);
    }

    #[test]
    fn removing_a_node_keeps_the_others_in_order() {
        let all = nodes(6);
        for id in 0..50u8 {
            let ranked: Vec<NodeId> = rank(&all, &[id; 32]).into_iter().map(|i| all[i]).collect();
            let gone = ranked[0];
            let rest: Vec<NodeId> = all.iter().copied().filter(|n| *n != gone).collect();
            let reranked: Vec<NodeId> = rank(&rest, &[id; 32]).into_iter().map(|i| rest[i]).collect();
            assert_eq!(reranked, ranked[1..], "the next peer in rendezvous order takes over");
        }
    }

    #[test]
    fn load_spreads_over_nodes() {
        let all = nodes(4);
        let mut firsts = [0usize; 4];
        for i in 0..4000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            firsts[rank(&all, &id)[0]] += 1;
        }
        assert!(firsts.iter().all(|&n| (800..1200).contains(&n)), "{firsts:?}");
    }
}
