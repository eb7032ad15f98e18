//! The connections of members: who holds which, how busy each is, and what
//! each may take of the node's memory.
//!
//! NodeIds cost a member nothing (anyone with the network key can make one),
//! so every bound that protects one member from another is kept by address
//! group too (an IPv4 address, an IPv6 /56: see `admission::address_group`).
//!
//! - At most [`MAX_MEMBER_CONNECTIONS`] at once, and [`MAX_CONNECTIONS_PER_NODE`]
//!   per NodeId. A NodeId at its cap gives up its own longest-idle
//!   connection (no request in flight) to its newest. A full node makes
//!   room in this order: the longest-idle connection of the address group
//!   holding the most (if that is not the newcomer's); else any idle one;
//!   else, if one group holds more than [`GREEDY_GROUP`] connections, its
//!   oldest, busy or not. If none of these, the newcomer is refused.
//! - A connection with no request for [`MEMBER_IDLE_TIMEOUT`] is closed; a
//!   request counts from the moment its whole frame has arrived.
//! - QUIC receive windows are shared: each connection's window is a fair
//!   share of [`RECEIVE_MEMORY`] (at most the tuned window, at least
//!   [`MIN_RECEIVE_WINDOW`]), lowered for everyone as members come.
//! - Payload bytes a node holds (the budget in `NodeState`) are shared by
//!   address group: one group, over all its connections and NodeIds, holds
//!   at most [`BUDGET_SHARE`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::{Connection, VarInt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::admission::address_group;
use crate::id::NodeId;
use crate::net::{MEMBER_RECEIVE_WINDOW, Peer};
use crate::wire::ErrorCode;

/// Most member connections at once.
pub const MAX_MEMBER_CONNECTIONS: usize = 256;
/// Most connections one NodeId may hold.
pub const MAX_CONNECTIONS_PER_NODE: usize = 8;
/// An address group holding more connections than this gives one up, even
/// a busy one, when the node is full and no connection is idle.
pub const GREEDY_GROUP: usize = MAX_MEMBER_CONNECTIONS / 8;
/// A member connection with no request for this long is closed.
pub const MEMBER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// What all member connections together may make the node buffer in QUIC,
/// give or take the credit already granted before a window was lowered.
pub const RECEIVE_MEMORY: u64 = 256 << 20;
/// The smallest receive window a member connection gets.
pub const MIN_RECEIVE_WINDOW: u32 = 1 << 20;
/// Most payload bytes the node holds for one address group at once: half
/// the budget, so members elsewhere always find the other half. (A quarter
/// made a pull of 16 chunks at once wait on its own share: a reply stays
/// counted until acknowledged, which takes a delayed ACK longer.)
pub const BUDGET_SHARE: usize = super::PAYLOAD_BUDGET / 2;

struct Entry {
    node: NodeId,
    group: IpAddr,
    conn: Connection,
    in_flight: usize,
    since: Instant,
    idle_since: Instant,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<usize, Entry>,
    /// Each connected address group's budget share, and how many connections use it.
    shares: HashMap<IpAddr, (Arc<Semaphore>, usize)>,
}

/// Every member connection of a node.
#[derive(Default)]
pub(crate) struct Members {
    registry: Mutex<Registry>,
}

impl Members {
    /// Registers a member's connection, making room if the node, or that
    /// NodeId, is full. Returns the receive window the connection gets and
    /// its membership, or why it cannot stay.
    pub(crate) fn join(self: &Arc<Self>, peer: &Peer) -> Result<(u32, Membership), &'static str> {
        let node = peer.node_id();
        let group = address_group(peer.remote_addr().ip());
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let of_node = registry.conns.values().filter(|e| e.node == node).count();
        if of_node >= MAX_CONNECTIONS_PER_NODE {
            let victim = registry
                .longest_idle(|e| e.node == node)
                .ok_or("your node holds as many connections as it may, all busy; finish a request and try again")?;
            registry.evict(victim);
        } else if registry.conns.len() >= MAX_MEMBER_CONNECTIONS {
            let victim = registry
                .room_for(group)
                .ok_or("this node is serving as many members as it can, all busy; try again shortly")?;
            registry.evict(victim);
        }
        let id = peer.connection().stable_id();
        let conn = peer.connection().clone();
        let now = Instant::now();
        registry.conns.insert(id, Entry { node, group, conn, in_flight: 0, since: now, idle_since: now });
        let share = registry.shares.entry(group).or_insert_with(|| (Arc::new(Semaphore::new(BUDGET_SHARE)), 0));
        share.1 += 1;
        let share = Arc::clone(&share.0);
        let window = registry.rebalance(Some(id));
        Ok((window, Membership { members: Arc::clone(self), id, share, reserved: AtomicU64::new(0) }))
    }

    /// How many member connections are open.
    pub(crate) fn count(&self) -> usize {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner).conns.len()
    }

    fn update(&self, id: usize, change: impl FnOnce(&mut Entry)) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = registry.conns.get_mut(&id) {
            change(entry);
        }
    }
}

