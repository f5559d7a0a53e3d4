//! The versioned encoding of the engine's state blobs (process, group and pod images, tracker
//! state): one version byte, then postcard. A blob of another version is refused by name.
//!
//! A version may append enum variants (older blobs read as they are) or add a field that older
//! blobs lack: such a field is read with [`absent_in_older`], which gives its default without
//! reading anything while an older blob is decoded ([`decode_compatible`]).
use std::cell::Cell;

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

thread_local! {
    /// An older blob is being decoded on this thread ([`decode_compatible`]).
    static OLDER: Cell<bool> = const { Cell::new(false) };
}

/// Decodes a blob of `version` or of one of the `older` versions whose encoding reads as this
/// one's (a version that only appended enum variants, or added fields read with
/// [`absent_in_older`]); `what` names it in errors.
pub fn decode_compatible<T: DeserializeOwned>(version: u8, older: &[u8], what: &str, blob: &[u8]) -> Result<T> {
    match blob.first() {
        Some(&v) if older.contains(&v) => {
            let mut b = blob.to_vec();
            b[0] = version;
            let was = OLDER.with(|o| o.replace(true));
            let out = decode(version, what, &b);
            OLDER.with(|o| o.set(was));
            out
        }
        _ => {
            let was = OLDER.with(|o| o.replace(false));
            let out = decode(version, what, blob);
            OLDER.with(|o| o.set(was));
            out
        }
    }
}

/// `deserialize_with` of a field added by the current version of a blob: while an older blob is
/// decoded ([`decode_compatible`]) the field is not in the bytes, and reads as its default;
/// otherwise it is read.
pub fn absent_in_older<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de> + Default>(d: D) -> std::result::Result<T, D::Error> {
    if OLDER.with(Cell::get) {
        return Ok(T::default());
    }
    T::deserialize(d)
}
