//! Join tokens and share tickets: the strings one person copies to another
//! (docs/FORMAT.md, "Tokens and tickets").
//!
//! ```text
//! p2pfs-join2-<hex>     p2pfs-share2-<hex>
//!        │    └ postcard(value) ‖ first 4 bytes of BLAKE3("p2pfs-join2-" ‖ postcard(value))
//!        └ kind and format version
//! ```
//!
//! Whitespace anywhere is ignored, so a token wrapped by a mail client or
//! pasted with spaces around it still reads; the checksum catches a changed
//! or missing digit before anything is trusted. Pure: no I/O.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::id::{self, ManifestId};
use crate::wire::PeerInfo;

/// The format version both kinds carry in their prefix.
pub const TOKEN_VERSION: u32 = 2;
/// Bytes of checksum after the payload.
pub const CHECKSUM_LEN: usize = 4;
/// Longest token text read (an invite or ticket is a few hundred bytes).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What `p2pfs invite` prints: the network key and where to find a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The network's shared secret.
    pub network_key: [u8; 32],
    /// The node that invited, and where it listens.
    pub peer: PeerInfo,
}

/// What `p2pfs share` prints: one version's manifest, its file key, and
/// peers that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareTicket {
    /// The shared version's manifest.
    pub manifest: ManifestId,
    /// The key that opens that manifest (and nothing else).
    pub file_key: [u8; 32],
    /// Peers to ask for it.
    pub peers: Vec<PeerInfo>,
}

/// The kinds of token, by their prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A [`JoinToken`].
    Join,
    /// A [`ShareTicket`].
    Share,
}

impl Kind {
    /// The word in the prefix: `join` or `share`.
    fn word(self) -> &'static str {
        match self {
            Kind::Join => "join",
            Kind::Share => "share",
        }
    }

    /// How messages call it.
    pub fn what(self) -> &'static str {
        match self {
            Kind::Join => "join token",
            Kind::Share => "share ticket",
        }
    }

    /// The prefix of this kind at the current version.
    pub fn prefix(self) -> String {
        format!("p2pfs-{}{TOKEN_VERSION}-", self.word())
    }

    /// What the user should do with a token of this kind.
    fn use_it(self) -> &'static str {
        match self {
            Kind::Join => "a join token lets a new home join a network: `p2pfs init --join TOKEN`",
            Kind::Share => "a share ticket pulls one version: `p2pfs pull TICKET`",
        }
    }
}

/// A value a token carries.
pub trait Token: Serialize + DeserializeOwned {
    /// Its kind.
    const KIND: Kind;
}

impl Token for JoinToken {
    const KIND: Kind = Kind::Join;
}

impl Token for ShareTicket {
    const KIND: Kind = Kind::Share;
}

/// A token that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text does not start like a p2pfs token at all.
    #[error("that is not a {what} (one starts with {prefix}); copy it again, whole")]
    NotAToken {
        /// The kind wanted.
        what: &'static str,
        /// Its prefix.
        prefix: String,
    },
    /// A token of the other kind was given.
    #[error("that is a {found}, not a {wanted}: {use_it}")]
    WrongKind {
        /// The kind wanted.
        wanted: &'static str,
        /// The kind given.
        found: &'static str,
        /// What the given kind is for.
        use_it: &'static str,
    },
    /// A token of another format version.
    #[error(
        "that {what} is of format version {version}, and this p2pfs reads version {TOKEN_VERSION}: ask for a new \
         one from a p2pfs of this version"
    )]
    Version {
        /// The kind.
        what: &'static str,
        /// The version it carries.
        version: String,
    },
    /// A digit changed, or some are missing: the checksum does not match.
    #[error("that {what} is damaged or incomplete (its checksum does not match); copy it again, whole")]
    Damaged {
        /// The kind.
        what: &'static str,
    },
}

/// The text of a token carrying `value`.
pub fn encode<T: Token>(value: &T) -> String {
    let prefix = T::KIND.prefix();
    // Serialising plain structs of byte arrays and vectors cannot fail.
    let mut bytes = postcard::to_stdvec(value).unwrap_or_default();
    let sum = checksum(&prefix, &bytes);
    bytes.extend_from_slice(&sum);
    format!("{prefix}{}", id::to_hex(&bytes))
}

