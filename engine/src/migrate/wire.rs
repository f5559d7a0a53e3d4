//! The migration messages, inside the secure channel ([`super::channel`]).
//!
//! Every message has a fixed 8-byte header, then its body:
//! ```text
//!   0      1      2             4                          8
//!   ┌──────┬──────┬─────────────┬──────────────────────────┐
//!   │ kind │ 0    │ 0 0         │ body length (u32 BE)     │ body ...
//!   └──────┴──────┴─────────────┴──────────────────────────┘
//! ```
//! The length is checked against the kind's bound ([`Kind::max_len`]) before a byte of the body
//! is read. Bodies are postcard encodings of the types below, except `Chunk`, which is binary:
//! ```text
//!   chunk id (32, BLAKE3 of the raw bytes) │ compression (1: 0 raw, 1 zstd) │ raw length (u32 BE) │ stored bytes
//! ```
//! A chunk is decoded and checked against its id on arrival ([`decode_chunk`]); one that does
//! not match fails the migration, naming the chunk.
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zap_chunker::{Chunk, ChunkId, Compression};
use zap_store::{Extent, Image};

use super::channel::Channel;
use super::{mig_err, MigrateError, Result};
use crate::group::TreeShape;
use crate::mem::VmaState;

/// Message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// S→D: what is to come, for the destination's checks ([`Offer`]).
    Offer = 1,
    /// D→S: the destination takes the pod ([`Accept`]).
    Accept = 2,
    /// D→S: it does not, and why (a list of problems).
    Refuse = 3,
    /// S→D: a round begins: the process tree and layouts ([`RoundStart`]).
    Round = 4,
    /// S→D: a process's pages follow ([`MemberStart`]).
    Member = 5,
    /// S→D: chunk ids the next extents need.
    Ids = 6,
    /// D→S: which of them to send (one bool each).
    Need = 7,
    /// S→D: one chunk, as stored (binary body).
    Chunk = 8,
    /// S→D: extents of a process's memory ([`Put`]).
    Put = 9,
    /// S→D: the end of a process's pages in this round.
    MemberEnd = 10,
    /// S→D: files of a copied directory ([`FilesUpdate`]).
    Files = 11,
    /// S→D: the round is sent ([`RoundEnd`]).
    RoundEnd = 12,
    /// D→S: the round is applied ([`RoundAck`]).
    RoundAck = 13,
    /// S→D: everything but memory, at the final round ([`FinalState`]).
    Final = 14,
    /// D→S: the pod is restored, stopped, its network detached ([`Ready`]).
    Ready = 15,
    /// S→D: run it (the source is frozen and off the network).
    Commit = 16,
    /// D→S: it runs and holds its address ([`Running`]).
    Running = 17,
    /// S→D: the source's copy is gone.
    Ended = 18,
    /// Either way: the step that failed ([`Failed`]).
    Failed = 19,
    /// S→D: what became of session (recovery).
    Query = 20,
    /// D→S: the session's state ([`Answer`]).
    Answer = 21,
    /// D→S: all done ([`Done`]).
    Done = 22,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            1 => Offer,
            2 => Accept,
            3 => Refuse,
            4 => Round,
            5 => Member,
            6 => Ids,
            7 => Need,
            8 => Chunk,
            9 => Put,
            10 => MemberEnd,
            11 => Files,
            12 => RoundEnd,
            13 => RoundAck,
            14 => Final,
            15 => Ready,
            16 => Commit,
            17 => Running,
            18 => Ended,
            19 => Failed,
            20 => Query,
            21 => Answer,
            22 => Done,
            _ => return None,
        })
    }

    /// The largest body of this kind.
    pub fn max_len(self) -> u32 {
        match self {
            Kind::Chunk => 32 + 1 + 4 + (1 << 20),
            Kind::Final => 256 << 20,
            Kind::Offer | Kind::Member | Kind::Put | Kind::Files => 64 << 20,
            Kind::Ids | Kind::Need => 4 << 20,
            _ => 1 << 20,
        }
    }
}

/// Most chunk ids in one `Ids` message.
pub const IDS_PER_BATCH: usize = 4096;