impl Registry {
    /// The idle connection (no request in flight) idle longest, among those `which` picks.
    fn longest_idle(&self, which: impl Fn(&Entry) -> bool) -> Option<usize> {
        self.conns
            .iter()
            .filter(|(_, e)| e.in_flight == 0 && which(e))
            .min_by_key(|(_, e)| e.idle_since)
            .map(|(id, _)| *id)
    }

    /// The connection that gives way to a newcomer from `newcomer` on a
    /// full node (see the module doc for the order), if any does.
    fn room_for(&self, newcomer: IpAddr) -> Option<usize> {
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for entry in self.conns.values() {
            *counts.entry(entry.group).or_default() += 1;
        }
        let mine = counts.get(&newcomer).copied().unwrap_or(0);
        let greediest = counts
            .iter()
            .max_by_key(|(_, count)| **count)
            .filter(|(group, count)| **group != newcomer && **count > mine + 1)
            .map(|(group, count)| (*group, *count));
        if let Some((group, _)) = greediest
            && let Some(idle) = self.longest_idle(|e| e.group == group)
        {
            return Some(idle);
        }
        if let Some(idle) = self.longest_idle(|_| true) {
            return Some(idle);
        }
        let (group, count) = greediest?;
        if count <= GREEDY_GROUP {
            return None;
        }
        self.conns.iter().filter(|(_, e)| e.group == group).min_by_key(|(_, e)| e.since).map(|(id, _)| *id)
    }

    fn evict(&mut self, id: usize) {
        if let Some(entry) = self.remove(id) {
            entry.conn.close(VarInt::from(ErrorCode::IDLE.0), b"idle: closed to make room for another connection");
        }
    }

    /// Forgets a connection (once: a second call finds nothing).
    fn remove(&mut self, id: usize) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(share) = self.shares.get_mut(&entry.group) {
            share.1 -= 1;
            if share.1 == 0 {
                self.shares.remove(&entry.group);
            }
        }
        Some(entry)
    }

    /// Sets every connection's window to a fair share of [`RECEIVE_MEMORY`]
    /// and returns it; the one being admitted, `new`, is opened by the
    /// caller. Lowering a window withholds new credit at once; what was
    /// granted before stays usable until the peer has sent it, so the sum
    /// can be above [`RECEIVE_MEMORY`] for a while (each connection's
    /// credit is at most the largest window it has had).
    fn rebalance(&self, new: Option<usize>) -> u32 {
        let count = self.conns.len().max(1) as u64;
        let fair = (RECEIVE_MEMORY / count).clamp(u64::from(MIN_RECEIVE_WINDOW), u64::from(MEMBER_RECEIVE_WINDOW));
        let window = u32::try_from(fair).expect("clamped to a u32 bound");
        for (id, entry) in &self.conns {
            if Some(*id) != new {
                entry.conn.set_receive_window(VarInt::from_u32(window));
            }
        }
        window
    }
}

/// One member connection's place in the registry, given up when dropped.
pub(crate) struct Membership {
    members: Arc<Members>,
    id: usize,
    share: Arc<Semaphore>,
    /// Payload bytes this connection's requests hold reserved right now.
    reserved: AtomicU64,
}

impl Membership {
    /// This member's share of the node's payload budget (shared by every
    /// connection from its address group).
    pub(crate) fn share(&self) -> &Arc<Semaphore> {
        &self.share
    }

    /// Payload bytes this connection's requests hold reserved right now:
    /// together they must move at the minimum rate, each its part of it.
    pub(crate) fn reserved(&self) -> &AtomicU64 {
        &self.reserved
    }

    /// When this connection counts as idle, if no request is in flight now:
    /// [`MEMBER_IDLE_TIMEOUT`] after its last request ended (or it joined).
    pub(crate) fn idle_at(&self) -> Option<Instant> {
        let registry = self.members.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = registry.conns.get(&self.id)?;
        (entry.in_flight == 0).then_some(entry.idle_since + MEMBER_IDLE_TIMEOUT)
    }

    /// Marks a request (whose frame has arrived) as in flight, which keeps
    /// the connection from being closed as idle; it ends when the guard is dropped.
    pub(crate) fn request(&self) -> RequestGuard {
        self.members.update(self.id, |e| e.in_flight += 1);
        RequestGuard { members: Arc::clone(&self.members), id: self.id }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut registry = self.members.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if registry.remove(self.id).is_some() {
            registry.rebalance(None);
        }
    }
}

/// A request in flight on a member connection.
pub(crate) struct RequestGuard {
    members: Arc<Members>,
    id: usize,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.members.update(self.id, |e| {
            e.in_flight -= 1;
            e.idle_since = Instant::now();
        });
    }
}
