//! The connections of members: who holds which, how busy each is, and what
//! each may take of the node's memory.
//!
//! - At most [`MAX_MEMBER_CONNECTIONS`] at once, and [`MAX_CONNECTIONS_PER_NODE`]
//!   per NodeId. A NodeId at its cap gives up its own longest-idle
//!   connection (no request in flight) to its newest. A full node takes
//!   room from the address group (an IPv4 address, an IPv6 /64) holding the
//!   most connections, if that is not the newcomer's: its longest-idle one,
//!   or its oldest if all are busy, since NodeIds cost a member nothing and
//!   one host could otherwise hold every slot. Otherwise the longest-idle
//!   connection gives way; if every one is busy, the newcomer is refused.
//! - A connection with no request for [`MEMBER_IDLE_TIMEOUT`] is closed.
//! - QUIC receive windows are shared: a new connection gets at most what
//!   [`RECEIVE_MEMORY`] has left after the windows granted to the others
//!   (at least [`MIN_RECEIVE_WINDOW`]), and everyone's window shrinks to a
//!   fair share as members come, so memory does not grow with their count.
//! - Payload bytes a node holds (the budget in `NodeState`) are shared too:
//!   one NodeId, over all its connections, holds at most [`BUDGET_SHARE`].

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
/// A member connection with no request for this long is closed.
pub const MEMBER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// What all member connections together may make the node buffer in QUIC.
pub const RECEIVE_MEMORY: u64 = 256 << 20;
/// The smallest receive window a member connection gets.
pub const MIN_RECEIVE_WINDOW: u32 = 1 << 20;
/// Most payload bytes the node holds for one NodeId at once: half the
/// budget, so another member always finds the other half. (A quarter made
/// a pull of 16 chunks at once wait on its own share: a reply stays counted
/// until acknowledged, which takes a delayed ACK longer.)
pub const BUDGET_SHARE: usize = super::PAYLOAD_BUDGET / 2;

struct Entry {
    node: NodeId,
    group: IpAddr,
    conn: Connection,
    in_flight: usize,
    since: Instant,
    idle_since: Instant,
    /// The receive window given when it joined: quinn cannot take back
    /// credit already granted, so it counts against the memory until it goes.
    granted: u64,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<usize, Entry>,
    /// Each connected NodeId's budget share, and how many connections use it.
    shares: HashMap<NodeId, (Arc<Semaphore>, usize)>,
}

/// Every member connection of a node.
#[derive(Default)]
pub(crate) struct Members {
    registry: Mutex<Registry>,
}

impl Members {
    /// Registers a member's connection, closing the longest-idle one if the
    /// node, or that NodeId, has no room. Returns the receive window the
    /// connection gets and its membership, or why it cannot stay.
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
                .greediest_group_gives_way(group)
                .or_else(|| registry.longest_idle(|_| true))
                .ok_or("this node is serving as many members as it can, all busy; try again shortly")?;
            registry.evict(victim);
        }
        let id = peer.connection().stable_id();
        let conn = peer.connection().clone();
        let window = registry.window_for_newcomer();
        let now = Instant::now();
        let entry = Entry { node, group, conn, in_flight: 0, since: now, idle_since: now, granted: u64::from(window) };
        registry.conns.insert(id, entry);
        let share = registry.shares.entry(node).or_insert_with(|| (Arc::new(Semaphore::new(BUDGET_SHARE)), 0));
        share.1 += 1;
        let share = Arc::clone(&share.0);
        registry.rebalance(Some(id));
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

    /// The connection the group holding the most should give up for a
    /// newcomer of `newcomer` (its longest idle, else its oldest), if that
    /// group holds more than the newcomer's.
    fn greediest_group_gives_way(&self, newcomer: IpAddr) -> Option<usize> {
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for entry in self.conns.values() {
            *counts.entry(entry.group).or_default() += 1;
        }
        let mine = counts.get(&newcomer).copied().unwrap_or(0);
        let (&group, &count) = counts.iter().max_by_key(|(_, count)| **count)?;
        if group == newcomer || count <= mine + 1 {
            return None;
        }
        self.longest_idle(|e| e.group == group).or_else(|| {
            self.conns.iter().filter(|(_, e)| e.group == group).min_by_key(|(_, e)| e.since).map(|(id, _)| *id)
        })
    }

    /// The receive window for a connection joining now: what is left of
    /// [`RECEIVE_MEMORY`] after the others' grants, at most a fair share.
    fn window_for_newcomer(&self) -> u32 {
        let granted: u64 = self.conns.values().map(|e| e.granted).sum();
        let fair = RECEIVE_MEMORY / (self.conns.len() as u64 + 1);
        let window = RECEIVE_MEMORY.saturating_sub(granted).min(fair);
        let window = window.clamp(u64::from(MIN_RECEIVE_WINDOW), u64::from(MEMBER_RECEIVE_WINDOW));
        u32::try_from(window).expect("clamped to a u32 bound")
    }

    fn evict(&mut self, id: usize) {
        if let Some(entry) = self.remove(id) {
            entry.conn.close(VarInt::from(ErrorCode::IDLE.0), b"idle: closed to make room for another connection");
        }
    }

    /// Forgets a connection (once: a second call finds nothing).
    fn remove(&mut self, id: usize) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(share) = self.shares.get_mut(&entry.node) {
            share.1 -= 1;
            if share.1 == 0 {
                self.shares.remove(&entry.node);
            }
        }
        Some(entry)
    }

    /// Lowers (or raises, up to its grant) every connection's window to its
    /// fair share of [`RECEIVE_MEMORY`]; the one being admitted, `new`, is
    /// opened by the caller.
    fn rebalance(&self, new: Option<usize>) {
        let count = self.conns.len().max(1) as u64;
        let fair = (RECEIVE_MEMORY / count).max(u64::from(MIN_RECEIVE_WINDOW));
        for (id, entry) in &self.conns {
            if Some(*id) != new {
                let window = u32::try_from(fair.min(entry.granted)).unwrap_or(MEMBER_RECEIVE_WINDOW);
                entry.conn.set_receive_window(VarInt::from_u32(window));
            }
        }
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
    /// connection of its NodeId).
    pub(crate) fn share(&self) -> &Arc<Semaphore> {
        &self.share
    }

    /// Payload bytes this connection's requests hold reserved right now:
    /// together they must arrive at the minimum rate, each its part of it.
    pub(crate) fn reserved(&self) -> &AtomicU64 {
        &self.reserved
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
