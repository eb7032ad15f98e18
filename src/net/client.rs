//! The network for code that blocks: the pipelines' worker threads and the CLI.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::runtime::Handle;

use super::{Net, NetError, Peer};
use crate::id::NodeId;

/// How long closing a client waits for its close to go out: long enough for
/// the endpoint to send it, not for the whole draining period (three probe
/// timeouts), which every command would otherwise spend at its end.
const CLOSE_WAIT: Duration = Duration::from_millis(50);

/// The network as synchronous code uses it: an endpoint, and the handle of
/// the runtime that drives it.
///
/// Every request a thread that blocks makes goes through [`Client::run`] or
/// [`Client::run_all`]: the one place where such a thread waits on the
/// network. Nothing waits unbounded there: a dial has its handshake and
/// `Hello` deadlines ([`Net::connect`]), and every request of a [`Peer`] its
/// frame, payload and reply deadlines.
#[derive(Clone)]
pub struct Client {
    runtime: Handle,
    net: Net,
}

impl Client {
    /// A client of `net`, driven by `runtime` (which must outlive it).
    pub fn new(runtime: Handle, net: Net) -> Self {
        Self { runtime, net }
    }

    /// The endpoint.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// This client's NodeId.
    pub fn node_id(&self) -> NodeId {
        self.net.node_id()
    }

    /// Waits for one request (or a few, joined) on the runtime.
    pub fn run<F: Future>(&self, request: F) -> F::Output {
        self.runtime.block_on(request)
    }

    /// Runs `requests` at once and waits for all of them, in order.
    pub fn run_all<F: Future>(&self, requests: impl IntoIterator<Item = F>) -> Vec<F::Output> {
        self.run(join_all(requests))
    }

    /// Dials `node` at each of `addrs` in turn until one answers.
    pub fn connect(&self, node: NodeId, addrs: &[SocketAddr]) -> Result<(Peer, SocketAddr), NetError> {
        self.run(self.net.connect_any(node, addrs))
    }

    /// Closes every connection, so that each peer frees at once what it
    /// holds for this client, and waits briefly for the close to go out.
    pub fn close(&self) {
        self.run(self.net.close(CLOSE_WAIT));
    }
}
