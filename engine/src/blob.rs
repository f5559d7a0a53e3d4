//! The versioned encoding of the engine's state blobs (process, group and pod images, tracker
//! state): one version byte, then postcard. A blob of another version is refused by name.
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{EngineError, Result};

/// Encodes `value` as a blob of `version`.
pub fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut v = vec![version];
    v.extend(postcard::to_stdvec(value).expect("postcard encodes the engine's state types"));
    v
}

/// Decodes a blob of `version`; `what` names it in errors ("process image").
pub fn decode<T: DeserializeOwned>(version: u8, what: &str, blob: &[u8]) -> Result<T> {
    let err = |detail: String| EngineError::Proc { pid: 0, detail };
    match blob.split_first() {
        Some((&v, rest)) if v == version => postcard::from_bytes(rest).map_err(|e| err(format!("{what} does not decode: {e}"))),
        Some((v, _)) => Err(err(format!("{what} version {v} not supported"))),
        None => Err(err(format!("empty {what}"))),
    }
}

/// Decodes a blob of `version` or of one of the `older` versions whose encoding reads as this
/// one's (a version that only appended enum variants); `what` names it in errors.
pub fn decode_compatible<T: DeserializeOwned>(version: u8, older: &[u8], what: &str, blob: &[u8]) -> Result<T> {
    match blob.first() {
        Some(&v) if older.contains(&v) => {
            let mut b = blob.to_vec();
            b[0] = version;
            decode(version, what, &b)
        }
        _ => decode(version, what, blob),
    }
}
