//! The body codec (postcard), behind one small interface so it can be
//! swapped, and the bounded types that make decoding allocation-safe.
//!
//! [`Bounded`], [`BoundedBytes`] and [`BoundedString`] check a list's length
//! prefix against their limit *before* allocating for it. When one refuses,
//! it records which limit in a thread-local so the frame decoder can report
//! `LimitExceeded` rather than a generic parse error.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

thread_local! {
    static LIMIT_BROKEN: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Why a body did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// The body ended in the middle of a value.
    Truncated,
    /// A list or string is longer than its limit (the limit).
    LimitExceeded(usize),
    /// The bytes are not a valid encoding.
    Malformed,
    /// A whole value was decoded and bytes are left over (how many).
    TrailingBytes(usize),
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let encoded = postcard::to_extend(value, std::mem::take(out)).map_err(|_| CodecError::Malformed)?;
    *out = encoded;
    Ok(())
}

/// Decodes exactly one `T` from all of `bytes`.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    LIMIT_BROKEN.set(None);
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(CodecError::TrailingBytes(rest.len())),
        Err(error) => Err(match LIMIT_BROKEN.take() {
            Some(limit) => CodecError::LimitExceeded(limit),
            None if error == postcard::Error::DeserializeUnexpectedEnd => CodecError::Truncated,
            None => CodecError::Malformed,
        }),
    }
}

fn refuse<E: de::Error>(len: usize, limit: usize) -> E {
    LIMIT_BROKEN.set(Some(limit));
    E::invalid_length(len, &"a length within the protocol limit")
}

/// A list of at most `N` items.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bounded<T, const N: usize>(Vec<T>);

impl<T, const N: usize> Bounded<T, N> {
    /// The list, if it has at most `N` items.
    pub fn new(items: Vec<T>) -> Option<Self> {
        (items.len() <= N).then_some(Self(items))
    }

    /// The items.
    pub fn into_inner(self) -> Vec<T> {
        self.0
    }
}

impl<T, const N: usize> Deref for Bounded<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Serialize, const N: usize> Serialize for Bounded<T, N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for item in &self.0 {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoundedVisitor<T, const N: usize>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for BoundedVisitor<T, N> {
            type Value = Bounded<T, N>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {N} items")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // postcard gives the exact length up front: refuse it before allocating.
                let declared = seq.size_hint().unwrap_or(0);
                if declared > N {
                    return Err(refuse(declared, N));
                }
                let mut items = Vec::with_capacity(declared);
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(refuse(N + 1, N));
                    }
                    items.push(item);
                }
                Ok(Bounded(items))
            }
        }

        deserializer.deserialize_seq(BoundedVisitor(PhantomData))
    }
}

/// At most `N` bytes, encoded as a byte string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoundedBytes<const N: usize>(Vec<u8>);

impl<const N: usize> BoundedBytes<N> {
    /// The bytes, if there are at most `N`.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() <= N).then_some(Self(bytes))
    }
}

impl<const N: usize> Deref for BoundedBytes<N> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> Serialize for BoundedBytes<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for BoundedBytes<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor<const N: usize>;

        impl<const N: usize> Visitor<'_> for BytesVisitor<N> {
            type Value = BoundedBytes<N>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "at most {N} bytes")
            }

            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
                if bytes.len() > N {
                    return Err(refuse(bytes.len(), N));
                }
                Ok(BoundedBytes(bytes.to_vec()))
            }
        }

        deserializer.deserialize_bytes(BytesVisitor::<N>)
    }
}

/// A UTF-8 string of at most `N` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoundedString<const N: usize>(String);

impl<const N: usize> BoundedString<N> {
    /// The string, cut at a character boundary to at most `N` bytes.
    pub fn truncating(text: &str) -> Self {
        let mut end = text.len().min(N);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self(text[..end].to_owned())
    }
}

impl<const N: usize> Deref for BoundedString<N> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const N: usize> Serialize for BoundedString<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for BoundedString<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<const N: usize>;

        impl<const N: usize> Visitor<'_> for StrVisitor<N> {
            type Value = BoundedString<N>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string of at most {N} bytes")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text.len() > N {
                    return Err(refuse(text.len(), N));
                }
                Ok(BoundedString(text.to_owned()))
            }
        }

        deserializer.deserialize_str(StrVisitor::<N>)
    }
}

/// How frames carry an Ed25519 signature ([`ed25519_dalek::Signature`],
/// the one signature type of the crate): a byte string of exactly 64 bytes
/// (a varint length, then the bytes). Any 64 bytes decode; whether they
/// verify is the receiver's check. Use with `#[serde(with = "codec::signature")]`.
pub mod signature {
    use std::fmt;