/// A file the pod has open or mapped, as the source sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    /// Its path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// Who uses it, for messages (`pid 7 fd 3`, `pid 7 mapping 0x7f...`).
    pub user: String,
}

/// What the source offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// Session id (random).
    pub session: String,
    /// The pod's name at the source.
    pub pod: String,
    /// Its name at the destination.
    pub name: String,
    /// Its address at the destination (ADDR/PREFIX).
    pub ip: Option<String>,
    /// Its MAC (kept when the address is).
    pub mac: Option<String>,
    /// Its hostname.
    pub hostname: String,
    /// Memory limit and CPU limit.
    pub memory_limit: Option<u64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// Resident memory now, bytes (for the space check).
    pub memory_bytes: u64,
    /// Files the pod has open or mapped that are not carried.
    pub files: Vec<FileCheck>,
    /// Directories carried with the pod (`--copy`).
    pub copy_dirs: Vec<String>,
    /// Bytes of those directories.
    pub copy_bytes: u64,
    /// The source's kernel release (`uname -r`).
    pub kernel: String,
    /// Leave a checkpoint in the destination's store too.
    pub keep_checkpoint: bool,
    /// Only check.
    pub dry_run: bool,
    /// The pod's clocks as its processes saw them when the offer was sent
    /// ([`crate::pod::clock`]): the destination's pod goes on from them.
    pub clocks: Option<crate::pod::clock::Clocks>,
}

/// The destination takes the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// Its kernel release.
    pub kernel: String,
}

/// A round begins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundStart {
    /// Round number (0 sends all memory).
    pub n: u32,
    /// The final round: the pod is stopped.
    pub last: bool,
    /// The process tree now.
    pub shape: TreeShape,
    /// The process whose exit ends the pod.
    pub main_vpid: i32,
    /// Every live process's mappings now, by pid.
    pub layouts: Vec<(i32, Vec<VmaState>)>,
}

/// A process's pages follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStart {
    /// The process.
    pub vpid: i32,
    /// Ranges sent whole this round: what the round's extents do not cover there holds nothing
    /// (zero, or the file's bytes for a private file mapping). Elsewhere only changes are sent.
    pub whole: Vec<(u64, u64)>,
}

/// Extents of a process's memory: chunk extents (whose chunks were sent or are at the
/// destination) and zero extents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    /// The process.
    pub vpid: i32,
    /// The extents, in address order.
    pub extents: Vec<Extent>,
}

/// Files of a copied directory: each changed file's metadata and content extents; paths gone
/// since the last round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesUpdate {
    /// The directory.
    pub dir: String,
    /// Files, directories and symlinks new or changed since the last round.
    pub entries: Vec<FileEntry>,
    /// Paths (relative) removed since the last round.
    pub removed: Vec<String>,
}

/// One entry of a copied directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the directory ("" for the directory itself).
    pub rel: String,
    /// What it is.
    pub kind: FileKind,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
}

/// What a copied entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(String),
    /// A regular file of `size` bytes with these content extents.
    File {
        /// Its size.
        size: u64,
        /// Its contents.
        extents: Vec<Extent>,
    },
}

/// The round is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundEnd {
    /// Round number.
    pub n: u32,
}

/// The round is applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundAck {
    /// Chunks the destination had already (its store, or an earlier round).
    pub had_chunks: u64,
    /// Bytes written into the prepared pod.
    pub written_bytes: u64,
    /// Time the destination spent applying the round, ms.
    pub apply_ms: f64,
    /// The prepared pod was (re)built this round, and why.
    pub rebuilt: Option<String>,
}

/// Everything but memory, at the final round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// The pod image ([`crate::pod::checkpoint::PodImage`] encoded).
    pub pod_image: Vec<u8>,
    /// Images other than process memory (System V IPC, the console log), whose chunks were sent.
    pub images: Vec<Image>,
}

/// The pod is restored and waits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Time from the `Final` message to ready, ms.
    pub restore_ms: f64,
    /// How the memory got there: `prepared` (in place since the pre-copy rounds) or why the
    /// pod had to be rebuilt.
    pub memory: String,
}

/// The pod runs at the destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Running {
    /// Time from `Commit` to running and announced, ms.
    pub commit_ms: f64,
}

