//! Host keys: static X25519 key pairs for the Noise handshake ([`super::channel`]).
//!
//! ```text
//!   <keys dir>/host.key        this host's private key, 64 hex digits (mode 0600)
//!   <keys dir>/host.pub        its public key, 64 hex digits
//!   <keys dir>/accepted        public keys whose holders may migrate pods *to* this host,
//!                              one per line: `HEX [comment]` (`#` starts a comment line)
//!   <keys dir>/known           destinations this host knows: `NAME HEX` (NAME as given to
//!                              `zap migrate`: `tcp://host:port`, `ssh://user@host`, or any word)
//! ```
//! The keys directory is `<root>/keys` on a host with a Zap root, else `/etc/zap/keys`
//! ([`crate::host::keys_dir`]). `zap key gen` makes the pair, `zap key allow` adds an accepted
//! key, `zap key trust NAME KEY` a known destination.
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{mig_err, Result};

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// A public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", &hex::encode(self.0)[..16])
    }
}

impl PublicKey {
    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let mut k = [0u8; KEY_LEN];
        hex::decode_to_slice(s.trim(), &mut k).ok()?;
        Some(PublicKey(k))
    }
}

/// This host's key pair.
pub struct KeyPair {
    /// The private key.
    pub private: [u8; KEY_LEN],
    /// The public key.
    pub public: PublicKey,
}

/// The files of a keys directory.
pub struct KeyFiles {
    dir: PathBuf,
}

impl KeyFiles {
    /// The keys of the current host ([`crate::host::keys_dir`]).
    pub fn host() -> Self {
        KeyFiles { dir: crate::host::keys_dir() }
    }

