//! `serve --mdns`: finding members on the local network.
//!
//! The node announces itself as a DNS-SD service of type [`SERVICE_TYPE`]
//! (multicast DNS, RFC 6762/6763, through the `mdns-sd` crate) and browses
//! for others. The record names the node and its network only by a tag
//! ([`network_tag`]), never the network key. A node another announces is
//! learned as an *unverified* peer and checked like any address heard of
//! (a connection, then the `Hello` proof): an announcement proves nothing,
//! so membership is still only proven by the handshake.
//!
//! Anyone on the LAN can send announcements, so what they can make a node
//! do is bounded: at most [`MDNS_LEARN_PER_MINUTE`] announcements are
//! considered a minute (the rest are ignored until the next), each adds at
//! most [`peers::MAX_ADDRS`] addresses under the peer table's caps, and the
//! node dials what it learned only through its verification rounds (at
//! most 16 peers every 2 s).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tracing::{debug, info, warn};

use super::NodeState;
use crate::home::peers;
use crate::id::NodeId;

/// The DNS-SD service type p2pfs nodes announce.
pub const SERVICE_TYPE: &str = "_p2pfs._udp.local.";
/// The domain string the network tag is derived under.
const TAG_CONTEXT: &[u8] = b"p2pfs/1 mdns network tag";
/// Most announcements of other nodes considered per minute.
pub const MDNS_LEARN_PER_MINUTE: usize = 32;
/// The TXT keys of the record: format version, network tag, NodeId.
const TXT_VERSION: &str = "v";
const TXT_NETWORK: &str = "net";
const TXT_NODE: &str = "node";

/// The tag a node of the network with `network_key` announces: the first 16
/// hex digits of BLAKE3 keyed by the network key over a domain string. It
/// tells members of one network apart from others on the LAN without
/// revealing anything that would let a non-member in.
pub fn network_tag(network_key: &[u8; 32]) -> String {
    let hash = blake3::keyed_hash(network_key, TAG_CONTEXT);
    hash.to_hex()[..16].to_owned()
}

/// Shuts the mDNS daemon down (its goodbye packets tell the LAN this node
/// left) when the node's task ends.
struct Daemon(ServiceDaemon);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Announces this node, listening at `ip` (unspecified: every interface's
/// address) and `port`, and learns the members of its network that others
/// announce, until the node stops (the task is aborted).
pub(super) async fn announce_and_browse(state: Arc<NodeState>, ip: IpAddr, port: u16) {
    let daemon = match ServiceDaemon::new() {
        Ok(daemon) => Daemon(daemon),
        Err(e) => {
            warn!("mDNS is off: cannot start it: {e}");
            return;
        }
    };
    let me = state.net.node_id();
    let tag = network_tag(&state.home.keys().network);
    let short = me.short(16);
    let properties = [(TXT_VERSION, "1".to_owned()), (TXT_NETWORK, tag.clone()), (TXT_NODE, me.to_string())];
    let record = ServiceInfo::new(
        SERVICE_TYPE,
        &me.short(32),
        &format!("p2pfs-{short}.local."),
        if ip.is_unspecified() { &[][..] } else { std::slice::from_ref(&ip) },
        port,
        &properties[..],
    )
    .map(|record| if ip.is_unspecified() { record.enable_addr_auto() } else { record });
    let registered = record.and_then(|record| daemon.0.register(record));
    if let Err(e) = registered {
        warn!("mDNS is off: cannot announce this node: {e}");
        return;
    }
    let events = match daemon.0.browse(SERVICE_TYPE) {
        Ok(events) => events,
        Err(e) => {
            warn!("mDNS: announcing, but cannot browse: {e}");
            return;
        }
    };
    info!("mDNS: announcing node {short} (network tag {tag}) and browsing for members");
    let mut window = tokio::time::Instant::now();
    let mut considered = 0usize;
    while let Ok(event) = events.recv_async().await {
        let ServiceEvent::ServiceResolved(found) = event else { continue };
        if found.get_property_val_str(TXT_NETWORK) != Some(tag.as_str()) {
            continue;
        }
        let Some(node) = found.get_property_val_str(TXT_NODE).and_then(|n| n.parse::<NodeId>().ok()) else {
            continue;
        };
        if node == me {
            continue;
        }
        let now = tokio::time::Instant::now();
        if now >= window + Duration::from_secs(60) {
            (window, considered) = (now, 0);
        }
        if considered >= MDNS_LEARN_PER_MINUTE {
            debug!("mDNS: ignoring node {} (too many announcements this minute)", node.short(16));
            continue;
        }
        considered += 1;
        let port = found.get_port();
        let addrs: Vec<SocketAddr> = found
            .get_addresses()
            .iter()
            .map(|ip| SocketAddr::new(ip.to_ip_addr(), port))
            .filter(|addr| !addr.ip().is_unspecified() && !addr.ip().is_multicast())
            .take(peers::MAX_ADDRS)
            .collect();
        let learned = {
            let mut table = state.table.lock().unwrap_or_else(PoisonError::into_inner);
            table.learn_unverified(node, &addrs)
        };
        if learned {
            debug!("mDNS: heard of node {} at {addrs:?}; verifying", node.short(16));
            state.heard_of.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_depends_on_the_network_key_and_does_not_reveal_it() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(network_tag(&a), network_tag(&a));
        assert_ne!(network_tag(&a), network_tag(&b));
        assert_eq!(network_tag(&a).len(), 16);
        assert!(!network_tag(&a).contains(&crate::id::to_hex(&a)[..16]));
    }
}