/// The destination is done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The checkpoint left in its store (`--keep-checkpoint`).
    pub checkpoint: Option<String>,
}

/// A step failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// The step.
    pub step: String,
    /// What went wrong.
    pub detail: String,
}

/// What became of a session, as its destination knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The destination runs the pod (it received `Commit`).
    Committed,
    /// It never committed, and holds nothing of it any more.
    Discarded,
    /// It knows no such session (never got past the handshake, or cleaned up long ago).
    Unknown,
}

/// A decoded message.
#[derive(Debug)]
pub enum Msg {
    /// See [`Kind`].
    Offer(Box<Offer>),
    /// See [`Kind`].
    Accept(Accept),
    /// See [`Kind`].
    Refuse(Vec<String>),
    /// See [`Kind`].
    Round(RoundStart),
    /// See [`Kind`].
    Member(MemberStart),
    /// See [`Kind`].
    Ids(Vec<ChunkId>),
    /// See [`Kind`].
    Need(Vec<bool>),
    /// See [`Kind`].
    Chunk(Chunk),
    /// See [`Kind`].
    Put(Put),
    /// See [`Kind`].
    MemberEnd(i32),
    /// See [`Kind`].
    Files(FilesUpdate),
    /// See [`Kind`].
    RoundEnd(RoundEnd),
    /// See [`Kind`].
    RoundAck(RoundAck),
    /// See [`Kind`].
    Final(FinalState),
    /// See [`Kind`].
    Ready(Ready),
    /// See [`Kind`].
    Commit,
    /// See [`Kind`].
    Running(Running),
    /// See [`Kind`].
    Ended,
    /// See [`Kind`].
    Failed(Failed),
    /// See [`Kind`].
    Query(String),
    /// See [`Kind`].
    Answer(Answer),
    /// See [`Kind`].
    Done(Done),
}

impl Msg {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Msg::Offer(_) => Kind::Offer,
            Msg::Accept(_) => Kind::Accept,
            Msg::Refuse(_) => Kind::Refuse,
            Msg::Round(_) => Kind::Round,
            Msg::Member(_) => Kind::Member,
            Msg::Ids(_) => Kind::Ids,
            Msg::Need(_) => Kind::Need,
            Msg::Chunk(_) => Kind::Chunk,
            Msg::Put(_) => Kind::Put,
            Msg::MemberEnd(_) => Kind::MemberEnd,
            Msg::Files(_) => Kind::Files,
            Msg::RoundEnd(_) => Kind::RoundEnd,
            Msg::RoundAck(_) => Kind::RoundAck,
            Msg::Final(_) => Kind::Final,
            Msg::Ready(_) => Kind::Ready,
            Msg::Commit => Kind::Commit,
            Msg::Running(_) => Kind::Running,
            Msg::Ended => Kind::Ended,
            Msg::Failed(_) => Kind::Failed,
            Msg::Query(_) => Kind::Query,
            Msg::Answer(_) => Kind::Answer,
            Msg::Done(_) => Kind::Done,
        }
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("postcard encodes the wire types")
}

/// Encodes the body of `msg`.
pub fn encode_body(msg: &Msg) -> Vec<u8> {
    match msg {
        Msg::Offer(v) => enc(v),
        Msg::Accept(v) => enc(v),
        Msg::Refuse(v) => enc(v),
        Msg::Round(v) => enc(v),
        Msg::Member(v) => enc(v),
        Msg::Ids(v) => enc(v),
        Msg::Need(v) => enc(v),
        Msg::Chunk(c) => {
            let mut b = Vec::with_capacity(37 + c.data.len());
            b.extend_from_slice(&c.id.0);
            b.push(c.compression.code());
            b.extend_from_slice(&c.raw_len.to_be_bytes());
            b.extend_from_slice(&c.data);
            b
        }
        Msg::Put(v) => enc(v),
        Msg::MemberEnd(v) => enc(v),
        Msg::Files(v) => enc(v),
        Msg::RoundEnd(v) => enc(v),
        Msg::RoundAck(v) => enc(v),
        Msg::Final(v) => enc(v),
        Msg::Ready(v) => enc(v),
        Msg::Commit | Msg::Ended => Vec::new(),
        Msg::Running(v) => enc(v),
        Msg::Failed(v) => enc(v),
        Msg::Query(v) => enc(v),
        Msg::Answer(v) => enc(v),
        Msg::Done(v) => enc(v),
    }
}

