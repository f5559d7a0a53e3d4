//! The versioned, checksummed envelope around every encoded record of the store (manifests,
//! checkpoint summaries).
//!
//! ```text
//! offset  size  field
//!      0     4  magic        record kind, e.g. b"ZAPM" for a manifest
//!      4     2  version      format version of the payload schema (u16 LE), not the crate version
//!      6     2  flags        bit 0: payload is one zstd frame; other bits must be 0
//!      8     8  length       payload length in bytes (u64 LE), capped at MAX_PAYLOAD
//!     16     n  payload      postcard encoding of the record (after zstd if flagged)
//!   16+n    32  checksum     BLAKE3 of bytes 0..16+n
//! ```
//!
//! Compatibility rule: a reader accepts versions from 1 up to its own current version for the
//! magic; a newer version is refused with [`EnvelopeError::Version`] rather than misread.
use serde::{de::DeserializeOwned, Serialize};

/// Largest payload a reader accepts (before decompression), to refuse absurd lengths early.
pub const MAX_PAYLOAD: u64 = 1 << 30;
const HEADER: usize = 16;
const SUM: usize = 32;
const FLAG_ZSTD: u16 = 1;

/// Why an envelope could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Fewer bytes than the header and checksum, or than the length says.
    #[error("truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header implies.
        need: u64,
    },
    /// Not the expected record kind.
    #[error("bad magic {found:?}, expected {expected:?}")]
    Magic {
        /// Magic found.
        found: [u8; 4],
        /// Magic expected.
        expected: [u8; 4],
    },
    /// Written by a newer (or unknown) format version.
    #[error("format version {found} not supported (this build reads 1..={supported})")]
    Version {
        /// Version found.
        found: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// Unknown flag bits or an oversized length.
    #[error("invalid header: {0}")]
    Header(String),
    /// The checksum does not match.
    #[error("checksum mismatch (corrupt record)")]
    Checksum,
    /// The payload failed to decode.
    #[error("payload does not decode: {0}")]
    Decode(String),
}

/// Encodes `value` into an envelope. Payloads over 4 KiB are zstd-compressed.
pub fn seal<T: Serialize>(magic: [u8; 4], version: u16, value: &T) -> Vec<u8> {
    let plain = postcard::to_stdvec(value).expect("postcard encodes store records");
    let (flags, payload) = if plain.len() > 4096 {
        (FLAG_ZSTD, zstd::bulk::compress(&plain, 3).expect("zstd compress in memory"))
    } else {
        (0, plain)
    };
    let mut out = Vec::with_capacity(HEADER + payload.len() + SUM);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// The format version an envelope's header states, without checking anything else.
pub fn version_of(bytes: &[u8]) -> Option<u16> {
    bytes.get(4..6).map(|v| u16::from_le_bytes([v[0], v[1]]))
}

/// Checks and decodes an envelope, returning the record and its format version.
pub fn open<T: DeserializeOwned>(
    magic: [u8; 4],
    supported: u16,
    bytes: &[u8],
) -> Result<(T, u16), EnvelopeError> {
    if bytes.len() < HEADER + SUM {
        return Err(EnvelopeError::Truncated { have: bytes.len(), need: (HEADER + SUM) as u64 });
    }
    let found: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
    if found != magic {
        return Err(EnvelopeError::Magic { found, expected: magic });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version == 0 || version > supported {
        return Err(EnvelopeError::Version { found: version, supported });
    }
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    if flags & !FLAG_ZSTD != 0 {
        return Err(EnvelopeError::Header(format!("unknown flags {flags:#x}")));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(EnvelopeError::Header(format!("payload length {len} over the cap")));
    }
    let need = HEADER as u64 + len + SUM as u64;
    if (bytes.len() as u64) < need {
        return Err(EnvelopeError::Truncated { have: bytes.len(), need });
    }
    if (bytes.len() as u64) > need {
        return Err(EnvelopeError::Header(format!("{} trailing bytes", bytes.len() as u64 - need)));
    }
    let body_end = HEADER + len as usize;
    if blake3::hash(&bytes[..body_end]).as_bytes() != &bytes[body_end..] {
        return Err(EnvelopeError::Checksum);
    }
    let payload = &bytes[HEADER..body_end];
    let plain;
    let payload = if flags & FLAG_ZSTD != 0 {
        plain = zstd::stream::decode_all(payload).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
        &plain[..]
    } else {
        payload
    };
    let value = postcard::from_bytes(payload).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
    Ok((value, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_corruption_is_caught() {
        let value: Vec<u64> = (0..2000).collect();
        let sealed = seal(*b"TEST", 1, &value);
        let (back, v): (Vec<u64>, u16) = open(*b"TEST", 1, &sealed).unwrap();
        assert_eq!((back, v), (value, 1));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open::<Vec<u64>>(*b"TEST", 1, &bad).is_err(), "flip at {i} went unnoticed");
        }
        for n in 0..sealed.len() {
            assert!(open::<Vec<u64>>(*b"TEST", 1, &sealed[..n]).is_err(), "truncation to {n}");
        }
        assert!(matches!(open::<Vec<u64>>(*b"TEST", 0, &sealed), Err(EnvelopeError::Version { .. })));
        assert!(matches!(open::<Vec<u64>>(*b"XXXX", 1, &sealed), Err(EnvelopeError::Magic { .. })));
    }
}
