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

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize)]
    struct InnerV1 {
        id: u64,
        name: String,
    }

    #[derive(Serialize)]
    enum KindV1 {
        Plain(u32),
        Boxed(Box<InnerV1>),
    }

    #[derive(Serialize)]
    struct OuterV1 {
        items: Vec<KindV1>,
        tail: u32,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Inner {
        id: u64,
        name: String,
        #[serde(deserialize_with = "absent_in_older")]
        added: Option<(i32, u32)>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Kind {
        Plain(u32),
        Boxed(Box<Inner>),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Outer {
        items: Vec<Kind>,
        tail: u32,
    }

    #[test]
    fn a_field_added_by_a_version_reads_as_absent_from_older_blobs() {
        // An older blob, nested in a vector and an enum, lacks the field: it reads as None and
        // what follows it still decodes.
        let old = encode(1, &OuterV1 { items: vec![KindV1::Boxed(Box::new(InnerV1 { id: 7, name: "a".into() })), KindV1::Plain(3)], tail: 9 });
        let got: Outer = decode_compatible(2, &[1], "test image", &old).unwrap();
        assert_eq!(got, Outer { items: vec![Kind::Boxed(Box::new(Inner { id: 7, name: "a".into(), added: None })), Kind::Plain(3)], tail: 9 });
        // A current blob carries it.
        let new = Outer { items: vec![Kind::Boxed(Box::new(Inner { id: 8, name: "b".into(), added: Some((-1, 2)) }))], tail: 4 };
        let got: Outer = decode_compatible(2, &[1], "test image", &encode(2, &new)).unwrap();
        assert_eq!(got, new);
        // Another version is refused by name.
        let err = decode_compatible::<Outer>(2, &[1], "test image", &encode(3, &new)).unwrap_err().to_string();
        assert!(err.contains("test image version 3 not supported"), "{err}");
    }
}
