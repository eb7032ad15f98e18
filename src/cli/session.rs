//! How a command reaches this home's records.
//!
//! One process owns a home at a time (its lock). A command opens the home
//! itself when it can; while `p2pfs serve` owns it, the command talks to
//! that node over QUIC instead, as any member would (pinned TLS, the
//! membership proof), with the home's own node key. The node then keeps the
//! owner's log, manifests and pins ([`Daemon`]) and stores chunks as one
//! more member of the swarm.

use std::ops::Deref;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::network;
use crate::home::peers::{KnownPeer, PeerTable};
use crate::home::{Access, Config, Home, HomeError, Keys};
use crate::net::Client;
use crate::node::ServeInfo;
use crate::store::Store;
use crate::transfer::catalog::Catalog;
use crate::transfer::daemon::Daemon;
use crate::transfer::index::HistoryIndex;

/// A home, opened or reached through its node.
pub(super) enum Session {
    /// This process owns the home; the home's history index.
    Owned(Box<Home>, HistoryIndex),
    /// `p2pfs serve` owns it.
    Served(Box<Served>),
}

/// A home that a running node owns, and the connection to that node.
pub(super) struct Served {
    keys: Keys,
    config: Config,
    info: ServeInfo,
    link: Link,
    daemon: Daemon,
    index: HistoryIndex,
}

/// An async runtime and a QUIC endpoint, for talking to peers. Dropping it
/// closes the endpoint, so every peer frees at once what it held for this
/// command instead of waiting for the connection to time out.
pub(super) struct Link {
    pub(super) client: Client,
    _rt: tokio::runtime::Runtime,
}

impl Link {
    /// A client endpoint with this home's node key.
    pub(super) fn new(keys: &Keys) -> Result<Self> {
        let rt = network::runtime()?;
        let net = {
            let _guard = rt.enter();
            network::client(keys)?
        };
        Ok(Self { client: Client::new(rt.handle().clone(), net), _rt: rt })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.client.close();
    }
}

/// A [`Link`] a session holds, or one made for a single command.
pub(super) enum LinkRef<'a> {
    Held(&'a Link),
    Made(Box<Link>),
}

impl Deref for LinkRef<'_> {
    type Target = Link;

    fn deref(&self) -> &Link {
        match self {
            LinkRef::Held(link) => link,
            LinkRef::Made(link) => link,
        }
    }
}

impl Session {
    /// Opens the home at `path` for `access`, or connects to the node
    /// serving it. A home that another command holds in a way `access`
    /// cannot share (`gc`) is waited for with `wait`, and refused without.
    pub(super) fn open(path: &Path, access: Access, wait: bool) -> Result<Self> {
        let patience = if wait { std::time::Duration::MAX } else { crate::store::DEFAULT_PATIENCE };
        let index = || -> Result<HistoryIndex> {
            let index = HistoryIndex::open(path, patience);
            if let Some(why) = index.degraded() {
                eprintln!("p2pfs: warning: {why}");
            }
            Ok(index)
        };
        let locked = match Home::open_for(path, access, false) {
            Ok(home) => return Ok(Session::Owned(Box::new(home), index()?)),
            Err(e @ HomeError::Locked { .. }) => e,
            Err(e) => return Err(e.into()),
        };
        if let Some(info) = ServeInfo::read(path) {
            return Served::connect(path, info, index()?).map(|served| Session::Served(Box::new(served)));
        }
        if !wait {
            return Err(locked.into());
        }
        eprintln!("p2pfs: waiting for another p2pfs command to finish with {} (--wait)", path.display());
        Ok(Session::Owned(Box::new(Home::open_for(path, access, true)?), index()?))
    }

    /// The home's keys.
    pub(super) fn keys(&self) -> &Keys {
        match self {
            Session::Owned(home, _) => home.keys(),
            Session::Served(served) => &served.keys,
        }
    }

    /// The home's configuration.
    pub(super) fn config(&self) -> &Config {
        match self {
            Session::Owned(home, _) => home.config(),
            Session::Served(served) => &served.config,
        }
    }

    /// The home's history index.
    pub(super) fn index(&self) -> &HistoryIndex {
        match self {
            Session::Owned(_, index) => index,
            Session::Served(served) => &served.index,
        }
    }

    /// The home's log, manifests and pins.
    pub(super) fn catalog(&self) -> &dyn Catalog {
        match self {
            Session::Owned(home, _) => home.store(),
            Session::Served(served) => &served.daemon,
        }
    }

    /// The home's store, when this process owns it.
    pub(super) fn store(&self) -> Option<&Store> {
        match self {
            Session::Owned(home, _) => Some(home.store()),
            Session::Served(_) => None,
        }
    }

    /// The node serving the home, if one is.
    pub(super) fn served(&self) -> Option<&Served> {
        match self {
            Session::Owned(..) => None,
            Session::Served(served) => Some(served),
        }
    }

    /// Whether chunks go to peers: the home knows some, or its own node is
    /// serving (and stores them as a member).
    pub(super) fn networked(&self, home: &Path) -> Result<bool> {
        Ok(self.served().is_some() || !PeerTable::load(home).context("reading the peer table")?.is_empty())
    }

    /// The session's link to peers, or a new one.
    pub(super) fn link(&self) -> Result<LinkRef<'_>> {
        match self {
            Session::Served(served) => Ok(LinkRef::Held(&served.link)),
            Session::Owned(home, _) => Link::new(home.keys()).map(|link| LinkRef::Made(Box::new(link))),
        }
    }

    /// Peers to dial besides the known ones: the home's own node, if it serves.
    pub(super) fn own_node(&self) -> Vec<KnownPeer> {
        match self {
            Session::Owned(..) => Vec::new(),
            Session::Served(served) => vec![KnownPeer { node: served.info.node, addrs: served.info.addrs.clone() }],
        }
    }

    /// Fails, naming the running node, for commands that need the store itself.
    pub(super) fn require_owned(&self, command: &str) -> Result<&Home> {
        match self {
            Session::Owned(home, _) => Ok(home),
            Session::Served(served) => bail!(
                "`p2pfs {command}` needs this home's store, which `p2pfs serve` (pid {}) is using: stop the node, \
                 run `p2pfs {command}`, then start it again",
                served.info.pid
            ),
        }
    }
}

impl Served {
    fn connect(path: &Path, info: ServeInfo, index: HistoryIndex) -> Result<Self> {
        let keys = Keys::load(path)?;
        let config = Config::load(path)?;
        let link = Link::new(&keys)?;
        let not_answering = || {
            format!(
                "this home is in use by `p2pfs serve` (pid {}), which does not answer at {}; \
                 if it is stuck, stop it and try again",
                info.pid,
                info.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )
        };
        match link.client.connect(info.node, &info.addrs) {
            Ok((peer, addr)) => {
                let daemon = Daemon::new(link.client.clone(), peer, addr, keys.owner_keys());
                Ok(Self { keys, config, info, link, daemon, index })
            }
            Err(e) => Err(anyhow::Error::new(e).context(not_answering())),
        }
    }

    /// The node's process id.
    pub(super) fn pid(&self) -> u32 {
        self.info.pid
    }

    /// The connection to the node, as the home's catalog.
    pub(super) fn daemon(&self) -> &Daemon {
        &self.daemon
    }
}