    use ed25519_dalek::Signature;
    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;

    /// Writes the signature's 64 bytes as a byte string.
    pub fn serialize<S: Serializer>(signature: &Signature, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&signature.to_bytes())
    }

    /// Reads a byte string of exactly 64 bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Signature, D::Error> {
        struct SignatureVisitor;

        impl Visitor<'_> for SignatureVisitor {
            type Value = Signature;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }

            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
                let bytes = bytes.try_into().map_err(|_| E::invalid_length(bytes.len(), &self))?;
                Ok(Signature::from_bytes(bytes))
            }
        }

        deserializer.deserialize_bytes(SignatureVisitor)
    }

    /// Any 64 bytes, for fuzzed frames.
    #[cfg(feature = "arbitrary")]
    pub fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Signature> {
        Ok(Signature::from_bytes(&u.arbitrary()?))
    }
}

#[cfg(feature = "arbitrary")]
mod arbitrary_impls {
    //! Arbitrary values stay within their limits, so fuzzed frames encode.
    use arbitrary::{Arbitrary, Result, Unstructured};

    use super::*;

    impl<'a, T: Arbitrary<'a>, const N: usize> Arbitrary<'a> for Bounded<T, N> {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            let mut items: Vec<T> = u.arbitrary()?;
            items.truncate(N);
            Ok(Self(items))
        }
    }

    impl<'a, const N: usize> Arbitrary<'a> for BoundedBytes<N> {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            let mut bytes: Vec<u8> = u.arbitrary()?;
            bytes.truncate(N);
            Ok(Self(bytes))
        }
    }

    impl<'a, const N: usize> Arbitrary<'a> for BoundedString<N> {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            Ok(Self::truncating(u.arbitrary()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_over_its_limit_is_refused_from_its_length_prefix() {
        // Length prefix 5 with 5 items present: refused before any item is read.
        assert_eq!(decode::<Bounded<u8, 4>>(&[5, 1, 2, 3, 4, 5]), Err(CodecError::LimitExceeded(4)));
        assert_eq!(decode::<Bounded<u8, 4>>(&[2, 7, 8]).unwrap().into_inner(), vec![7, 8]);
    }

    #[test]
    fn a_length_prefix_longer_than_the_input_allocates_nothing_and_fails() {
        // Varint 2^35: past any limit and past the input. postcard reports no
        // size for it, so nothing is reserved, and the body ends early.
        let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert_eq!(decode::<Bounded<u64, 1024>>(&huge), Err(CodecError::Truncated));
        assert_eq!(decode::<BoundedBytes<16>>(&huge), Err(CodecError::Truncated));
        assert_eq!(decode::<Bounded<u8, 4>>(&[5]), Err(CodecError::Truncated));
    }

    #[test]
    fn strings_and_bytes_respect_their_limits() {
        let long = postcard::to_stdvec("héllo").unwrap();
        assert_eq!(decode::<BoundedString<5>>(&long), Err(CodecError::LimitExceeded(5)));
        assert_eq!(&*decode::<BoundedString<6>>(&long).unwrap(), "héllo");
        assert_eq!(&*BoundedString::<2>::truncating("héllo"), "h");
        let bytes = postcard::to_stdvec(&BoundedBytes::<8>::new(vec![1, 2, 3]).unwrap()).unwrap();
        assert_eq!(decode::<BoundedBytes<2>>(&bytes), Err(CodecError::LimitExceeded(2)));
    }

    #[test]
    fn trailing_bytes_and_short_input_are_distinct() {
        assert_eq!(decode::<u8>(&[1, 2]), Err(CodecError::TrailingBytes(1)));
        assert_eq!(decode::<[u8; 4]>(&[1, 2]), Err(CodecError::Truncated));
    }

    /// A signature field, as the frames that carry one declare it.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Signed(#[serde(with = "signature")] ed25519_dalek::Signature);

    #[test]
    fn a_signature_is_a_64_byte_string_and_no_other_length_decodes() {
        let bytes: [u8; 64] = std::array::from_fn(|i| i as u8);
        let encoded = postcard::to_stdvec(&Signed(ed25519_dalek::Signature::from_bytes(&bytes))).unwrap();
        assert_eq!(encoded[0], 64, "the varint length");
        assert_eq!(encoded[1..], bytes);
        assert_eq!(decode::<Signed>(&encoded).unwrap().0.to_bytes(), bytes);
        assert_eq!(decode::<Signed>(&[3, 1, 2, 3]), Err(CodecError::Malformed));
        let mut long = vec![65];
        long.extend_from_slice(&[0; 65]);
        assert_eq!(decode::<Signed>(&long), Err(CodecError::Malformed));
    }
}
