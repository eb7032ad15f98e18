//! Connections that have not proved membership yet: their own small pool.
//!
//! Anyone may start a QUIC handshake, so what an unproven connection can
//! cost is bounded here, apart from the members' slots: at most
//! [`MAX_PENDING`] handshakes at once, at most [`MAX_PENDING_PER_IP`] from one
//! address group (an IPv4 address, or an IPv6 /56), and (in `net`) one
//! stream, a 64 KiB window and a `Hello` deadline each. Once a quarter of
//! the pool is taken, a client whose address QUIC has not validated yet is
//! sent a Retry first, so that a flood of spoofed Initial packets costs a
//! stateless reply, not a slot. When the pool is full, the group holding
//! the most of it gives up its oldest attempt to a newcomer from a smaller
//! one: flooding from a few addresses cannot keep a member out.

use std::collections::HashMap;
use std::net::IpAddr;

pub(crate) use crate::net::address_group;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

/// Most connections in their handshake or `Hello` at once.
pub const MAX_PENDING: usize = 64;
/// Most of those from one address group.
pub const MAX_PENDING_PER_IP: usize = 8;
/// Pending connections above which unvalidated clients are sent a Retry.
pub const RETRY_ABOVE: usize = MAX_PENDING / 4;

/// What to do with a new connection attempt.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Go ahead with the handshake, holding this slot until it ends.
    Handshake(Slot),
    /// Ask the client to prove its address first (QUIC Retry).
    Retry,
    /// The pool, or this address's share of it, is full.
    Refuse(&'static str),
}

struct Pending {
    group: IpAddr,
    since: Instant,
    /// Raised when this attempt must give its slot to a newcomer.
    give_way: Arc<Notify>,
}

#[derive(Default)]
struct Pool {
    next_id: u64,
    pending: HashMap<u64, Pending>,
}

impl Pool {
    fn count(&self, group: IpAddr) -> usize {
        self.pending.values().filter(|p| p.group == group).count()
    }

    /// The oldest attempt of the group holding the most, if it holds more
    /// than `newcomers` + 1 (so that it is really the greedier one).
    fn greediest_oldest(&self, newcomers: usize) -> Option<u64> {
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for pending in self.pending.values() {
            *counts.entry(pending.group).or_default() += 1;
        }
        let (&group, &count) = counts.iter().max_by_key(|(_, count)| **count)?;
        if count <= newcomers + 1 {
            return None;
        }
        self.pending.iter().filter(|(_, p)| p.group == group).min_by_key(|(_, p)| p.since).map(|(id, _)| *id)
    }
}

/// The pool of pending connections.
#[derive(Default)]
pub(crate) struct Admission {
    pool: Arc<Mutex<Pool>>,
}

impl Admission {
    /// Decides for a connection attempt from `ip`; `validated` is whether
    /// QUIC has already validated its address (it came back with a Retry token).
    pub(crate) fn consider(&self, ip: IpAddr, validated: bool) -> Decision {
        let group = address_group(ip);
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if !validated && pool.pending.len() >= RETRY_ABOVE {
            return Decision::Retry;
        }
        let mine = pool.count(group);
        if mine >= MAX_PENDING_PER_IP {
            return Decision::Refuse("too many unproven connections from your address");
        }
        if pool.pending.len() >= MAX_PENDING {
            let Some(victim) = pool.greediest_oldest(mine) else {
                return Decision::Refuse("too many connections are proving membership; try again shortly");
            };
            if let Some(victim) = pool.pending.remove(&victim) {
                victim.give_way.notify_one();
            }
        }
        let id = pool.next_id;
        pool.next_id += 1;
        let give_way = Arc::new(Notify::new());
        pool.pending.insert(id, Pending { group, since: Instant::now(), give_way: Arc::clone(&give_way) });
        Decision::Handshake(Slot { pool: Arc::clone(&self.pool), id, give_way })
    }

    /// How many handshakes are pending.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner).pending.len()
    }
}

/// One pending connection's place in the pool, given back when dropped.
pub(crate) struct Slot {
    pool: Arc<Mutex<Pool>>,
    id: u64,
    give_way: Arc<Notify>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.id)
    }
}

impl Slot {
    /// Completes when this attempt must give its place to a newcomer.
    pub(crate) async fn given_away(&self) {
        self.give_way.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner).pending.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn admit(admission: &Admission, last: u8) -> Slot {
        match admission.consider(ip(last), true) {
            Decision::Handshake(slot) => slot,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_address_gets_only_its_share_and_the_pool_is_bounded() {
        let admission = Admission::default();
        let mut held: Vec<Slot> = (0..MAX_PENDING_PER_IP).map(|_| admit(&admission, 2)).collect();
        assert!(matches!(admission.consider(ip(2), true), Decision::Refuse(_)), "the flooder's share is full");
        held.push(admit(&admission, 1));
        for last in 3..=(MAX_PENDING / MAX_PENDING_PER_IP + 1) as u8 {
            for _ in 0..MAX_PENDING_PER_IP {
                if let Decision::Handshake(slot) = admission.consider(ip(last), true) {
                    held.push(slot);
                }
            }
        }
        assert_eq!(admission.pending(), MAX_PENDING);
        held.clear();
        assert_eq!(admission.pending(), 0, "slots come back when their handshakes end");
    }

    #[test]
    fn a_full_pool_makes_the_greediest_address_give_way() {
        let admission = Admission::default();
        // Eight flooding addresses fill the pool.
        let held: Vec<Slot> =
            (0..MAX_PENDING).map(|i| admit(&admission, 10 + (i / MAX_PENDING_PER_IP) as u8)).collect();
        assert_eq!(admission.pending(), MAX_PENDING);
        // A member from another address still gets in; a flooder's oldest attempt gives way.
        let member = admit(&admission, 1);
        assert_eq!(admission.pending(), MAX_PENDING);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let gave_way = held.iter().filter(|slot| {
            rt.block_on(async { tokio::time::timeout(std::time::Duration::from_millis(10), slot.given_away()).await })
                .is_ok()
        });
        assert_eq!(gave_way.count(), 1);
        // When every address holds one attempt, no one is greedier: a newcomer waits.
        drop((held, member));
        let spread: Vec<Slot> = (0..MAX_PENDING as u8).map(|i| admit(&admission, 100 + i)).collect();
        assert!(matches!(admission.consider(ip(1), true), Decision::Refuse(_)));
        drop(spread);
    }

    #[test]
    fn unvalidated_clients_are_asked_to_retry_under_pressure() {
        let admission = Admission::default();
        assert!(matches!(admission.consider(ip(1), false), Decision::Handshake(_)), "no pressure, no Retry");
        let held: Vec<Slot> =
            (0..RETRY_ABOVE).map(|i| admit(&admission, 10 + (i / MAX_PENDING_PER_IP) as u8)).collect();
        assert!(matches!(admission.consider(ip(1), false), Decision::Retry));
        assert!(matches!(admission.consider(ip(1), true), Decision::Handshake(_)), "a validated client goes ahead");
        drop(held);
    }

    #[test]
    fn an_ipv6_site_counts_as_its_56() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:ff:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:100::1".parse().unwrap();
        assert_eq!(address_group(a), address_group(b));
        assert_ne!(address_group(a), address_group(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_group(mapped), IpAddr::from([192, 0, 2, 7]));
    }
}
