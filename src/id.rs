//! Content and identity addresses: [`ChunkId`], [`ManifestId`], [`NodeId`],
//! [`OwnerId`].
//!
//! Each is 32 bytes, shown and parsed as 64 lowercase hex characters. Users may
//! abbreviate a [`ManifestId`] to a unique prefix of at least
//! [`MIN_PREFIX_LEN`] hex characters, as in git; [`IdPrefix`] holds such a
//! prefix. This module does no I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length in bytes of every id.
pub const ID_LEN: usize = 32;

/// Shortest hex prefix accepted in place of a whole id.
pub const MIN_PREFIX_LEN: usize = 8;

/// Why a string is not an id or an id prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    /// The string has a character outside `0-9a-fA-F`.
    #[error("'{0}' is not hexadecimal")]
    NotHex(String),
    /// The string has the wrong number of characters for a whole id.
    #[error("'{input}' has {len} hex characters; an id has 64")]
    WrongLength {
        /// The rejected input.
        input: String,
        /// Its length in characters.
        len: usize,
    },
    /// A prefix shorter than [`MIN_PREFIX_LEN`] or longer than a whole id.
    #[error("'{0}' is not an id prefix: give 8 to 64 hex characters")]
    BadPrefixLength(String),
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct $name(pub [u8; ID_LEN]);

        /// 32 raw bytes in binary formats (postcard), 64 hex characters in
        /// human-readable ones (JSON).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    self.0.serialize(serializer)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = String::deserialize(deserializer)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; ID_LEN]>::deserialize(deserializer).map(Self)
                }
            }
        }

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// The first `n` hex characters, for compact human output.
            pub fn short(&self, n: usize) -> String {
                let mut s = self.to_string();
                s.truncate(n);
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short(12))
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 2 * ID_LEN {
                    return Err(ParseIdError::WrongLength { input: s.to_owned(), len: s.chars().count() });
                }
                let mut bytes = [0u8; ID_LEN];
                decode_hex(s, &mut bytes).ok_or_else(|| ParseIdError::NotHex(s.to_owned()))?;
                Ok(Self(bytes))
            }
        }
    };
}

define_id!(
    /// BLAKE3-256 of a chunk's ciphertext. Anyone holding the bytes can verify it.
    ChunkId
);
define_id!(
    /// BLAKE3-256 of a whole manifest envelope.
    ManifestId
);
define_id!(
    /// A node's Ed25519 public key.
    NodeId
);
define_id!(
    /// An owner's Ed25519 signing public key.
    OwnerId
);

impl ChunkId {
    /// The id of `ciphertext`.
    pub fn of(ciphertext: &[u8]) -> Self {
        Self(*blake3::hash(ciphertext).as_bytes())
    }
}

impl ManifestId {
    /// The id of a manifest envelope.
    pub fn of(envelope: &[u8]) -> Self {
        Self(*blake3::hash(envelope).as_bytes())
    }
}

/// A lowercase hex prefix of an id, [`MIN_PREFIX_LEN`] to 64 characters long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPrefix(String);

impl IdPrefix {
    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: &ManifestId) -> bool {
        id.to_string().starts_with(&self.0)
    }

    /// The prefix as typed, lowercased.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lowest and the highest id that start with this prefix: the
    /// range an index of ids is read in.
    pub fn byte_range(&self) -> ([u8; ID_LEN], [u8; ID_LEN]) {
        let (mut low, mut high) = ([0u8; ID_LEN], [0xffu8; ID_LEN]);
        for (i, c) in self.0.bytes().enumerate() {
            let nibble = (c as char).to_digit(16).expect("a prefix holds only hex digits") as u8;
            let shift = if i % 2 == 0 { 4 } else { 0 };
            let mask = 0xf << shift;
            low[i / 2] = (low[i / 2] & !mask) | (nibble << shift);
            high[i / 2] = (high[i / 2] & !mask) | (nibble << shift);
        }
        (low, high)
    }
}

impl FromStr for IdPrefix {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ParseIdError::NotHex(s.to_owned()));
        }
        if !(MIN_PREFIX_LEN..=2 * ID_LEN).contains(&s.len()) {
            return Err(ParseIdError::BadPrefixLength(s.to_owned()));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 2 * ID_LEN];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    // The buffer holds only ASCII hex digits.
    f.write_str(std::str::from_utf8(&out[..2 * bytes.len()]).map_err(|_| fmt::Error)?)
}

/// Decodes `hex` into `out`, which must be exactly half its length.
fn decode_hex(hex: &str, out: &mut [u8]) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if hex.len() != 2 * out.len() {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(())
}

/// Encodes bytes as lowercase hex (for key files and tokens).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes hex of any even length (upper or lower case); `None` if it is not hex.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![0u8; hex.len() / 2];
    decode_hex(hex, &mut out)?;
    Some(out)
}

/// Decodes exactly 32 bytes of hex, ignoring surrounding whitespace.
pub fn key_from_hex(hex: &str) -> Option<[u8; ID_LEN]> {
    let mut out = [0u8; ID_LEN];
    decode_hex(hex.trim(), &mut out)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_is_64_lowercase_hex() {
        let id = ChunkId([0xab; 32]);
        assert_eq!(id.to_string(), "ab".repeat(32));
        assert_eq!(id.short(8), "abababab");
    }

    #[test]
    fn parse_rejects_wrong_length_and_non_hex() {
        assert!(matches!("abc".parse::<ChunkId>(), Err(ParseIdError::WrongLength { len: 3, .. })));
        let bad = "g".repeat(64);
        assert!(matches!(bad.parse::<ChunkId>(), Err(ParseIdError::NotHex(_))));
        // Multi-byte characters must not be mistaken for hex or cause a panic.
        let wide = "é".repeat(32);
        assert!(wide.parse::<ManifestId>().is_err());
    }

    #[test]
    fn prefix_needs_eight_hex_characters() {
        assert!("abcdef0".parse::<IdPrefix>().is_err());
        assert!("abcdefgh".parse::<IdPrefix>().is_err());
        let prefix: IdPrefix = "ABABABAB".parse().unwrap();
        assert!(prefix.matches(&ManifestId([0xab; 32])));
        assert!(!prefix.matches(&ManifestId([0xac; 32])));
    }

    #[test]
    fn ids_are_hex_in_json_and_raw_in_postcard() {
        let id = ChunkId([0x1f; 32]);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{}\"", "1f".repeat(32)));
        assert_eq!(serde_json::from_str::<ChunkId>(&serde_json::to_string(&id).unwrap()).unwrap(), id);
        let raw = postcard::to_stdvec(&id).unwrap();
        assert_eq!(raw, [0x1f; 32]);
        assert_eq!(postcard::from_bytes::<ChunkId>(&raw).unwrap(), id);
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in any::<[u8; 32]>()) {
            let id = ManifestId(bytes);
            prop_assert_eq!(id.to_string().parse::<ManifestId>().unwrap(), id);
            prop_assert_eq!(key_from_hex(&to_hex(&bytes)), Some(bytes));
        }
    }
}