    /// The keys in `dir`.
    pub fn at(dir: &Path) -> Self {
        KeyFiles { dir: dir.to_path_buf() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn private_path(&self) -> PathBuf {
        self.dir.join("host.key")
    }

    fn mkdir(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| mig_err("create keys directory", self.dir.display(), e))
    }

    /// Makes this host's key pair; refuses to replace an existing one unless `force`.
    pub fn generate(&self, force: bool) -> Result<PublicKey> {
        let path = self.private_path();
        if path.exists() && !force {
            return Err(mig_err("generate host key", path.display(), "a key exists already (--force replaces it)"));
        }
        self.mkdir()?;
        let builder = snow::Builder::new(super::channel::params());
        let kp = builder.generate_keypair().map_err(|e| mig_err("generate host key", "X25519", e))?;
        let tmp = self.dir.join("host.key.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| mig_err("write host key", tmp.display(), e))?;
        writeln!(f, "{}", hex::encode(&kp.private)).map_err(|e| mig_err("write host key", tmp.display(), e))?;
        f.sync_all().map_err(|e| mig_err("write host key", tmp.display(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| mig_err("write host key", path.display(), e))?;
        let public = PublicKey(kp.public.as_slice().try_into().map_err(|_| mig_err("generate host key", "X25519", "bad public key length"))?);
        let pub_path = self.dir.join("host.pub");
        std::fs::write(&pub_path, format!("{public}\n")).map_err(|e| mig_err("write public key", pub_path.display(), e))?;
        Ok(public)
    }

    /// This host's key pair.
    pub fn load(&self) -> Result<KeyPair> {
        let path = self.private_path();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            mig_err("read host key", path.display(), format!("{e} (make one with `zap key gen`)"))
        })?;
        let mut private = [0u8; KEY_LEN];
        hex::decode_to_slice(text.trim(), &mut private).map_err(|_| mig_err("read host key", path.display(), "not 64 hex digits"))?;
        let public = public_of(&private)?;
        Ok(KeyPair { private, public })
    }

    fn read_lines(&self, file: &str) -> Result<Vec<String>> {
        let path = self.dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(t.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(mig_err("read", path.display(), e)),
        }
    }

    fn append(&self, file: &str, line: &str) -> Result<()> {
        self.mkdir()?;
        let path = self.dir.join(file);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| mig_err("open", path.display(), e))?;
        writeln!(f, "{line}").map_err(|e| mig_err("write", path.display(), e))
    }

    /// The keys accepted from sources.
    pub fn accepted(&self) -> Result<Vec<PublicKey>> {
        let path = self.dir.join("accepted");
        self.read_lines("accepted")?
            .iter()
            .map(|l| {
                let hex = l.split_whitespace().next().unwrap_or_default();
                PublicKey::parse(hex).ok_or_else(|| mig_err("read accepted keys", path.display(), format!("bad key {hex:?}")))
            })
            .collect()
    }

    /// Accepts `key` (with a comment) from now on.
    pub fn allow(&self, key: PublicKey, comment: &str) -> Result<()> {
        if self.accepted()?.contains(&key) {
            return Ok(());
        }
        self.append("accepted", format!("{key} {comment}").trim_end())
    }

    /// The key recorded for destination `name`, if any.
    pub fn known(&self, name: &str) -> Result<Option<PublicKey>> {
        let path = self.dir.join("known");
        for l in self.read_lines("known")? {
            let mut it = l.split_whitespace();
            if it.next() == Some(name) {
                let hex = it.next().unwrap_or_default();
                return PublicKey::parse(hex).map(Some).ok_or_else(|| mig_err("read known destinations", path.display(), format!("bad key for {name}")));
            }
        }
        Ok(None)
    }

    /// Records `key` as destination `name`'s.
    pub fn trust(&self, name: &str, key: PublicKey) -> Result<()> {
        if name.split_whitespace().count() != 1 {
            return Err(mig_err("trust destination", name, "a destination name is one word"));
        }
        if let Some(k) = self.known(name)? {
            if k == key {
                return Ok(());
            }
            return Err(mig_err("trust destination", name, format!("already known with another key {k} (edit {})", self.dir.join("known").display())));
        }
        self.append("known", &format!("{name} {key}"))
    }
}

/// The public key of `private`.
pub fn public_of(private: &[u8; KEY_LEN]) -> Result<PublicKey> {
    // X25519: the public key is the private scalar times the base point, which snow computes
    // when it sets a local key; a handshake state exposes nothing, so derive it with the same
    // primitive through a throwaway DH.
    use snow::resolvers::CryptoResolver;
    let mut dh = snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .ok_or_else(|| mig_err("derive public key", "X25519", "no resolver"))?;
    dh.set(private);
    Ok(PublicKey(dh.pubkey().try_into().map_err(|_| mig_err("derive public key", "X25519", "bad length"))?))
}

/// Reads a key given on the command line: 64 hex digits, or the path of a file holding them
/// (a `host.pub`).
pub fn parse_key_arg(arg: &str) -> Result<PublicKey> {
    if let Some(k) = PublicKey::parse(arg) {
        return Ok(k);
    }
    let text = std::fs::read_to_string(arg).map_err(|e| mig_err("read key", arg, format!("neither 64 hex digits nor a readable file: {e}")))?;
    PublicKey::parse(text.split_whitespace().next().unwrap_or_default()).ok_or_else(|| mig_err("read key", arg, "the file does not start with 64 hex digits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_allow_trust() {
        let dir = tempfile::tempdir().unwrap();
        let k = KeyFiles::at(dir.path());
        let public = k.generate(false).unwrap();
        assert!(k.generate(false).is_err(), "no silent replacement");
        let pair = k.load().unwrap();
        assert_eq!(pair.public, public);
        let other = PublicKey([7; 32]);
        assert!(k.accepted().unwrap().is_empty());
        k.allow(other, "host b").unwrap();
        k.allow(other, "again").unwrap();
        assert_eq!(k.accepted().unwrap(), vec![other]);
        assert_eq!(k.known("tcp://b:7070").unwrap(), None);
        k.trust("tcp://b:7070", other).unwrap();
        assert_eq!(k.known("tcp://b:7070").unwrap(), Some(other));
        assert!(k.trust("tcp://b:7070", public).is_err());
        assert_eq!(parse_key_arg(&other.to_string()).unwrap(), other);
        assert_eq!(parse_key_arg(dir.path().join("host.pub").to_str().unwrap()).unwrap(), public);
    }
}