fn dec<T: DeserializeOwned>(kind: Kind, body: &[u8]) -> Result<T> {
    postcard::from_bytes(body).map_err(|e| MigrateError::Corrupt { step: format!("decode {kind:?} message"), detail: e.to_string() })
}

/// Decodes a body of `kind`.
pub fn decode_body(kind: Kind, body: &[u8]) -> Result<Msg> {
    Ok(match kind {
        Kind::Offer => Msg::Offer(dec(kind, body)?),
        Kind::Accept => Msg::Accept(dec(kind, body)?),
        Kind::Refuse => Msg::Refuse(dec(kind, body)?),
        Kind::Round => Msg::Round(dec(kind, body)?),
        Kind::Member => Msg::Member(dec(kind, body)?),
        Kind::Ids => Msg::Ids(dec(kind, body)?),
        Kind::Need => Msg::Need(dec(kind, body)?),
        Kind::Chunk => {
            if body.len() < 37 {
                return Err(MigrateError::Corrupt { step: "decode Chunk message".into(), detail: format!("{} bytes is too short", body.len()) });
            }
            let id = ChunkId(body[..32].try_into().expect("32"));
            let compression = Compression::from_code(body[32])
                .ok_or_else(|| MigrateError::Corrupt { step: format!("decode chunk {id}"), detail: format!("unknown compression {}", body[32]) })?;
            let raw_len = u32::from_be_bytes(body[33..37].try_into().expect("4"));
            Msg::Chunk(Chunk { id, raw_len, compression, data: body[37..].to_vec() })
        }
        Kind::Put => Msg::Put(dec(kind, body)?),
        Kind::MemberEnd => Msg::MemberEnd(dec(kind, body)?),
        Kind::Files => Msg::Files(dec(kind, body)?),
        Kind::RoundEnd => Msg::RoundEnd(dec(kind, body)?),
        Kind::RoundAck => Msg::RoundAck(dec(kind, body)?),
        Kind::Final => Msg::Final(dec(kind, body)?),
        Kind::Ready => Msg::Ready(dec(kind, body)?),
        Kind::Commit => Msg::Commit,
        Kind::Running => Msg::Running(dec(kind, body)?),
        Kind::Ended => Msg::Ended,
        Kind::Failed => Msg::Failed(dec(kind, body)?),
        Kind::Query => Msg::Query(dec(kind, body)?),
        Kind::Answer => Msg::Answer(dec(kind, body)?),
        Kind::Done => Msg::Done(dec(kind, body)?),
    })
}

/// Decodes `chunk`'s stored bytes and checks them against its id; returns the raw bytes.
pub fn decode_chunk(chunk: &Chunk) -> Result<Vec<u8>> {
    zap_chunker::decode_chunk(&chunk.id, chunk.compression, chunk.raw_len as usize, &chunk.data)
        .map_err(|e| MigrateError::Corrupt { step: format!("receive chunk {}", chunk.id), detail: e.to_string() })
}

/// Test hooks read from `$ZAP_MIGRATE_FAULT` (tests only): `corrupt-chunk` flips a byte of the
/// first chunk sent; `truncate@KIND` sends a message of that kind cut short and stops.
fn fault() -> Option<String> {
    std::env::var("ZAP_MIGRATE_FAULT").ok().filter(|v| !v.is_empty())
}

