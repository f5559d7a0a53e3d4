//! Socket kinds in pods, each a small C program of `engine/tests/progs/` that sets its sockets up,
//! says "ready", and after the restore checks them itself and says "ok" or "FAIL <why>": socket
//! options on every kind, messages in flight on unix sockets (fds, credentials, sender
//! addresses), unix socket corner cases (names, backlogs, half-closed pairs), the credentials
//! unix sockets show their peers (`SO_PEERCRED`), and ICMP, raw,
//! packet and netlink sockets. Each pod is checkpointed (it ends), restored and checked; kinds
//! Zap refuses must fail the checkpoint with a clear error and leave the pod running.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn name(tag: &str) -> String {
    pod_name("ks", tag)
}

/// A test program running in a pod of its own.
struct Kind<'a> {
    e: &'a Env,
    pod: String,
    out: PathBuf,
    go: PathBuf,
}

impl Kind<'_> {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_verdict(&self) -> String {
        assert!(wait_for(Duration::from_secs(20), || self.text().contains("ok") || self.text().contains("FAIL")), "no verdict: {}", self.text());
        self.text()
    }
}

/// Starts `prog` (with `args` after the output and go files) in a new pod and waits for "ready";
/// None when the program cannot be built.
fn start<'a>(e: &'a Env, prog: &str, tag: &str, args: &[&str]) -> Option<Kind<'a>> {
    let bin = build_prog(prog, &e.work, &[])?;
    let k = Kind { e, pod: name(tag), out: e.work.join(format!("{tag}.out")), go: e.work.join(format!("{tag}.go")) };
    let mut a = vec!["run", "--name", &k.pod, "--", bin.to_str().unwrap(), k.out.to_str().unwrap(), k.go.to_str().unwrap()];
    a.extend_from_slice(args);
    ok(e, &a);
    assert!(wait_for(Duration::from_secs(10), || k.text().contains("ready") || k.text().contains("FAIL")), "no ready: {}", k.text());
    assert!(!k.text().contains("FAIL"), "setup failed: {}", k.text());
    Some(k)
}

/// Checkpoints the pod (it ends), restores it, lets the program check itself; returns its output.
fn checkpoint_restore_check(k: &Kind<'_>) -> String {
    let before = pod_procs(k.e, &k.pod);
    let id = ok(k.e, &["checkpoint", &k.pod]).trim().to_string();
    assert!(!ok(k.e, &["ps"]).lines().any(|l| l.starts_with(&format!("{} ", k.pod))), "the checkpointed pod is gone");
    ok(k.e, &["restore", &id]);
    assert_eq!(pod_procs(k.e, &k.pod), before, "same processes with the same pids");
    std::fs::write(&k.go, b"go").unwrap();
    k.wait_verdict()
}

fn run_kind(prog: &str, tag: &str, args: &[&str]) {
    let e = env();
    let Some(k) = start(&e, prog, tag, args) else { return };
    let _g = PodGuard(&e, k.pod.clone());
    let text = checkpoint_restore_check(&k);
    assert!(!text.contains("FAIL"), "{prog}: {text}");
    assert!(text.contains("ok"), "{prog}: {text}");
}

/// The checkpoint of a pod running `prog` must fail naming `expect`, and the pod go on.
fn refused_kind(prog: &str, tag: &str, args: &[&str], expect: &str) {
    let e = env();
    let Some(k) = start(&e, prog, tag, args) else { return };
    let _g = PodGuard(&e, k.pod.clone());
    let out = zap(&e, &["checkpoint", &k.pod]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "checkpoint should be refused");
    assert!(err.contains(expect), "error names the cause ({expect}): {err}");
    assert!(ok(&e, &["ps"]).lines().any(|l| l.starts_with(&format!("{} ", k.pod))), "the pod is still there");
    std::fs::write(&k.go, b"go").unwrap();
    let text = k.wait_verdict();
    assert!(text.contains("ok") && !text.contains("FAIL"), "the pod runs on untouched: {text}");
}

#[test]
fn socket_options_on_every_kind() {
    run_kind("sockopts", "opts", &[]);
}

#[test]
fn ebpf_socket_filter_is_refused() {
    refused_kind("sockopts", "ebpf", &["ebpf"], "eBPF socket filter");
}

#[test]
fn unix_messages_in_flight_with_fds_and_credentials() {
    run_kind("unixmsg", "msg", &[]);
}

#[test]
fn unix_names_backlogs_and_half_closed_pairs() {
    run_kind("unixnames", "names", &[]);
}

#[test]
fn unix_connection_written_before_accept_is_refused() {
    refused_kind("unixnames", "early", &["backlog-data"], "written before it was accepted");
}

#[test]
fn icmp_raw_packet_and_netlink_sockets() {
    run_kind("rawsocks", "raw", &[]);
}

#[test]
fn netlink_socket_of_another_protocol_is_refused() {
    refused_kind("rawsocks", "nlother", &["netlink-other"], "netlink socket of protocol 4");
}

#[test]
fn unix_socket_connected_outside_the_pod_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outside.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    refused_kind("unixnames", "outside", &["outside", path.to_str().unwrap()], "connected to a process outside the checkpoint (peer socket");
    drop(listener);
}

#[test]
fn unsupported_fd_in_flight_is_refused() {
    refused_kind("unixmsg", "uffd", &["uffd"], "passed in message 0 queued on the unix socket");
}

#[test]
fn unix_peer_credentials_come_back() {
    // SO_PEERCRED on both ends of a pair made by a process of another user that then forked, on
    // a connection from another user's process to a listener, and on the listener; checkpointed
    // and restored twice, so the second checkpoint saves what the first restore made.
    let e = env();
    let Some(k) = start(&e, "peercred", "cred", &[]) else { return };
    let _g = PodGuard(&e, k.pod.clone());
    let before = pod_procs(&e, &k.pod);
    for _ in 0..2 {
        let id = ok(&e, &["checkpoint", &k.pod]).trim().to_string();
        ok(&e, &["restore", &id]);
        assert_eq!(pod_procs(&e, &k.pod), before, "same processes with the same pids");
    }
    std::fs::write(&k.go, b"go").unwrap();
    let text = k.wait_verdict();
    assert!(!text.contains("FAIL") && text.contains("ok"), "peercred: {text}");
}
