//! The secure channel: a versioned preamble, a Noise handshake with static keys, then records
//! encrypted and authenticated with the handshake's keys, over any byte stream.
//!
//! ```text
//!  both sides, plaintext:  "ZAPMIG" u16-BE version                   (8 bytes, sent at once)
//!  source → destination:   u16-BE len | Noise IK message 1           (e, es, s, ss)
//!  destination → source:   u16-BE len | Noise IK message 2           (e, ee, se)
//!  then, both ways:        u16-BE len | AES-256-GCM record           (≤ 65535 bytes, 16-byte tag)
//!                          u16-BE 0                                  (keepalive, no record; v2)
//! ```
//! Noise pattern `IK` with X25519, AES-GCM and BLAKE2s (`Noise_IK_25519_AESGCM_BLAKE2s`,
//! implemented by the `snow` crate): the source (initiator) knows the destination's static key
//! beforehand (`--peer-key`, or the host's known destinations) and sends its own static key
//! encrypted in message 1. The destination checks it against its accepted keys *before it
//! answers*: a source it does not accept gets no message 2, the connection is closed and nothing
//! it sent is read further. A destination without the expected private key cannot produce a
//! message 2 the source can decrypt. The prologue binds both preambles into the handshake.
//! Records after the handshake are a byte stream for [`super::wire`]; a flipped, dropped or
//! reordered byte fails the record's tag, and the channel is dead from then on.
//!
//! Liveness: once the channel is up, a thread of each side sends a keepalive (an empty frame,
//! outside the record layer) whenever it wrote nothing for [`KEEPALIVE`], however long the side's
//! own work takes (reading a large process, applying a round). A read that sees no byte at all,
//! not even a keepalive, for [`Channel::silence`] (10 s unless `$ZAP_MIGRATE_SILENCE_MS`) fails:
//! the link is cut or the peer is gone, and the side gives up and cleans up within seconds instead
//! of waiting for TCP or a pipe to say so (a cut link says nothing). A peer that sends keepalives
//! but no record for [`Channel::timeout`] (120 s unless `$ZAP_MIGRATE_TIMEOUT_MS`) is treated as
//! hung. A keepalive carries nothing: forging one can only delay the detection of a dead link,
//! never change what the records say.
//!
//! Writes are bounded the same way: the writing half of every stream ([`Out`]) is non-blocking
//! and a write waits with `poll` for the stream to take more. A stream that takes no byte for
//! [`Channel::silence`] (a `--via` command or an ssh whose reader stopped reading, a peer stuck
//! in a step, a link whose buffers stay full) fails the write with an error naming the step,
//! instead of blocking the side for as long as the peer stays stuck (before: without bound, a
//! source frozen in its final round included). The keepalive thread never waits: it writes only
//! what the stream takes at once and leaves the rest of its frame for the next write.
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::keys::{KeyPair, PublicKey};
use super::{mig_err, MigrateError, Result};

/// The migration protocol version, sent in the preamble. Bumped by any change of the handshake,
/// the record layer or the messages ([`super::wire`]). 2: keepalive frames.
pub const PROTOCOL_VERSION: u16 = 3;
/// A side that wrote nothing for this long sends a keepalive.
pub const KEEPALIVE: Duration = Duration::from_millis(1000);
const MAGIC: &[u8; 6] = b"ZAPMIG";
const NOISE: &str = "Noise_IK_25519_AESGCM_BLAKE2s";
/// Largest Noise message.
const MAX_RECORD: usize = 65535;
const TAG: usize = 16;
/// Plaintext bytes per record.
const MAX_PLAIN: usize = MAX_RECORD - TAG;

/// The Noise parameters.
pub fn params() -> snow::params::NoiseParams {
    NOISE.parse().expect("valid Noise parameters")
}

/// The two halves of a byte stream (a child's pipes, a TCP connection).
pub struct Stream {
    /// Where we read from.
    pub reader: Box<dyn Read + Send>,
    /// A duplicate of its fd, polled before each read (for the timeout).
    pub read_fd: OwnedFd,
    /// Where we write to.
    pub writer: Out,
}

