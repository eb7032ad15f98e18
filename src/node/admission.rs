//! Connections that have not proved membership yet: their own small pool.
//!
//! Anyone may start a QUIC handshake, so what an unproven connection can
//! cost is bounded here, apart from the members' slots: at most
//! [`MAX_PENDING`] handshakes at once, at most [`MAX_PENDING_PER_IP`] from one
//! IP address, and (in `net`) one stream, a 64 KiB window and a `Hello`
//! deadline each. Once a quarter of the pool is taken, a client whose
//! address QUIC has not validated yet is sent a Retry first, so that a
//! flood of spoofed Initial packets costs a stateless reply, not a slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Most connections in their handshake or `Hello` at once.
pub const MAX_PENDING: usize = 64;
/// Most of those from one IP address.
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

/// The pool of pending connections.
#[derive(Default)]
pub(crate) struct Admission {
    pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Admission {
    /// Decides for a connection attempt from `ip`; `validated` is whether
    /// QUIC has already validated its address (it came back with a Retry token).
    pub(crate) fn consider(&self, ip: IpAddr, validated: bool) -> Decision {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = pending.values().sum();
        if !validated && total >= RETRY_ABOVE {
            return Decision::Retry;
        }
        if total >= MAX_PENDING {
            return Decision::Refuse("too many connections are proving membership; try again shortly");
        }
        let from_ip = pending.entry(ip).or_default();
        if *from_ip >= MAX_PENDING_PER_IP {
            return Decision::Refuse("too many unproven connections from your address");
        }
        *from_ip += 1;
        Decision::Handshake(Slot { pending: Arc::clone(&self.pending), ip })
    }

    /// How many handshakes are pending.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).values().sum()
    }
}

/// One pending connection's place in the pool, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = pending.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_gets_only_its_share_and_the_pool_is_bounded() {
        let admission = Admission::default();
        let mut held = Vec::new();
        for _ in 0..MAX_PENDING_PER_IP {
            match admission.consider(ip(2), true) {
                Decision::Handshake(slot) => held.push(slot),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(admission.consider(ip(2), true), Decision::Refuse(_)), "the flooder's share is full");
        assert!(matches!(admission.consider(ip(1), true), Decision::Handshake(_)), "another address gets in");
        for last in 3..=(MAX_PENDING / MAX_PENDING_PER_IP + 2) as u8 {
            for _ in 0..MAX_PENDING_PER_IP {
                if let Decision::Handshake(slot) = admission.consider(ip(last), true) {
                    held.push(slot);
                }
            }
        }
        assert_eq!(admission.pending(), MAX_PENDING);
        assert!(matches!(admission.consider(ip(200), true), Decision::Refuse(_)), "the pool is full");
        held.clear();
        assert_eq!(admission.pending(), 0, "slots come back when their handshakes end");
    }

    #[test]
    fn unvalidated_clients_are_asked_to_retry_under_pressure() {
        let admission = Admission::default();
        assert!(matches!(admission.consider(ip(1), false), Decision::Handshake(_)), "no pressure, no Retry");
        let held: Vec<_> = (0..RETRY_ABOVE)
            .map(|i| match admission.consider(ip(10 + (i / MAX_PENDING_PER_IP) as u8), true) {
                Decision::Handshake(slot) => slot,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(matches!(admission.consider(ip(1), false), Decision::Retry));
        assert!(matches!(admission.consider(ip(1), true), Decision::Handshake(_)), "a validated client goes ahead");
        drop(held);
    }
}
