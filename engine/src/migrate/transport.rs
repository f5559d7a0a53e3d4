//! Byte streams between the two sides. The protocol runs over any of them unchanged:
//!
//! - `ssh://[user@]host[:port]`: `ssh` (the user's own keys and configuration) runs
//!   `zap receive --stdio` on the host, like `zfs send | ssh host zfs receive`;
//! - `tcp://host:port`: a connection to `zap receive --listen ADDR:PORT`;
//! - `--via 'COMMAND'`: `sh -c COMMAND`, whose stdin and stdout reach a `zap receive --stdio`
//!   (the tests use `ip netns exec NS zap receive --stdio`).
//!
//! The command's stderr is ours, so the receiving side's messages show where `zap migrate` runs.
//! Every stream's writing half is non-blocking ([`Out`]): a peer that stops reading fails the
//! write after the channel's silence, whatever carries the bytes.
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};

use super::channel::{Out, Stream};
use super::{mig_err, Result};

/// Where the destination is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// `ssh://[user@]host[:port]`.
    Ssh {
        /// `[user@]host`.
        target: String,
        /// Port.
        port: Option<u16>,
    },
    /// `tcp://host:port`.
    Tcp(String),
    /// A command.
    Via(String),
}

impl Dest {
    /// Parses a destination (`via` is the `--via` command, if given).
    pub fn parse(dest: Option<&str>, via: Option<&str>) -> Result<Dest> {
        match (dest, via) {
            (_, Some(cmd)) => Ok(Dest::Via(cmd.to_string())),
            (Some(d), None) => {
                if let Some(rest) = d.strip_prefix("ssh://") {
                    let (target, port) = match rest.rsplit_once(':') {
                        Some((t, p)) => (t.to_string(), Some(p.parse::<u16>().map_err(|_| mig_err("parse destination", d, "bad port"))?)),
                        None => (rest.to_string(), None),
                    };
                    if target.is_empty() || target.starts_with('-') {
                        return Err(mig_err("parse destination", d, "no host"));
                    }
                    Ok(Dest::Ssh { target, port })
                } else if let Some(rest) = d.strip_prefix("tcp://") {
                    if !rest.contains(':') {
                        return Err(mig_err("parse destination", d, "tcp:// needs host:port"));
                    }
                    Ok(Dest::Tcp(rest.to_string()))
                } else {
                    Err(mig_err("parse destination", d, "expected ssh://[user@]host[:port], tcp://host:port, or --via 'COMMAND'"))
                }
            }
            (None, None) => Err(mig_err("parse destination", "-", "give a destination (ssh://, tcp://) or --via 'COMMAND'")),
        }
    }

    /// How the journal names it (to reconnect for `--recover`).
    pub fn label(&self) -> String {
        match self {
            Dest::Ssh { target, port: Some(p) } => format!("ssh://{target}:{p}"),
            Dest::Ssh { target, port: None } => format!("ssh://{target}"),
            Dest::Tcp(a) => format!("tcp://{a}"),
            Dest::Via(c) => format!("via:{c}"),
        }
    }

    /// Parses a journal label back.
    pub fn from_label(label: &str) -> Result<Dest> {
        match label.strip_prefix("via:") {
            Some(cmd) => Ok(Dest::Via(cmd.to_string())),
            None => Dest::parse(Some(label), None),
        }
    }
}