/// Sends `msg` (queued; [`flush`] sends it on its way).
pub fn send(ch: &mut Channel, msg: &Msg) -> Result<()> {
    let kind = msg.kind();
    let mut body = encode_body(msg);
    let step = format!("send {kind:?}");
    if let Some(f) = fault() {
        if let (Msg::Chunk(c), "corrupt-chunk") = (msg, f.as_str()) {
            // The first chunk goes out with one byte of its content flipped (sent uncompressed,
            // under its true id): only the BLAKE3 check can catch it.
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                if let Ok(mut raw) = zap_chunker::decode_chunk(&c.id, c.compression, c.raw_len as usize, &c.data) {
                    raw[0] ^= 0x40;
                    body = encode_body(&Msg::Chunk(Chunk { id: c.id, raw_len: c.raw_len, compression: Compression::None, data: raw }));
                }
            });
        }
        if f == format!("truncate@{kind:?}") {
            let mut h = header(kind, body.len());
            h.extend_from_slice(&body[..body.len() / 2]);
            ch.write(&h, &step)?;
            ch.flush(&step)?;
            return Err(mig_err(&step, "test hook", "message truncated on purpose (ZAP_MIGRATE_FAULT)"));
        }
    }
    if body.len() > kind.max_len() as usize {
        return Err(mig_err(&step, "message", format!("{} bytes is over the bound of {} for this kind", body.len(), kind.max_len())));
    }
    ch.write(&header(kind, body.len()), &step)?;
    ch.write(&body, &step)
}

/// After a failed write: the reason the peer gave before it closed, if it sent one.
pub fn peer_reason(ch: &mut Channel) -> Option<MigrateError> {
    ch.timeout = std::time::Duration::from_secs(2);
    match recv(ch, "read the peer's reason") {
        Err(e @ MigrateError::Peer { .. }) => Some(e),
        _ => None,
    }
}

fn header(kind: Kind, len: usize) -> Vec<u8> {
    let mut h = vec![kind as u8, 0, 0, 0];
    h.extend_from_slice(&(len as u32).to_be_bytes());
    h
}

/// Sends everything queued.
pub fn flush(ch: &mut Channel) -> Result<()> {
    ch.flush("send")
}

/// Receives the next message; `step` names what we wait for in errors.
pub fn recv(ch: &mut Channel, step: &str) -> Result<Msg> {
    let mut h = [0u8; 8];
    ch.read_exact(&mut h, step)?;
    let kind = Kind::from_u8(h[0]).ok_or_else(|| MigrateError::Corrupt { step: step.to_string(), detail: format!("unknown message kind {}", h[0]) })?;
    if h[1] != 0 || h[2] != 0 || h[3] != 0 {
        return Err(MigrateError::Corrupt { step: step.to_string(), detail: format!("reserved header bytes set in a {kind:?} message") });
    }
    let len = u32::from_be_bytes(h[4..8].try_into().expect("4"));
    if len > kind.max_len() {
        return Err(MigrateError::Corrupt { step: step.to_string(), detail: format!("{kind:?} message of {len} bytes is over its bound {}", kind.max_len()) });
    }
    let mut body = vec![0u8; len as usize];
    ch.read_exact(&mut body, step)?;
    let msg = decode_body(kind, &body)?;
    if let Msg::Failed(f) = &msg {
        return Err(MigrateError::Peer { step: f.step.clone(), detail: f.detail.clone() });
    }
    Ok(msg)
}

/// Fails with a clear message when `got` is not what `step` expected.
pub fn unexpected(step: &str, got: &Msg) -> MigrateError {
    MigrateError::Corrupt { step: step.to_string(), detail: format!("unexpected {:?} message", got.kind()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let c = zap_chunker::chunk_run(0, &vec![7u8; 8192], &Default::default()).remove(0).chunk.unwrap();
        let msgs = vec![
            Msg::Ids(vec![c.id, ChunkId([1; 32])]),
            Msg::Need(vec![true, false]),
            Msg::Chunk(c.clone()),
            Msg::MemberEnd(42),
            Msg::Commit,
            Msg::Answer(Answer::Committed),
            Msg::Put(Put { vpid: 3, extents: vec![Extent { start: 4096, len: 4096, data: zap_store::ExtentData::Zero }] }),
        ];
        for m in msgs {
            let k = m.kind();
            let back = decode_body(k, &encode_body(&m)).unwrap();
            assert_eq!(format!("{m:?}"), format!("{back:?}"));
        }
        assert_eq!(decode_chunk(&c).unwrap(), vec![7u8; 8192]);
        let mut bad = c.clone();
        let last = bad.data.len() - 1;
        bad.data[last] ^= 1;
        assert!(decode_chunk(&bad).is_err(), "a flipped byte is caught");
        assert!(Kind::from_u8(99).is_none());
    }
}