/// The kind of token `text` is, if it looks like one (whatever its version).
pub fn kind_of(text: &str) -> Option<Kind> {
    let text = text.trim_start();
    [Kind::Join, Kind::Share].into_iter().find(|kind| text.starts_with(&format!("p2pfs-{}", kind.word())))
}

/// Reads a token of kind `T`, ignoring whitespace anywhere in `text`.
pub fn decode<T: Token>(text: &str) -> Result<T, TokenError> {
    let kind = T::KIND;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    match kind_of(&compact) {
        Some(found) if found != kind => {
            return Err(TokenError::WrongKind { wanted: kind.what(), found: found.what(), use_it: found.use_it() });
        }
        Some(_) => {}
        None => return Err(TokenError::NotAToken { what: kind.what(), prefix: kind.prefix() }),
    }
    let after_word = &compact[format!("p2pfs-{}", kind.word()).len()..];
    let (version, hex) = after_word.split_once('-').unwrap_or((after_word, ""));
    if version != TOKEN_VERSION.to_string() {
        return Err(TokenError::Version { what: kind.what(), version: version.chars().take(8).collect() });
    }
    let damaged = TokenError::Damaged { what: kind.what() };
    if hex.len() > 2 * MAX_TOKEN_LEN {
        return Err(damaged);
    }
    let bytes = id::from_hex(hex).ok_or(damaged.clone())?;
    let split = bytes.len().checked_sub(CHECKSUM_LEN).ok_or(damaged.clone())?;
    let (payload, sum) = bytes.split_at(split);
    if checksum(&kind.prefix(), payload) != sum {
        return Err(damaged);
    }
    // The checksum matched, so the payload is what was encoded: one that
    // still does not decode came from a p2pfs with another layout.
    postcard::from_bytes(payload)
        .map_err(|_| TokenError::Version { what: kind.what(), version: format!("{TOKEN_VERSION} (another layout)") })
}

fn checksum(prefix: &str, payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prefix.as_bytes());
    hasher.update(payload);
    let mut sum = [0; CHECKSUM_LEN];
    sum.copy_from_slice(&hasher.finalize().as_bytes()[..CHECKSUM_LEN]);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;

    fn ticket() -> ShareTicket {
        ShareTicket { manifest: ManifestId([3; 32]), file_key: [4; 32], peers: Vec::new() }
    }

    fn join() -> JoinToken {
        let addr: std::net::SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let peer = PeerInfo { node: NodeId([5; 32]), addrs: crate::wire::Bounded::new(vec![addr.into()]).unwrap() };
        JoinToken { network_key: [6; 32], peer }
    }

    #[test]
    fn tokens_round_trip_through_wrapping_and_spaces() {
        let text = encode(&ticket());
        assert!(text.starts_with("p2pfs-share2-"), "{text}");
        assert_eq!(decode::<ShareTicket>(&text).unwrap(), ticket());
        let wrapped: String =
            text.as_bytes().chunks(20).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n  ");
        assert_eq!(decode::<ShareTicket>(&format!("  {wrapped}\n")).unwrap(), ticket());
        assert_eq!(decode::<JoinToken>(&encode(&join())).unwrap(), join());
    }

    #[test]
    fn every_changed_digit_and_every_truncation_is_caught() {
        let text = encode(&join());
        let start = Kind::Join.prefix().len();
        for i in start..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(decode::<JoinToken>(&changed), Err(TokenError::Damaged { what: "join token" }), "digit {i}");
        }
        for len in start..text.len() {
            assert!(matches!(decode::<JoinToken>(&text[..len]), Err(TokenError::Damaged { .. })), "length {len}");
        }
    }

    #[test]
    fn the_wrong_kind_or_version_says_so() {
        let err = decode::<ShareTicket>(&encode(&join())).unwrap_err();
        assert!(matches!(err, TokenError::WrongKind { found: "join token", .. }), "{err}");
        assert!(err.to_string().contains("p2pfs init --join"), "{err}");
        let err = decode::<JoinToken>("p2pfs-join1-00ff").unwrap_err();
        assert!(matches!(err, TokenError::Version { .. }), "{err}");
        let err = decode::<JoinToken>("hello").unwrap_err();
        assert!(matches!(err, TokenError::NotAToken { .. }), "{err}");
        assert_eq!(kind_of("  p2pfs-share2-00"), Some(Kind::Share));
        assert_eq!(kind_of("bigfile.iso"), None);
    }
}