/// The writing half of a stream: its descriptor in non-blocking mode, written with `poll` and
/// a bound on how long the stream may take nothing (module doc). Unbuffered: the channel writes
/// whole records (up to 64 KiB), one `write` each.
pub struct Out {
    file: std::fs::File,
    /// The rest of a keepalive frame the stream did not take at once: it goes out before
    /// anything else, so frames never interleave.
    pending: Vec<u8>,
    /// What the descriptor is, for errors.
    what: &'static str,
}

impl Out {
    /// Takes `fd` (a pipe, a socket) for writing and makes it non-blocking.
    pub fn new(fd: OwnedFd) -> std::io::Result<Out> {
        crate::sys::fdio::set_nonblocking(fd.as_fd())?;
        let file = std::fs::File::from(fd);
        let what = match file.metadata().map(|m| m.file_type()) {
            Ok(t) if t.is_fifo() => "pipe",
            Ok(t) if t.is_socket() => "socket",
            _ => "stream",
        };
        Ok(Out { file, pending: Vec::new(), what })
    }

    /// Writes all of `data` (after a pending keepalive's rest), waiting while the stream is
    /// full; fails when it took no byte for `stall`.
    pub fn write_all(&mut self, data: &[u8], stall: Duration, step: &str) -> Result<()> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.push(&pending, stall, step)?;
        }
        self.push(data, stall, step)
    }

    /// Sends a pending keepalive's rest, waiting as [`Out::write_all`] does.
    pub fn flush(&mut self, stall: Duration, step: &str) -> Result<()> {
        self.write_all(&[], stall, step)
    }

    fn push(&mut self, mut data: &[u8], stall: Duration, step: &str) -> Result<()> {
        let mut progress = Instant::now();
        while !data.is_empty() {
            match (&self.file).write(data) {
                Ok(0) => return Err(MigrateError::Link { step: step.to_string(), detail: format!("the {} takes no more bytes", self.what) }),
                Ok(n) => {
                    data = &data[n..];
                    progress = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let left = stall.saturating_sub(progress.elapsed());
                    let ready = !left.is_zero()
                        && crate::sys::fdio::poll_writable(self.file.as_fd(), left.as_millis().clamp(1, i32::MAX as u128) as i32)
                            .map_err(|e| MigrateError::Link { step: step.to_string(), detail: format!("wait for the {}: {e}", self.what) })?;
                    if !ready && progress.elapsed() >= stall {
                        return Err(MigrateError::Link {
                            step: step.to_string(),
                            detail: format!(
                                "the peer took no byte for {:.1} s with {} bytes left to write (its reader stopped reading: the peer or the {} is stuck)",
                                stall.as_secs_f64(),
                                data.len(),
                                self.what
                            ),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Err(MigrateError::Link { step: step.to_string(), detail: format!("the peer closed the connection ({})", self.what) })
                }
                Err(e) => return Err(MigrateError::Link { step: step.to_string(), detail: e.to_string() }),
            }
        }
        Ok(())
    }

    /// A keepalive frame, written only as far as the stream takes it now (never waits); the
    /// rest stays pending. Err: the stream is broken.
    fn try_keepalive(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            self.pending.extend_from_slice(&[0, 0]);
        }
        while !self.pending.is_empty() {
            match (&self.file).write(&self.pending) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => drop(self.pending.drain(..n)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The writing half of an established channel, shared with its keepalive thread.
type SharedWriter = Arc<Mutex<Out>>;

/// What the keepalive thread of a channel shares with it.
struct Beat {
    /// The channel is gone (or keepalives were stopped): the thread ends.
    stop: AtomicBool,
    /// When the channel last wrote, ms since `started`.
    last_write_ms: AtomicU64,
    started: Instant,
}

impl Beat {
    fn wrote(&self) {
        self.last_write_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// An established channel.
pub struct Channel {
    reader: Box<dyn Read + Send>,
    read_fd: OwnedFd,
    writer: SharedWriter,
    beat: Arc<Beat>,
    noise: snow::TransportState,
    /// Decrypted bytes not consumed yet.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Plaintext waiting for a record.
    wbuf: Vec<u8>,
    /// How long a read may wait for a record (keepalives do not count).
    pub timeout: Duration,
    /// How long a read may see no byte at all (keepalives count).
    pub silence: Duration,
    /// The peer's static key.
    pub peer: PublicKey,
    /// Bytes written to the stream (records and headers).
    pub sent_bytes: u64,
    /// Bytes read from the stream.
    pub recv_bytes: u64,
    /// Most bytes per second to write (`--bandwidth`).
    pub rate_limit: Option<u64>,
    started: std::time::Instant,
    scratch: Vec<u8>,
}

fn default_timeout() -> Duration {
    let ms = std::env::var("ZAP_MIGRATE_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(120_000);
    Duration::from_millis(ms)
}

fn default_silence() -> Duration {
    let ms = std::env::var("ZAP_MIGRATE_SILENCE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    Duration::from_millis(ms)
}

/// How long a read may wait: until something arrives (`silence`), within the record's deadline.
#[derive(Clone, Copy)]
struct Wait {
    silence: Duration,
    deadline: Instant,
    /// The deadline's length, for the error.
    timeout: Duration,
}

impl Wait {
    fn plain(timeout: Duration) -> Wait {
        Wait { silence: timeout, deadline: Instant::now() + timeout, timeout }
    }
}

fn wait_readable(fd: &OwnedFd, w: Wait, step: &str) -> Result<()> {
    let left = w.deadline.saturating_duration_since(Instant::now());
    let (limit, hung) = if left < w.silence { (left, true) } else { (w.silence, false) };
    match crate::sys::ns::poll_readable(fd.as_fd(), limit.as_millis().min(i32::MAX as u128) as i32) {
        Ok(true) => Ok(()),
        Ok(false) if hung && w.silence < w.timeout => {
            Err(MigrateError::Link { step: step.to_string(), detail: format!("the peer sent only keepalives for {} s (it is hung)", w.timeout.as_secs()) })
        }
        Ok(false) if w.silence < w.timeout => Err(MigrateError::Link {
            step: step.to_string(),
            detail: format!("nothing arrived for {:.1} s, not even a keepalive (the link is cut or the peer is gone)", limit.as_secs_f64()),
        }),
        Ok(false) => Err(MigrateError::Link { step: step.to_string(), detail: format!("the peer sent nothing for {} s", limit.as_secs()) }),
        Err(e) => Err(MigrateError::Link { step: step.to_string(), detail: e.to_string() }),
    }
}

fn read_full(reader: &mut dyn Read, fd: &OwnedFd, buf: &mut [u8], w: Wait, step: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        wait_readable(fd, w, step)?;
        match reader.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(MigrateError::Link {
                    step: step.to_string(),
                    detail: if got == 0 { "the peer closed the connection".into() } else { format!("the peer closed the connection after {got} of {} bytes", buf.len()) },
                })
            }
            Ok(n) => got += n,
            // A socket shares its non-blocking mode with its writing half ([`Out`]).
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock) => {}
            Err(e) => return Err(MigrateError::Link { step: step.to_string(), detail: e.to_string() }),
        }
    }
    Ok(())
}


fn preamble() -> [u8; 8] {
    let mut p = [0u8; 8];
    p[..6].copy_from_slice(MAGIC);
    p[6..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    p
}

/// Sends our preamble and checks the peer's.
fn exchange_preamble(stream: &mut Stream, timeout: Duration) -> Result<()> {
    let step = "handshake: protocol version";
    stream.writer.write_all(&preamble(), default_silence().min(timeout), step)?;
    let mut theirs = [0u8; 8];
    read_full(&mut stream.reader, &stream.read_fd, &mut theirs, Wait::plain(timeout), step)?;
    if &theirs[..6] != MAGIC {
        return Err(mig_err(step, "peer", format!("not a zap migration peer (it sent {:?})", String::from_utf8_lossy(&theirs))));
    }
    let v = u16::from_be_bytes([theirs[6], theirs[7]]);
    if v != PROTOCOL_VERSION {
        return Err(MigrateError::Version { ours: PROTOCOL_VERSION, theirs: v });
    }
    Ok(())
}

/// Reads the next frame, skipping keepalives (empty frames). Returns it and the bytes read.
fn read_frame(reader: &mut dyn Read, fd: &OwnedFd, w: Wait, step: &str) -> Result<(Vec<u8>, u64)> {
    let mut len = [0u8; 2];
    let mut total = 0;
    loop {
        read_full(reader, fd, &mut len, w, step)?;
        total += 2;
        let n = u16::from_be_bytes(len) as usize;
        if n == 0 {
            continue;
        }
        let mut msg = vec![0u8; n];
        read_full(reader, fd, &mut msg, w, step)?;
        return Ok((msg, total + n as u64));
    }
}

fn handshake_frame(stream: &mut Stream, timeout: Duration, step: &str) -> Result<Vec<u8>> {
    let (msg, _) = read_frame(&mut stream.reader, &stream.read_fd, Wait::plain(timeout), step)?;
    Ok(msg)
}

fn write_frame(stream: &mut Stream, msg: &[u8], step: &str) -> Result<()> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    stream.writer.write_all(&out, default_silence().min(default_timeout()), step)
}

/// Sends a keepalive on `writer` whenever the channel wrote nothing for [`KEEPALIVE`], until
/// `beat.stop`. It never waits, neither for the channel's own writes (a writer busy is a writer
/// alive) nor for a full stream ([`Out`]: what the stream does not take now goes out later), and
/// is not joined. It holds the writer only while it writes, so dropping the channel closes the
/// stream at once.
fn spawn_keepalive(writer: std::sync::Weak<Mutex<Out>>, beat: Arc<Beat>) {
    let tick = KEEPALIVE / 4;
    let r = std::thread::Builder::new().name("zap-keepalive".into()).spawn(move || {
        while !beat.stop.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            let idle = beat.started.elapsed().as_millis() as u64 - beat.last_write_ms.load(Ordering::Relaxed);
            if idle < KEEPALIVE.as_millis() as u64 || beat.stop.load(Ordering::Relaxed) {
                continue;
            }
            let Some(writer) = writer.upgrade() else { return };
            let Ok(mut w) = writer.try_lock() else { continue };
            if w.try_keepalive().is_err() {
                return; // the link is gone: the channel's own reads and writes say so
            }
            beat.wrote();
        }
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "no keepalive thread: a cut link is noticed only after the channel's timeout");
    }
}

fn noise_err(step: &str, e: snow::Error) -> MigrateError {
    MigrateError::Auth { step: step.to_string(), detail: e.to_string() }
}

impl Channel {
    /// The source's side: preamble, then Noise IK as initiator towards `peer`.
    pub fn initiate(mut stream: Stream, me: &KeyPair, peer: PublicKey) -> Result<Channel> {
        let timeout = default_timeout();
        exchange_preamble(&mut stream, timeout)?;
        let prologue = [preamble(), preamble()].concat();
        let mut hs = snow::Builder::new(params())
            .local_private_key(&me.private)
            .and_then(|b| b.remote_public_key(&peer.0))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .map_err(|e| noise_err("handshake: set up", e))?;
        let mut buf = vec![0u8; MAX_RECORD];
        let n = hs.write_message(&[], &mut buf).map_err(|e| noise_err("handshake: message 1", e))?;
        write_frame(&mut stream, &buf[..n], "handshake: send message 1")?;
        let reply = handshake_frame(&mut stream, timeout, "handshake: wait for the destination's answer").map_err(|e| match e {
            MigrateError::Link { step, detail } => MigrateError::Auth {
                step,
                detail: format!(
                    "{detail}: either the destination does not accept this host's key {me} (run `zap key allow {me}` there), \
                     or it is not the host of key {peer} (check --peer-key)",
                    me = me.public
                ),
            },
            other => other,
        })?;
        hs.read_message(&reply, &mut buf).map_err(|_| MigrateError::Auth {
            step: "handshake: check the destination".into(),
            detail: format!("the destination does not hold the private key of {peer} (wrong --peer-key, or another host)"),
        })?;
        let noise = hs.into_transport_mode().map_err(|e| noise_err("handshake: finish", e))?;
        Ok(Channel::new(stream, noise, peer, timeout))
    }

    /// The destination's side: preamble, then Noise IK as responder. A source whose key is not in
    /// `accepted` gets no answer: the error says which key it was, and the caller drops the stream.
    pub fn accept(mut stream: Stream, me: &KeyPair, accepted: &[PublicKey]) -> Result<Channel> {
        let timeout = default_timeout();
        exchange_preamble(&mut stream, timeout)?;
        let prologue = [preamble(), preamble()].concat();
        let mut hs = snow::Builder::new(params())
            .local_private_key(&me.private)
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(|e| noise_err("handshake: set up", e))?;
        let first = handshake_frame(&mut stream, timeout, "handshake: wait for message 1")?;
        let mut buf = vec![0u8; MAX_RECORD];
        hs.read_message(&first, &mut buf).map_err(|_| MigrateError::Auth {
            step: "handshake: message 1".into(),
            detail: format!("the source did not address this host's key {} (its --peer-key is another host's)", me.public),
        })?;
        let peer = hs
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .map(PublicKey)
            .ok_or_else(|| MigrateError::Auth { step: "handshake: message 1".into(), detail: "no static key".into() })?;
        if !accepted.contains(&peer) {
            return Err(MigrateError::Auth {
                step: "handshake: authenticate the source".into(),
                detail: format!("key {peer} is not accepted here (zap key allow {peer})"),
            });
        }
        let n = hs.write_message(&[], &mut buf).map_err(|e| noise_err("handshake: message 2", e))?;
        write_frame(&mut stream, &buf[..n], "handshake: send message 2")?;
        let noise = hs.into_transport_mode().map_err(|e| noise_err("handshake: finish", e))?;
        Ok(Channel::new(stream, noise, peer, timeout))
    }

    fn new(stream: Stream, noise: snow::TransportState, peer: PublicKey, timeout: Duration) -> Self {
        let Stream { reader, read_fd, writer } = stream;
        let writer: SharedWriter = Arc::new(Mutex::new(writer));
        let beat = Arc::new(Beat { stop: AtomicBool::new(false), last_write_ms: AtomicU64::new(0), started: Instant::now() });
        spawn_keepalive(Arc::downgrade(&writer), beat.clone());
        Channel {
            reader,
            read_fd,
            writer,
            beat,
            noise,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::with_capacity(MAX_PLAIN),
            timeout,
            silence: default_silence(),
            peer,
            sent_bytes: 0,
            recv_bytes: 0,
            rate_limit: None,
            started: std::time::Instant::now(),
            scratch: vec![0u8; MAX_RECORD + 2],
        }
    }

    fn seal_record(&mut self, step: &str) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let n = self
            .noise
            .write_message(&self.wbuf, &mut self.scratch[2..])
            .map_err(|e| mig_err(step, "record", format!("encrypt: {e}")))?;
        self.scratch[..2].copy_from_slice(&(n as u16).to_be_bytes());
        self.write_out(n + 2, step)?;
        self.sent_bytes += n as u64 + 2;
        self.wbuf.clear();
        if let Some(rate) = self.rate_limit.filter(|&r| r > 0) {
            // Never ahead of the allowed rate: sleep until the bytes sent so far are due.
            let due = Duration::from_secs_f64(self.sent_bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }

    /// Writes the first `len` bytes of the scratch buffer (one whole frame: a keepalive never
    /// lands inside it).
    fn write_out(&mut self, len: usize, step: &str) -> Result<()> {
        let stall = self.stall();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let r = w.write_all(&self.scratch[..len], stall, step);
        self.beat.wrote();
        r
    }

    /// How long a write may wait for the stream to take a byte: the read side's silence.
    fn stall(&self) -> Duration {
        self.silence.min(self.timeout)
    }

    /// Stops the keepalives (test hook: the side falls silent as behind a cut link).
    pub fn stop_keepalive(&self) {
        self.beat.stop.store(true, Ordering::Relaxed);
    }

    /// Queues `data` (records go out as they fill; [`Channel::flush`] sends the rest).
    pub fn write(&mut self, mut data: &[u8], step: &str) -> Result<()> {
        while !data.is_empty() {
            let take = (MAX_PLAIN - self.wbuf.len()).min(data.len());
            self.wbuf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.wbuf.len() == MAX_PLAIN {
                self.seal_record(step)?;
            }
        }
        Ok(())
    }

    /// Sends everything queued.
    pub fn flush(&mut self, step: &str) -> Result<()> {
        self.seal_record(step)?;
        let stall = self.stall();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.flush(stall, step)
    }

    /// Reads exactly `out.len()` bytes.
    pub fn read_exact(&mut self, out: &mut [u8], step: &str) -> Result<()> {
        let mut got = 0;
        while got < out.len() {
            if self.rpos == self.rbuf.len() {
                let w = Wait { silence: self.silence.min(self.timeout), deadline: Instant::now() + self.timeout, timeout: self.timeout };
                let (rec, read) = read_frame(&mut self.reader, &self.read_fd, w, step)?;
                self.recv_bytes += read;
                let mut plain = vec![0u8; rec.len()];
                let n = self.noise.read_message(&rec, &mut plain).map_err(|_| MigrateError::Corrupt {
                    step: step.to_string(),
                    detail: "a record failed its authentication tag (damaged or forged on the way)".into(),
                })?;
                plain.truncate(n);
                self.rbuf = plain;
                self.rpos = 0;
            }
            let take = (self.rbuf.len() - self.rpos).min(out.len() - got);
            out[got..got + take].copy_from_slice(&self.rbuf[self.rpos..self.rpos + take]);
            self.rpos += take;
            got += take;
        }
        Ok(())
    }

    /// Test hook: writes `bytes` raw onto the stream, outside any record (a peer then sees a
    /// damaged record).
    pub fn write_raw_for_test(&mut self, bytes: &[u8]) -> Result<()> {
        let stall = self.stall();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(bytes, stall, "test: raw bytes")
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.beat.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::keys::KeyFiles;
    use std::os::unix::net::UnixStream;

    fn stream(s: UnixStream) -> Stream {
        let fd = s.as_fd().try_clone_to_owned().unwrap();
        let w = s.try_clone().unwrap();
        Stream { reader: Box::new(s), read_fd: fd, writer: Out::new(OwnedFd::from(w)).unwrap() }
    }

    fn pair() -> (KeyPair, KeyPair, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyFiles::at(&dir.path().join("a"));
        let b = KeyFiles::at(&dir.path().join("b"));
        a.generate(false).unwrap();
        b.generate(false).unwrap();
        (a.load().unwrap(), b.load().unwrap(), dir)
    }

    #[test]
    fn handshake_and_records() {
        let (src, dst, _d) = pair();
        let (x, y) = UnixStream::pair().unwrap();
        let src_pub = src.public;
        let dst_pub = dst.public;
        let t = std::thread::spawn(move || {
            let mut c = Channel::accept(stream(y), &dst, &[src_pub]).unwrap();
            let mut buf = vec![0u8; 200_000];
            c.read_exact(&mut buf, "t").unwrap();
            assert!(buf.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            c.write(b"ok", "t").unwrap();
            c.flush("t").unwrap();
        });
        let mut c = Channel::initiate(stream(x), &src, dst_pub).unwrap();
        let data: Vec<u8> = (0..200_000).map(|i| (i % 251) as u8).collect();
        c.write(&data, "t").unwrap();
        c.flush("t").unwrap();
        let mut ok = [0u8; 2];
        c.read_exact(&mut ok, "t").unwrap();
        assert_eq!(&ok, b"ok");
        t.join().unwrap();
    }

    #[test]
    fn unknown_source_gets_no_answer() {
        let (src, dst, _d) = pair();
        let (x, y) = UnixStream::pair().unwrap();
        let dst_pub = dst.public;
        let t = std::thread::spawn(move || {
            let r = Channel::accept(stream(y), &dst, &[]);
            assert!(matches!(r, Err(MigrateError::Auth { .. })), "refused");
            // dropping the stream closes it without an answer
        });
        let r = Channel::initiate(stream(x), &src, dst_pub);
        let Err(e) = r else { panic!("accepted") };
        assert!(e.to_string().contains("zap key allow"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn wrong_destination_key_is_caught() {
        let (src, dst, _d) = pair();
        let (x, y) = UnixStream::pair().unwrap();
        let src_pub = src.public;
        let t = std::thread::spawn(move || Channel::accept(stream(y), &dst, &[src_pub]).map(|_| ()));
        let r = Channel::initiate(stream(x), &src, PublicKey([9; 32]));
        assert!(r.is_err());
        let _ = t.join();
    }

    /// An idle peer's keepalives keep the link alive (its silence is a hang only after the
    /// record timeout); a peer that stops sending anything is found out after `silence`.
    #[test]
    fn keepalives_and_silence() {
        let (src, dst, _d) = pair();
        let (x, y) = UnixStream::pair().unwrap();
        let src_pub = src.public;
        let dst_pub = dst.public;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let c = Channel::accept(stream(y), &dst, &[src_pub]).unwrap();
            // Alive but writing nothing: only keepalives go out, until told to fall silent.
            rx.recv().unwrap();
            c.stop_keepalive();
            rx.recv().unwrap();
            drop(c);
        });
        let mut c = Channel::initiate(stream(x), &src, dst_pub).unwrap();
        c.silence = Duration::from_millis(2500);
        c.timeout = Duration::from_millis(4000);
        let start = Instant::now();
        let e = c.read_exact(&mut [0u8; 1], "t").unwrap_err();
        assert!(e.to_string().contains("only keepalives"), "{e}");
        assert!(start.elapsed() >= Duration::from_millis(3900), "{:?}", start.elapsed());
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c.timeout = Duration::from_secs(60);
        let start = Instant::now();
        let e = c.read_exact(&mut [0u8; 1], "t").unwrap_err();
        assert!(e.to_string().contains("not even a keepalive"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    /// A stream whose reader takes nothing fails a write after the stall allowed, and a
    /// keepalive never waits (its frame stays pending and goes out first); a reader that is slow
    /// but keeps reading is waited for.
    #[test]
    fn writes_are_bounded_by_the_reader() {
        let (x, y) = UnixStream::pair().unwrap();
        let mut out = Out::new(OwnedFd::from(x)).unwrap();
        let t = Instant::now();
        let e = out.write_all(&vec![7u8; 8 << 20], Duration::from_millis(500), "t").unwrap_err();
        assert!(e.to_string().contains("took no byte for 0.5 s"), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(500) && t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let t = Instant::now();
        out.try_keepalive().unwrap();
        assert!(t.elapsed() < Duration::from_millis(100) && !out.pending.is_empty());
        // Drain what the failed write left in the socket, then read on slowly.
        let reader = std::thread::spawn(move || {
            let mut y = y;
            y.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match y.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            got
        });
        out.write_all(&[1, 2, 3], Duration::from_millis(500), "t").unwrap();
        out.write_all(&vec![9u8; 2 << 20], Duration::from_millis(500), "t").unwrap();
        drop(out);
        let got = reader.join().unwrap();
        // What the failed write got in, the keepalive, then the data in order.
        let tail = &got[got.len() - (2 << 20) - 5..];
        assert_eq!(&tail[..5], &[0, 0, 1, 2, 3]);
        assert!(tail[5..].iter().all(|&b| b == 9));
        assert!(got[..got.len() - (2 << 20) - 5].iter().all(|&b| b == 7));
    }

    #[test]
    fn other_version_is_named() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut other = b.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut p = preamble();
            p[7] = 9;
            other.write_all(&p).unwrap();
            let _keep = b;
            std::thread::sleep(Duration::from_millis(200));
        });
        let (src, _dst, _d) = pair();
        let e = Channel::initiate(stream(a), &src, PublicKey([1; 32])).err().expect("refused");
        assert!(matches!(e, MigrateError::Version { theirs: 9, .. }), "{e}");
    }
}