/// An open stream, and the child process behind it (reaped on drop).
pub struct Connection {
    /// The stream.
    pub stream: Option<Stream>,
    child: Option<Child>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        drop(self.stream.take());
        if let Some(mut c) = self.child.take() {
            // The stream is closed: the other side ends; give it a moment, then make sure.
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(mut cmd: Command, what: &str) -> Result<Connection> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| mig_err("connect", what, format!("start: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take().expect("piped");
    let read_fd = stdout.as_fd().try_clone_to_owned().map_err(|e| mig_err("connect", what, e))?;
    let writer = Out::new(OwnedFd::from(stdin)).map_err(|e| mig_err("connect", what, format!("the command's stdin: {e}")))?;
    Ok(Connection { stream: Some(Stream { reader: Box::new(stdout), read_fd, writer }), child: Some(child) })
}

/// Opens a stream to `dest`; `remote_zap` is the `zap` to run on an ssh host.
pub fn connect(dest: &Dest, remote_zap: &str) -> Result<Connection> {
    match dest {
        Dest::Via(c) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(c);
            spawn(cmd, c)
        }
        Dest::Ssh { target, port } => {
            let mut cmd = Command::new("ssh");
            cmd.args(["-o", "BatchMode=yes", "-T"]);
            if let Some(p) = port {
                cmd.arg("-p").arg(p.to_string());
            }
            cmd.arg(target).arg(format!("{remote_zap} receive --stdio"));
            spawn(cmd, &dest.label())
        }
        Dest::Tcp(addr) => {
            let s = std::net::TcpStream::connect(addr).map_err(|e| mig_err("connect", format!("tcp://{addr}"), e))?;
            tune_tcp(&s);
            let w = s.try_clone().map_err(|e| mig_err("connect", format!("tcp://{addr}"), e))?;
            let read_fd = s.as_fd().try_clone_to_owned().map_err(|e| mig_err("connect", format!("tcp://{addr}"), e))?;
            let writer = Out::new(OwnedFd::from(w)).map_err(|e| mig_err("connect", format!("tcp://{addr}"), e))?;
            Ok(Connection { stream: Some(Stream { reader: Box::new(s), read_fd, writer }), child: None })
        }
    }
}

/// A stream over this process's stdin and stdout (`zap receive --stdio`). Its stdout is made
/// non-blocking: nothing else of this process may write there (it is the stream).
pub fn stdio() -> Result<Stream> {
    let stdin = std::io::stdin();
    let read_fd = stdin.as_fd().try_clone_to_owned().map_err(|e| mig_err("open stdin", "fd 0", e))?;
    let out = std::io::stdout().as_fd().try_clone_to_owned().map_err(|e| mig_err("open stdout", "fd 1", e))?;
    let writer = Out::new(out).map_err(|e| mig_err("open stdout", "fd 1", e))?;
    Ok(Stream { reader: Box::new(std::fs::File::from(read_fd.try_clone().map_err(|e| mig_err("open stdin", "fd 0", e))?)), read_fd, writer })
}

/// Most time data written to a migration's TCP connection may stay unacknowledged (ms): a write
/// stuck on a cut link fails then instead of after TCP's own retries (~15 minutes). A receiver
/// that is slow but answers (a zero window) does not count.
pub const TCP_USER_TIMEOUT_MS: i32 = 30_000;

/// Sets up a migration's TCP connection: no Nagle delay, keepalive probes and
/// [`TCP_USER_TIMEOUT_MS`]. (Reads are bounded by the channel's own keepalives.)
pub fn tune_tcp(s: &std::net::TcpStream) {
    s.set_nodelay(true).ok();
    let Ok(fd) = s.as_fd().try_clone_to_owned() else { return };
    let opts = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1, "SO_KEEPALIVE"),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 5, "TCP_KEEPIDLE"),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 2, "TCP_KEEPINTVL"),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3, "TCP_KEEPCNT"),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS, "TCP_USER_TIMEOUT"),
    ];
    for (level, name, v, what) in opts {
        if let Err(e) = crate::sys::sock::setsockopt_int(&fd, level, name, v) {
            tracing::debug!(option = what, error = %e, "migration connection: socket option not set");
        }
    }
}

/// A stream over an accepted TCP connection.
pub fn tcp(s: std::net::TcpStream) -> Result<Stream> {
    tune_tcp(&s);
    let w = s.try_clone().map_err(|e| mig_err("accept", "tcp", e))?;
    let read_fd = s.as_fd().try_clone_to_owned().map_err(|e| mig_err("accept", "tcp", e))?;
    let writer = Out::new(OwnedFd::from(w)).map_err(|e| mig_err("accept", "tcp", e))?;
    Ok(Stream { reader: Box::new(s), read_fd, writer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(Dest::parse(Some("ssh://root@b:2222"), None).unwrap(), Dest::Ssh { target: "root@b".into(), port: Some(2222) });
        assert_eq!(Dest::parse(Some("ssh://b"), None).unwrap(), Dest::Ssh { target: "b".into(), port: None });
        assert_eq!(Dest::parse(Some("tcp://10.0.0.2:7070"), None).unwrap(), Dest::Tcp("10.0.0.2:7070".into()));
        assert!(Dest::parse(Some("tcp://nohost"), None).is_err());
        assert!(Dest::parse(Some("ftp://x"), None).is_err());
        assert!(Dest::parse(Some("ssh://-oProxyCommand=x"), None).is_err());
        let v = Dest::parse(None, Some("ip netns exec b zap receive --stdio")).unwrap();
        assert_eq!(Dest::from_label(&v.label()).unwrap(), v);
        let t = Dest::parse(Some("tcp://h:1"), None).unwrap();
        assert_eq!(Dest::from_label(&t.label()).unwrap(), t);
    }
}
