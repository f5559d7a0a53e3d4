//! Established TCP connections (and UDP queues) through checkpoint, restore, copies and rollback,
//! from the command line, on real programs in real pods: a keep-alive HTTP client in a network
//! namespace of the test's own, a 256 MiB echo stream checkpointed three times mid-way, queued
//! bytes both ways, CLOSE_WAIT and FIN_WAIT2, IPv6, a UDP queue, a pair inside the pod, redis with
//! a connected client, a single process (`--pid`), rollback, a connection that cannot be saved
//! (SYN_SENT), and a failure injected after the network lock.
mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn name(tag: &str) -> String {
    format!("tc{}-{tag}", std::process::id())
}

/// A /24 of our own for each test: 10.<a>.<pid-based>.0.
fn subnet(a: u8) -> String {
    format!("10.{a}.{}", 100 + std::process::id() % 100)
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// python3 and nft are needed by every test here.
fn tools() -> bool {
    for t in ["python3", "nft"] {
        if !have(t) {
            eprintln!("SKIP: {t} not installed (scripts/setup.sh installs it)");
            return false;
        }
    }
    true
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A child process this test started, killed (by pid) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A network namespace of the test's own, with a veth whose host end is on the pod bridge.
struct ClientNs {
    ns: String,
    veth: String,
}

impl ClientNs {
    /// Creates namespace `zt<pid><tag>` with `eth0` at `cidr`, its host end on `zap0` (which a
    /// running pod with an address has created).
    fn new(tag: char, cidr: &str) -> ClientNs {
        let ns = format!("zt{}{tag}", std::process::id());
        let veth = format!("{ns}h");
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["netns", "add", &ns]);
        let c = ClientNs { ns: ns.clone(), veth: veth.clone() };
        run(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        run(&["link", "set", &veth, "master", zap_engine::pod::net::BRIDGE, "up"]);
        run(&["netns", "exec", &ns, "ip", "addr", "add", cidr, "dev", "eth0"]);
        run(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"]);
        run(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        c
    }

    fn python(&self, script: &str, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "python3", "-c", script])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    }
}

impl Drop for ClientNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn connect_retry(addr: &str) -> TcpStream {
    let t = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(s) => return s,
            Err(e) if t.elapsed() > Duration::from_secs(15) => panic!("connect {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One request-reply on a line protocol: sends `msg`, reads until `want_len` bytes came.
fn roundtrip(c: &mut TcpStream, msg: &[u8], want_len: usize) -> Vec<u8> {
    c.write_all(msg).unwrap();
    let mut got = vec![0u8; want_len];
    c.read_exact(&mut got).unwrap();
    got
}

const HTTP_SERVER: &str = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    n = 0
    def do_GET(self):
        H.n += 1
        body = ('%d %s %d\n' % (H.n, self.path, self.client_address[1])).encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        print('handler error: %s %s' % (type(e).__name__, e), flush=True)
S(('0.0.0.0', 8080), H).serve_forever()
"#;

const HTTP_CLIENT: &str = r#"
import http.client, os, sys, time
host, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
out = open(log, 'a', buffering=1)
t0 = time.time()
while True:
    try:
        c = http.client.HTTPConnection(host, 8080, timeout=30)
        c.connect()
        break
    except OSError:
        if time.time() - t0 > 20:
            raise
        time.sleep(0.1)
try:
    for i in range(20000):
        if os.path.exists(stop) or time.time() - t0 > 120:
            break
        c.request('GET', '/%d' % i)
        r = c.getresponse()
        body = r.read().decode().split()
        out.write('%d %s %s %s %s\n' % (i, r.status, body[0], body[1], body[2]))
        time.sleep(0.02)
    out.write('done\n')
except Exception as e:
    out.write('ERROR %s %s\n' % (type(e).__name__, e))
"#;

/// A keep-alive HTTP client in another network namespace asks a pod every 20 ms while the pod is
/// checkpointed (ended) and restored, checkpointed with --leave-running, and restored as a copy
/// elsewhere: every response arrives, in order, on the one connection, without an error. The
/// copy's connection comes back closed (its handler sees ECONNABORTED) and the copy serves new
/// clients; the original's peer never hears from the copy.
#[test]
fn keepalive_http_client_in_another_namespace_sees_every_response() {
    if !tools() {
        return;
    }
    let e = env();
    let net = subnet(83);
    let (pod, copy) = (name("http"), name("httpcopy"));
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", HTTP_SERVER]);
    let _g = PodGuard(&e, pod.clone());
    let client_ns = ClientNs::new('h', &format!("{net}.200/24"));
    let (log, stop) = (e.work.join("client.log"), e.work.join("stop"));
    let _client = client_ns.python(HTTP_CLIENT, &[&format!("{net}.2"), log.to_str().unwrap(), stop.to_str().unwrap()]);
    let answered = || text(&log).lines().filter(|l| !l.starts_with("ERROR") && *l != "done").count();
    let progress = |n: usize, what: &str| {
        assert!(wait_for(Duration::from_secs(30), || answered() >= n), "client stalled {what}: {}", text(&log));
    };
    progress(20, "before the first checkpoint");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    progress(answered() + 20, "after the restore");
    let id2 = ok(&e, &["checkpoint", "--leave-running", &pod]).trim().to_string();
    progress(answered() + 20, "after checkpoint --leave-running");
    ok(&e, &["restore", &id2, "--name", &copy, "--ip", &format!("{net}.3/24")]);
    let _g2 = PodGuard(&e, copy.clone());
    let console = e.run.join(&copy).join("console.log");
    assert!(
        wait_for(Duration::from_secs(10), || text(&console).contains("handler error: ConnectionAbortedError")),
        "the copy's connection comes back closed with ECONNABORTED: {}",
        text(&console)
    );
    let mut fresh = connect_retry(&format!("{net}.3:8080"));
    fresh.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    fresh.write_all(b"GET /copy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = fresh.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains(" /copy "), "the copy serves a new client: {reply}");
    progress(answered() + 20, "after the copy was restored");
    std::fs::write(&stop, b"").unwrap();
    assert!(wait_for(Duration::from_secs(40), || text(&log).contains("done") || text(&log).contains("ERROR")), "{}", text(&log));
    let all = text(&log);
    assert!(!all.contains("ERROR"), "the client saw an error: {all}");
    let rows: Vec<Vec<&str>> = all.lines().filter(|l| *l != "done").map(|l| l.split_whitespace().collect()).collect();
    let port = rows[0][4];
    let first_n: u64 = rows[0][2].parse().unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], i.to_string(), "requests in order: {all}");
        assert_eq!(r[1], "200");
        assert_eq!(r[2].parse::<u64>().unwrap(), first_n + i as u64, "each request served once, in order: {all}");
        assert_eq!(r[3], format!("/{i}"), "the response to this very request");
        assert_eq!(r[4], port, "one connection throughout");
    }
    eprintln!("keep-alive client: {} responses on one connection", rows.len());
}

const ECHO_SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7171))
s.listen()
c, _ = s.accept()
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    c.sendall(d)
"#;

/// The byte at position `i` of the test stream.
fn stream_block(block: u64, buf: &mut [u8]) {
    let mut x = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// 256 MiB sent to a pod that echoes it back, while the pod is checkpointed and restored three
/// times mid-stream: every byte comes back once, in order (checked against the generator, and
/// with a running checksum on both sides).
#[test]
fn bulk_stream_survives_three_checkpoints() {
    if !tools() {
        return;
    }
    let e = env();
    let net = subnet(84);
    let pod = name("bulk");
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", ECHO_SERVER]);
    let _g = PodGuard(&e, pod.clone());
    const TOTAL: u64 = 256 << 20;
    const BLOCK: usize = 64 << 10;
    let conn = connect_retry(&format!("{net}.2:7171"));
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rd = conn.try_clone().unwrap();
    let mut wr = conn;
    let received = Arc::new(AtomicU64::new(0));
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; BLOCK];
        let mut sum = 0u64;
        for b in 0..TOTAL / BLOCK as u64 {
            stream_block(b, &mut buf);
            sum = buf.iter().fold(sum, |s, &x| s.wrapping_mul(31).wrapping_add(u64::from(x)));
            wr.write_all(&buf).expect("send");
        }
        sum
    });
    let got = received.clone();
    let reader = std::thread::spawn(move || {
        let (mut want, mut have) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
        let mut sum = 0u64;
        for b in 0..TOTAL / BLOCK as u64 {
            stream_block(b, &mut want);
            rd.read_exact(&mut have).unwrap_or_else(|e| panic!("read block {b}: {e}"));
            assert!(have == want, "block {b} differs (byte lost, duplicated or changed)");
            sum = have.iter().fold(sum, |s, &x| s.wrapping_mul(31).wrapping_add(u64::from(x)));
            got.fetch_add(BLOCK as u64, Ordering::Relaxed);
        }
        sum
    });
    let t0 = Instant::now();
    for k in 1..=3u64 {
        let at = TOTAL * k / 4;
        assert!(wait_for(Duration::from_secs(120), || received.load(Ordering::Relaxed) >= at), "stream stalled before {at}");
        let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
        ok(&e, &["restore", &id]);
    }
    let sent_sum = writer.join().expect("writer");
    let echoed_sum = reader.join().expect("reader");
    assert_eq!(sent_sum, echoed_sum, "checksums match");
    eprintln!("256 MiB echoed through 3 checkpoints/restores in {:.1} s", t0.elapsed().as_secs_f64());
}

const STATES: &str = r#"
import os, socket, sys, time
out, go, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def log(s):
    with open(out, 'a') as f:
        f.write(s + '\n')
def recv_exact(s, n):
    b = b''
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            break
        b += d
    return b
# Unread bytes both ways with a peer outside the pod.
t0 = time.time()
while True:
    try:
        e = socket.create_connection((host, port), timeout=2)
        break
    except OSError:
        if time.time() - t0 > 20:
            raise
        time.sleep(0.1)
e.settimeout(None)
e.sendall(b'to-host-unread')
# A pair inside the pod over loopback, bytes queued both ways.
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(8)
a = socket.create_connection(l.getsockname()); b, _ = l.accept()
a.sendall(b'a-to-b'); b.sendall(b'b-to-a')
# CLOSE_WAIT (c1) and FIN_WAIT2 (c2): c2 sent data and shut down writing.
c1 = socket.create_connection(l.getsockname()); c2, _ = l.accept()
c2.sendall(b'data-then-fin'); c2.shutdown(socket.SHUT_WR)
# IPv6 over the pod's loopback.
l6 = socket.socket(socket.AF_INET6); l6.bind(('::1', 0)); l6.listen()
v6a = socket.create_connection(l6.getsockname()[:2]); v6b, _ = l6.accept()
v6a.sendall(b'over-ipv6')
# A UDP socket holding 10 datagrams.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))
us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); us.bind(('127.0.0.1', 0))
for i in range(10):
    us.sendto(b'dgram-%d' % i, u.getsockname())
time.sleep(0.3)
log('ready')
while not os.path.exists(go):
    time.sleep(0.05)
fails = []
def check(what, got, want):
    if got != want:
        fails.append('%s: %r != %r' % (what, got, want))
check('from host', recv_exact(e, 16), b'from-host-unread')
e.sendall(b'after')
check('pair a->b', recv_exact(b, 6), b'a-to-b')
check('pair b->a', recv_exact(a, 6), b'b-to-a')
a.sendall(b'more'); check('pair again', recv_exact(b, 4), b'more')
check('close-wait data', recv_exact(c1, 13), b'data-then-fin')
check('close-wait eof', c1.recv(10), b'')
c1.sendall(b'reply-after-fin'); check('fin-wait2 receives', recv_exact(c2, 15), b'reply-after-fin')
c1.close(); check('fin-wait2 eof', c2.recv(10), b'')
check('ipv6', recv_exact(v6b, 9), b'over-ipv6')
for i in range(10):
    d, frm = u.recvfrom(100)
    check('datagram %d' % i, (d, frm), (b'dgram-%d' % i, us.getsockname()))
log('FAIL ' + '; '.join(fails) if fails else 'ok')
time.sleep(3600)
"#;

/// TCP states of the pod's connections, as `ss` shows them inside it: (state, local, peer).
fn ss(e: &Env, pod: &str) -> Vec<String> {
    let out = ok(e, &["exec", pod, "--", "ss", "-tanH"]);
    let mut v: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 5 && w[0] != "LISTEN")
        .map(|w| format!("{} {} {}", w[0], w[3], w[4]))
        .collect();
    v.sort();
    v
}

/// Unread data both ways, CLOSE_WAIT and FIN_WAIT2, IPv6, a UDP socket holding 10 datagrams and
/// a pair connected inside the pod come back as they were.
#[test]
fn queues_half_closed_ipv6_udp_and_pairs_come_back() {
    if !tools() || !have("ss") {
        return;
    }
    let e = env();
    let net = subnet(85);
    let pod = name("states");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    let script = e.work.join("states.py");
    std::fs::write(&script, STATES).unwrap();
    // The pod reaches the host through the bridge's gateway address, which comes with the pod.
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let gw = format!("{net}.1");
    let args = ["python3", script.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), &gw, &port];
    let mut run = vec!["run", "--name", &pod, "--ip"];
    let ip = format!("{net}.2/24");
    run.extend([ip.as_str(), "--"]);
    run.extend(args);
    ok(&e, &run);
    let _g = PodGuard(&e, pod.clone());
    let (mut host_side, _) = l.accept().unwrap();
    host_side.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    host_side.write_all(b"from-host-unread").unwrap();
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ready")), "{}", text(&out));
    let before = ss(&e, &pod);
    assert!(before.iter().any(|s| s.starts_with("CLOSE-WAIT")) && before.iter().any(|s| s.starts_with("FIN-WAIT-2")), "{before:?}");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    // FIN_WAIT2 comes back as FIN_WAIT1 until the peer acknowledges our FIN again.
    assert!(wait_for(Duration::from_secs(10), || ss(&e, &pod) == before), "states after restore: {:?} (before {before:?})", ss(&e, &pod));
    std::fs::write(&go, b"go").unwrap();
    let mut got = [0u8; 19];
    host_side.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to-host-unreadafter", "bytes the pod sent before the checkpoint, then after");
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ok") || text(&out).contains("FAIL")), "{}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));
}

/// redis-server in a pod with a connected client: the client keeps its connection (same client
/// id) through checkpoint and restore and reads its keys afterwards.
#[test]
fn redis_client_keeps_its_connection() {
    if !tools() || !have("redis-server") {
        eprintln!("SKIP: redis-server not installed (scripts/setup.sh installs it)");
        return;
    }
    let e = env();
    let net = subnet(86);
    let pod = name("redis");
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "redis-server", "--bind", "0.0.0.0", "--port", "6379",
        "--save", "", "--appendonly", "no", "--protected-mode", "no"]);
    let _g = PodGuard(&e, pod.clone());
    let mut c = connect_retry(&format!("{net}.2:6379"));
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    let mut cmd = |args: &[&str]| -> String {
        let mut m = format!("*{}\r\n", args.len());
        for a in args {
            m.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        c.write_all(m.as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(n) = line.strip_prefix('$').and_then(|n| n.trim().parse::<usize>().ok()) {
            let mut v = vec![0u8; n + 2];
            r.read_exact(&mut v).unwrap();
            return String::from_utf8_lossy(&v[..n]).into_owned();
        }
        line.trim().to_string()
    };
    let id_before = cmd(&["CLIENT", "ID"]);
    for i in 0..200 {
        assert_eq!(cmd(&["SET", &format!("k{i}"), &format!("v{}", i * 3)]), "+OK");
    }
    let ck = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &ck]);
    assert_eq!(cmd(&["CLIENT", "ID"]), id_before, "the same connection");
    assert_eq!(cmd(&["GET", "k150"]), "v450");
    assert_eq!(cmd(&["DBSIZE"]), ":200");
}

const LINE_SERVER: &str = r#"
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7272))
s.listen()
def serve(c):
    n = 0
    while True:
        try:
            d = c.recv(100)
        except OSError as e:
            print('conn error %s' % type(e).__name__, flush=True)
            return
        if not d:
            print('conn eof', flush=True)
            return
        n += 1
        c.sendall(b'%03d' % n)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Rollback brings a connection back with old sequence numbers: its peer resets it, the server
/// sees a clean error on it (ECONNRESET) and goes on serving new clients.
#[test]
fn rollback_resets_old_connections_and_serves_new_clients() {
    if !tools() {
        return;
    }
    let e = env();
    let net = subnet(87);
    let pod = name("rollback");
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", LINE_SERVER]);
    let _g = PodGuard(&e, pod.clone());
    let addr = format!("{net}.2:7272");
    let mut c = connect_retry(&addr);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(roundtrip(&mut c, b"a", 3), b"001");
    ok(&e, &["checkpoint", "--leave-running", &pod]);
    assert_eq!(roundtrip(&mut c, b"b", 3), b"002", "the pod runs on after the checkpoint");
    // The peer forgets the connection at once when it sees it end (no lingering FIN).
    linger_zero(&c);
    ok(&e, &["rollback", &pod]);
    let mut buf = [0u8; 8];
    let r = c.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "the removed pod's connection ended: {r:?}");
    drop(c);
    let console = e.run.join(&pod).join("console.log");
    assert!(
        wait_for(Duration::from_secs(10), || text(&console).contains("conn error ConnectionResetError")),
        "the restored server sees its old connection reset: {}",
        text(&console)
    );
    let mut fresh = connect_retry(&addr);
    fresh.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(roundtrip(&mut fresh, b"x", 3), b"001", "a new client is served");
}

/// Sets SO_LINGER {on, 0} on the stream: closing it then resets the connection at once and
/// forgets it.
fn linger_zero(c: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `l` is a valid linger struct of the size given; the fd is open.
    let rc = unsafe {
        libc::setsockopt(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&l as *const libc::linger).cast(), std::mem::size_of_val(&l) as u32)
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// A single process (`--pid`) with a connection to a listener of the test: saved and restored
/// with it, the connection goes on.
#[test]
fn single_process_keeps_its_connection() {
    if !tools() {
        return;
    }
    let e = env();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let script = format!(
        "import os, socket, sys\nos.closerange(3, 65536)\nc = socket.create_connection(('127.0.0.1', {port}))\nn = 0\nwhile True:\n    d = c.recv(10)\n    if not d: break\n    n += 1\n    c.sendall(b'%03d' % n)\n"
    );
    // No stream that leads to this test: a restored process whose stdout was a pipe from outside
    // gets `zap restore`'s own, and `ok()` would then wait for its end as long as the process lives.
    let child = Proc(Command::new("python3").arg("-c").arg(&script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let pid = child.0.id().to_string();
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    assert_eq!(roundtrip(&mut s, b"a", 3), b"001");
    let id = ok(&e, &["checkpoint", "--pid", &pid]).trim().to_string();
    drop(child); // killed by the checkpoint already; reaped here
    s.write_all(b"b").unwrap(); // sent while the process is gone: retransmitted until it is back
    let out = ok(&e, &["--json", "restore", &id]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (rpid, init) = (v["pid"].as_i64().unwrap() as i32, v["init_pid"].as_i64().unwrap() as i32);
    let mut got = [0u8; 3];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"002", "the restored process answers on the same connection");
    assert_eq!(roundtrip(&mut s, b"c", 3), b"003");
    drop(s);
    let _ = Command::new("kill").args(["-9", &rpid.to_string(), &init.to_string()]).status();
}

/// The owner uid of each inet socket process `pid` holds: (inode, file of /proc/PID/net, uid).
fn socket_owners(pid: i32) -> Vec<(u64, String, u32)> {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for file in ["tcp", "udp", "tcp6", "udp6"] {
        for line in text(Path::new(&format!("/proc/{pid}/net/{file}"))).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(uid), Some(ino)) = (f.get(7).and_then(|v| v.parse().ok()), f.get(9).and_then(|v| v.parse::<u64>().ok())) else { continue };
            if inodes.contains(&ino) {
                out.push((ino, file.to_string(), uid));
            }
        }
    }
    out.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    out
}

/// A process running as nobody keeps the owner of its sockets: after a restore its TCP connection
/// and UDP socket show uid 65534 in /proc/net/tcp and udp (what netfilter's `meta skuid`
/// matches), not root, and the connection carries bytes.
#[test]
fn sockets_of_another_user_keep_their_owner() {
    if !tools() {
        return;
    }
    let e = env();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let script = format!(
        "import os, socket, encodings.idna\nos.closerange(3, 65536)\nos.setgroups([])\nos.setgid(65534)\nos.setuid(65534)\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nu.bind(('127.0.0.1', 0))\n\
         c = socket.create_connection(('127.0.0.1', {port}))\nn = 0\nwhile True:\n    d = c.recv(10)\n    if not d: break\n    n += 1\n    c.sendall(b'%03d' % n)\n"
    );
    let child = Proc(Command::new("python3").arg("-c").arg(&script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let pid = child.0.id() as i32;
    // Within a bound: a python that cannot start as nobody would leave accept() waiting.
    l.set_nonblocking(true).unwrap();
    let t = Instant::now();
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && t.elapsed() < Duration::from_secs(15) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the process running as nobody did not connect: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    assert_eq!(roundtrip(&mut s, b"a", 3), b"001");
    let before = socket_owners(pid);
    let kinds: Vec<&str> = before.iter().map(|(_, f, _)| f.as_str()).collect();
    assert_eq!(kinds, ["tcp", "udp"], "one TCP connection and one UDP socket: {before:?}");
    assert!(before.iter().all(|(_, _, uid)| *uid == 65534), "owned by nobody before: {before:?}");
    let id = ok(&e, &["checkpoint", "--pid", &pid.to_string()]).trim().to_string();
    drop(child);
    let out = ok(&e, &["--json", "restore", &id]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (rpid, init) = (v["pid"].as_i64().unwrap() as i32, v["init_pid"].as_i64().unwrap() as i32);
    let after = socket_owners(rpid);
    let _kill = KillOnDrop(vec![rpid, init]);
    assert_eq!(after.iter().map(|(_, f, uid)| (f.as_str(), *uid)).collect::<Vec<_>>(), [("tcp", 65534), ("udp", 65534)], "owners after the restore: {after:?}");
    assert_eq!(roundtrip(&mut s, b"b", 3), b"002", "the restored connection carries bytes");
}

/// Kills (by pid) the processes a test restored, on every way out of it.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
    }
}

/// A connection that cannot be saved (SYN_SENT) fails the checkpoint naming pid, fd, addresses
/// and state; the pod runs on with its network open, and nothing is stored.
#[test]
fn unsavable_connection_fails_cleanly_and_unlocks() {
    if !tools() {
        return;
    }
    let e = env();
    let net = subnet(88);
    let pod = name("synsent");
    let count = e.work.join("count");
    let script = format!(
        "import socket, time, os\ns = socket.socket()\ns.setblocking(False)\ns.connect_ex(('{net}.250', 9))\nn = 0\nwhile True:\n    n += 1\n    open({c:?} + '.tmp', 'w').write(str(n))\n    os.rename({c:?} + '.tmp', {c:?})\n    time.sleep(0.01)\n",
        c = count.to_str().unwrap()
    );
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    let n = || text(&count).trim().parse::<u64>().unwrap_or(0);
    assert!(wait_for(Duration::from_secs(20), || n() >= 3), "did not start");
    let out = zap(&e, &["checkpoint", &pod]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a SYN_SENT connection cannot be saved");
    assert!(err.contains("SYN_SENT") && err.contains("fd 3") && err.contains(&format!("{net}.250:9")) && err.contains("pid"), "{err}");
    let at = n();
    assert!(wait_for(Duration::from_secs(5), || n() > at + 5), "the pod runs on");
    let ls: serde_json::Value = serde_json::from_str(&ok(&e, &["--json", "ls"])).unwrap();
    assert_eq!(ls.as_array().map(|a| a.len()), Some(0), "nothing stored: {ls}");
    assert!(!ok(&e, &["exec", &pod, "--", "nft", "list", "tables"]).contains("zap_netlock"), "the network is unlocked");
}

/// A checkpoint that fails after the network was locked unlocks it: the pod's connection goes on
/// at once.
#[test]
fn failure_after_the_lock_unlocks_the_network() {
    if !tools() {
        return;
    }
    let e = env();
    let net = subnet(89);
    let pod = name("failpoint");
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", LINE_SERVER]);
    let _g = PodGuard(&e, pod.clone());
    let mut c = connect_retry(&format!("{net}.2:7272"));
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(roundtrip(&mut c, b"a", 3), b"001");
    let bin = env!("CARGO_BIN_EXE_zap");
    let out = Command::new(bin)
        .arg("--store")
        .arg(&e.store)
        .args(["checkpoint", &pod])
        .env("ZAP_RUN_DIR", &e.run)
        .env("ZAP_INIT", Path::new(bin).parent().unwrap().join("zap-init"))
        .env("ZAP_FAIL_AT", "after-netlock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("failure injected"), "{err}");
    // Answered within the 2 s read timeout: nothing is left locked.
    assert_eq!(roundtrip(&mut c, b"b", 3), b"002");
    assert!(!ok(&e, &["exec", &pod, "--", "nft", "list", "tables"]).contains("zap_netlock"), "the network is unlocked");
    let ls: serde_json::Value = serde_json::from_str(&ok(&e, &["--json", "ls"])).unwrap();
    assert_eq!(ls.as_array().map(|a| a.len()), Some(0), "nothing stored: {ls}");
}

const SLOW_ACCEPT: &str = r#"
import os, socket, sys, time
go = sys.argv[1]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7373))
s.listen(16)
while not os.path.exists(go):
    time.sleep(0.02)
conns = [s.accept()[0] for _ in range(5)]
for i, c in enumerate(conns):
    c.sendall(b'accepted')
time.sleep(3600)
"#;

/// A backlog of 5 connections the application has not accepted cannot be put back on restore:
/// the checkpoint is refused with an error naming the listener (not silently dropped), the pod
/// runs on, and once the application has accepted them the checkpoint goes through and they come
/// back as connections.
#[test]
fn backlog_not_yet_accepted_is_refused_not_dropped() {
    if !tools() {
        return;
    }
    let e = env();
    let net = subnet(90);
    let pod = name("backlog");
    let go = e.work.join("go");
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", SLOW_ACCEPT, go.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    let addr = format!("{net}.2:7373");
    let mut conns: Vec<TcpStream> = (0..5).map(|_| connect_retry(&addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let out = zap(&e, &["checkpoint", &pod]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("5 connection(s) waiting to be accepted") && err.contains("0.0.0.0:7373"), "{err}");
    let ls: serde_json::Value = serde_json::from_str(&ok(&e, &["--json", "ls"])).unwrap();
    assert_eq!(ls.as_array().map(|a| a.len()), Some(0), "nothing stored: {ls}");
    std::fs::write(&go, b"go").unwrap();
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 8];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"accepted", "the pod ran on and accepted them");
    }
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    for c in &mut conns {
        c.write_all(b"still here").unwrap();
    }
    assert!(
        wait_for(Duration::from_secs(10), || ss(&e, &pod).iter().filter(|s| s.starts_with("ESTAB") && s.contains(":7373 ")).count() == 5),
        "the 5 connections are back: {:?}",
        ss(&e, &pod)
    );
    // The listener has its backlog (16) again: ss shows it as the listener's Send-Q.
    let listen = ok(&e, &["exec", &pod, "--", "ss", "-tlnH"]);
    assert!(listen.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()[..4] == ["LISTEN", "0", "16", "0.0.0.0:7373"]), "{listen}");
}

const PROMPT_ACCEPT: &str = r#"
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7474))
s.listen(64)
def serve(c):
    c.sendall(b'hi')
    c.recv(16)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Two clients connecting to `addr` every 5 ms (each keeps its last 20 connections open), for at
/// most 30 s.
struct Burst {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burst {
    /// Starts them and waits until they made 50 connections.
    fn start(addr: &str) -> Burst {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let threads = (0..2)
            .map(|_| {
                let (stop, made, addr) = (stop.clone(), made.clone(), addr.to_string());
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    let t0 = Instant::now();
                    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                        if let Ok(c) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)) {
                            made.fetch_add(1, Ordering::Relaxed);
                            held.push(c);
                            if held.len() > 20 {
                                held.remove(0);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        assert!(wait_for(Duration::from_secs(10), || made.load(Ordering::Relaxed) > 50), "clients connect");
        Burst { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

/// A server that accepts at once, checkpointed while clients keep connecting: connections the
/// kernel completed just before the network lock sit in the backlog when the pod stops; the
/// checkpoint lets the pod accept them (network still locked) and goes through without a flag.
#[test]
fn connections_arriving_during_the_stop_are_accepted_first() {
    if !tools() {
        return;
    }
    let e = env();
    let net = subnet(91);
    let pod = name("burst");
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", PROMPT_ACCEPT]);
    let _g = PodGuard(&e, pod.clone());
    let addr = format!("{net}.2:7474");
    drop(connect_retry(&addr));
    let clients = Burst::start(&addr);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = zap(&e, &["checkpoint", "--leave-running", &pod]);
        assert!(out.status.success(), "checkpoint while clients connect: {}", String::from_utf8_lossy(&out.stderr));
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    clients.stop();
    assert_eq!(ids.len(), 3);
}

/// The same for a single process (`--pid`): a server on the host's loopback that accepts at once,
/// checkpointed three times with `--leave-running` while clients keep connecting; connections
/// waiting in its backlog when it stops are accepted in a short run before the save.
#[test]
fn single_process_accepts_its_backlog_before_the_save() {
    accepts_backlog_before_the_save(&[]);
}

/// The same with `--tree` (the group checkpoint).
#[test]
fn process_tree_accepts_its_backlog_before_the_save() {
    accepts_backlog_before_the_save(&["--tree"]);
}

fn accepts_backlog_before_the_save(extra: &[&str]) {
    if !tools() {
        return;
    }
    let e = env();
    let port_file = e.work.join("port");
    let script = format!(
        "import os, socket, threading\nos.closerange(3, 65536)\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(64)\n\
         open({:?}, 'w').write(str(s.getsockname()[1]))\n\
         def serve(c):\n    c.sendall(b'hi')\n    c.recv(16)\n    c.close()\n\
         while True:\n    c, _ = s.accept()\n    threading.Thread(target=serve, args=(c,), daemon=True).start()\n",
        port_file.to_str().unwrap()
    );
    let child = Proc(spawn_alone(Command::new("python3").arg("-c").arg(&script)));
    assert!(wait_for(Duration::from_secs(10), || !text(&port_file).is_empty()), "server did not start");
    let addr = format!("127.0.0.1:{}", text(&port_file).trim());
    let clients = Burst::start(&addr);
    let pid = child.0.id().to_string();
    let mut failures = Vec::new();
    for _ in 0..3 {
        let out = zap(&e, &[&["checkpoint", "--pid", &pid, "--leave-running"], extra].concat());
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).to_string());
        }
    }
    clients.stop();
    assert!(failures.is_empty(), "checkpoints while clients connect: {failures:?}");
}

/// The pod's side of [`many_connections_keep_every_byte_both_ways`]: accepts N connections, sends
/// each a payload of its own and leaves what the host sent unread; some are non-blocking, some
/// have TCP_NODELAY, and files opened and closed between accepts leave holes in the fd table. On
/// `go` it reads every host payload (the part sent before the checkpoint and the part sent while
/// the pod was stopped), checks each byte and its flags, and answers on each connection.
const MANY_SERVER: &str = r#"
import fcntl, os, socket, sys
n, out, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def payload(tag, i):
    size = 700 + (i * 37) % 2500
    head = ('%s%05d|' % (tag, i)).encode()
    return head + bytes((i * 7 + k) % 251 for k in range(size - len(head)))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7500))
s.listen(1024)
conns, holes = [], []
for j in range(n):
    c, _ = s.accept()
    c.sendall(payload('P', j))
    if j % 3 == 0:
        c.setblocking(False)
    if j % 4 == 0:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if j % 40 == 5:
        holes.append(os.open('/dev/null', os.O_RDONLY))
    conns.append(c)
for h in holes:
    os.close(h)
open(out, 'w').write('ready\n')
import time
while not os.path.exists(go):
    time.sleep(0.02)
bad = []
for j, c in enumerate(conns):
    if bool(fcntl.fcntl(c.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK) != (j % 3 == 0):
        bad.append('%d: O_NONBLOCK changed' % j)
    if c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != (1 if j % 4 == 0 else 0):
        bad.append('%d: TCP_NODELAY changed' % j)
    c.setblocking(True)
    c.settimeout(20)
    got = b''
    head = b''
    while len(head) < 7:
        head += c.recv(7 - len(head))
    i = int(head[1:6])
    want = payload('H', i) + b'after%05d' % i
    got = head
    while len(got) < len(want):
        d = c.recv(len(want) - len(got))
        if not d:
            break
        got += d
    if got != want:
        bad.append('%d: host payload %d differs (%d bytes, want %d)' % (j, i, len(got), len(want)))
    c.sendall(b'R%05d%05d\n' % (j, i))
open(out, 'a').write(('FAIL ' + '; '.join(bad[:10]) if bad else 'ok') + '\n')
time.sleep(3600)
"#;

fn many_payload(tag: u8, i: usize) -> Vec<u8> {
    let size = 700 + (i * 37) % 2500;
    let mut v = format!("{}{i:05}|", tag as char).into_bytes();
    v.extend((0..size - v.len()).map(|k| ((i * 7 + k) % 251) as u8));
    v
}

/// A pod holding 300 connections from the host, each with bytes unread in both directions (the
/// host's payload in the pod's receive queue, the pod's payload in the host's), some
/// non-blocking, some with TCP_NODELAY, in an fd table with holes: checkpointed (ended) and
/// restored, while the host sends more on every connection. Afterwards every byte arrives on
/// both sides, on the same connections, and the fd flags and options are as they were.
#[test]
fn many_connections_keep_every_byte_both_ways() {
    if !tools() {
        return;
    }
    const N: usize = 300;
    let e = env();
    let net = subnet(92);
    let pod = name("many");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    let n = N.to_string();
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", MANY_SERVER, &n, out.to_str().unwrap(), go.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    let addr = format!("{net}.2:7500");
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = if i == 0 { connect_retry(&addr) } else { TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10)).unwrap() };
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(&many_payload(b'H', i)).unwrap();
        conns.push(c);
    }
    assert!(wait_for(Duration::from_secs(30), || text(&out).contains("ready")), "server not ready: {}", text(&out));
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    // Sent while the pod is gone: retransmitted until it is back.
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("after{i:05}").as_bytes()).unwrap();
    }
    ok(&e, &["restore", &id]);
    std::fs::write(&go, b"go").unwrap();
    let mut seen = std::collections::HashSet::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let mut head = [0u8; 7];
        c.read_exact(&mut head).unwrap();
        assert_eq!(head[0], b'P', "connection {i}: {head:?}");
        let j: usize = std::str::from_utf8(&head[1..6]).unwrap().parse().unwrap();
        assert!(seen.insert(j), "connection {i}: the pod's payload {j} came twice");
        let want = many_payload(b'P', j);
        let mut rest = vec![0u8; want.len() - 7];
        c.read_exact(&mut rest).unwrap();
        assert!(head[..] == want[..7] && rest[..] == want[7..], "connection {i}: the pod's payload {j} differs");
        let mut reply = [0u8; 12];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[..], format!("R{j:05}{i:05}\n").as_bytes(), "connection {i}: the pod's answer");
    }
    assert!(wait_for(Duration::from_secs(20), || text(&out).lines().count() >= 2), "{}", text(&out));
    assert!(text(&out).contains("ok"), "{}", text(&out));
}

/// The pod's side of [`connection_options_come_back`]: accepts N connections and sets options on
/// them by their index (TCP_NODELAY; keepalive with its timers; SO_LINGER; IP_TOS, SO_MARK and
/// SO_PRIORITY; locked buffer sizes, another congestion control and TCP_USER_TIMEOUT;
/// IP_RECVERR, IP_FREEBIND, TCP_NOTSENT_LOWAT, TCP_LINGER2, TCP_SYNCNT), makes an IPv6 pair over
/// its loopback with a traffic class, and notes what the kernel answers for every option of
/// every socket. On `go` it reads them all again (before any traffic), compares, and answers
/// each connection with the bytes the host left unread in it.
const OPTS_SERVER: &str = r#"
import json, os, socket, struct, sys, time
n, out, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
T, S, IP, IP6 = socket.IPPROTO_TCP, socket.SOL_SOCKET, socket.IPPROTO_IP, socket.IPPROTO_IPV6
SO_BUF_LOCK, SO_MARK, SO_PRIORITY = 72, 36, 12
TCP_USER_TIMEOUT, TCP_NOTSENT_LOWAT, TCP_CONGESTION, TCP_LINGER2, TCP_SYNCNT = 18, 25, 13, 8, 7
IP_RECVERR, IP_FREEBIND, IPV6_TCLASS = 11, 15, 67
avail = open('/proc/sys/net/ipv4/tcp_available_congestion_control').read().split()
default = open('/proc/sys/net/ipv4/tcp_congestion_control').read().strip()
other = next((c for c in avail if c != default), None)
def seti(c, level, name, v):
    c.setsockopt(level, name, v)
def opts(c, v6=False):
    g = lambda level, name: c.getsockopt(level, name)
    o = {
        'nodelay': g(T, socket.TCP_NODELAY), 'keepalive': g(S, socket.SO_KEEPALIVE),
        'keepidle': g(T, socket.TCP_KEEPIDLE), 'keepintvl': g(T, socket.TCP_KEEPINTVL), 'keepcnt': g(T, socket.TCP_KEEPCNT),
        'linger': list(struct.unpack('ii', c.getsockopt(S, socket.SO_LINGER, 8))), 'mark': g(S, SO_MARK), 'priority': g(S, SO_PRIORITY),
        'buf_lock': g(S, SO_BUF_LOCK), 'user_timeout': g(T, TCP_USER_TIMEOUT), 'notsent_lowat': g(T, TCP_NOTSENT_LOWAT),
        'congestion': c.getsockopt(T, TCP_CONGESTION, 16).split(b'\0')[0].decode(), 'linger2': g(T, TCP_LINGER2),
        'syncnt': g(T, TCP_SYNCNT), 'reuseaddr': g(S, socket.SO_REUSEADDR),
    }
    if o['buf_lock']:
        o['sndbuf'], o['rcvbuf'] = g(S, socket.SO_SNDBUF), g(S, socket.SO_RCVBUF)
    if v6:
        o['tclass'] = g(IP6, IPV6_TCLASS)
    else:
        o.update(tos=g(IP, socket.IP_TOS), recverr=g(IP, IP_RECVERR), freebind=g(IP, IP_FREEBIND))
    return o
s = socket.socket()
s.setsockopt(S, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7600))
s.listen(64)
conns = []
for j in range(n):
    c, _ = s.accept()
    k = j % 6
    if k == 0:
        seti(c, T, socket.TCP_NODELAY, 1)
    elif k == 1:
        seti(c, S, socket.SO_KEEPALIVE, 1); seti(c, T, socket.TCP_KEEPIDLE, 33); seti(c, T, socket.TCP_KEEPINTVL, 7); seti(c, T, socket.TCP_KEEPCNT, 4)
    elif k == 2:
        c.setsockopt(S, socket.SO_LINGER, struct.pack('ii', 1, 9))
    elif k == 3:
        seti(c, IP, socket.IP_TOS, 0x28); seti(c, S, SO_MARK, 77); seti(c, S, SO_PRIORITY, 3)
    elif k == 4:
        seti(c, S, socket.SO_SNDBUF, 200000); seti(c, S, socket.SO_RCVBUF, 150000); seti(c, T, TCP_USER_TIMEOUT, 12000)
        if other:
            c.setsockopt(T, TCP_CONGESTION, other.encode())
    else:
        seti(c, IP, IP_RECVERR, 1); seti(c, IP, IP_FREEBIND, 1); seti(c, T, TCP_NOTSENT_LOWAT, 16384); seti(c, T, TCP_LINGER2, 17); seti(c, T, TCP_SYNCNT, 3)
    conns.append(c)
l6 = socket.socket(socket.AF_INET6)
l6.bind(('::1', 0))
l6.listen(1)
a6 = socket.create_connection(('::1', l6.getsockname()[1]))
b6, _ = l6.accept()
seti(a6, IP6, IPV6_TCLASS, 0x40)
seti(b6, T, socket.TCP_NODELAY, 1)
a6.sendall(b'six')
socks = [(c, False) for c in conns] + [(a6, True), (b6, True)]
before = [opts(c, v6) for c, v6 in socks]
open(out, 'w').write('ready %s\n' % (other or '-'))
while not os.path.exists(go):
    time.sleep(0.02)
after = [opts(c, v6) for c, v6 in socks]
bad = ['%d: %s was %r, now %r' % (i, k, b[k], a.get(k)) for i, (b, a) in enumerate(zip(before, after)) for k in b if a.get(k) != b[k]]
want = [(3, 'tos', 0x28), (3, 'mark', 77), (4, 'buf_lock', 3), (1, 'keepidle', 33), (2, 'linger', [1, 9]), (5, 'linger2', 17), (n, 'tclass', 0x40)]
bad += ['%d: %s is %r, set %r' % (i, k, after[i][k], v) for i, k, v in want if after[i][k] != v]
if other and after[4]['congestion'] != other:
    bad.append('4: congestion %s, set %s' % (after[4]['congestion'], other))
b6.settimeout(10)
if b6.recv(3) != b'six':
    bad.append('IPv6 pair lost its bytes')
for j, c in enumerate(conns):
    c.settimeout(20)
    got = b''
    while len(got) < 6:
        d = c.recv(6 - len(got))
        if not d:
            break
        got += d
    c.sendall(b'R' + got[1:6] + b'%05d\n' % j)
open(out, 'a').write(('FAIL ' + '; '.join(bad[:12]) if bad else 'ok') + '\n')
time.sleep(3600)
"#;

/// A pod whose server holds 24 connections from the host (enough for them to be read ahead with
/// one `inet_diag` dump of the namespace) with options set by the application (TCP_NODELAY,
/// keepalive timers, SO_LINGER, IP_TOS, SO_MARK, SO_PRIORITY, locked buffer sizes, another
/// congestion control, TCP_USER_TIMEOUT, IP_RECVERR, IP_FREEBIND, TCP_NOTSENT_LOWAT,
/// TCP_LINGER2, TCP_SYNCNT) and an IPv6 pair with a traffic class: checkpointed (ended) and
/// restored, every option of every socket reads back as before (those left at the kernel's
/// values too), and every connection still carries its bytes.
#[test]
fn connection_options_come_back() {
    if !tools() {
        return;
    }
    const N: usize = 24;
    let e = env();
    let net = subnet(95);
    let pod = name("opts");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    let n = N.to_string();
    ok(&e, &["run", "--name", &pod, "--ip", &format!("{net}.2/24"), "--", "python3", "-c", OPTS_SERVER, &n, out.to_str().unwrap(), go.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    let addr = format!("{net}.2:7600");
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = if i == 0 { connect_retry(&addr) } else { TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10)).unwrap() };
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(format!("H{i:05}").as_bytes()).unwrap();
        conns.push(c);
    }
    assert!(wait_for(Duration::from_secs(30), || text(&out).contains("ready")), "server not ready: {}", text(&out));
    if text(&out).contains("ready -") {
        eprintln!("NOTE: one congestion control only (net.ipv4.tcp_available_congestion_control): TCP_CONGESTION not changed");
    }
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    std::fs::write(&go, b"go").unwrap();
    for (i, c) in conns.iter_mut().enumerate() {
        let mut reply = [0u8; 12];
        c.read_exact(&mut reply).unwrap();
        // The host's bytes, read by the pod only after the restore, come back on their connection.
        assert_eq!(&reply[..6], format!("R{i:05}").as_bytes(), "connection {i}: the pod's answer {:?}", String::from_utf8_lossy(&reply));
    }
    assert!(wait_for(Duration::from_secs(20), || text(&out).lines().count() >= 2), "{}", text(&out));
    assert!(text(&out).lines().nth(1) == Some("ok"), "options after the restore: {}", text(&out));
}

/// A process (`--pid`) listening on a loopback port, checkpointed (it ends) while another socket
/// of the host then takes the port: the restore fails naming the step and the address, leaves no
/// restored process behind, and the checkpoint is intact: once the port is free again the same
/// checkpoint restores and its listener serves.
#[test]
fn restore_whose_port_is_taken_fails_cleanly() {
    if !tools() {
        return;
    }
    let e = env();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let marker = format!("zap-port-taken-{}", std::process::id());
    let script = format!(
        "import os, socket, sys\nos.closerange(3, 65536)\nmarker = '{marker}'\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', {port}))\ns.listen(5)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'served')\n    c.close()\n"
    );
    let child = Proc(Command::new("python3").arg("-c").arg(&script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let pid = child.0.id().to_string();
    let mut first = connect_retry(&format!("127.0.0.1:{port}"));
    let mut got = Vec::new();
    first.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"served");
    let id = ok(&e, &["checkpoint", "--pid", &pid]).trim().to_string();
    drop(child); // ended by the checkpoint; reaped here
    let running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|d| std::fs::read(d.path().join("cmdline")).is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes())))
    };
    assert!(wait_for(Duration::from_secs(5), || !running()), "the checkpointed process is still there");
    // Another socket of the host takes the port.
    let taker = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = zap(&e, &["restore", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore succeeded with its port taken");
    assert!(err.contains("rebind listening TCP socket") && err.contains(&format!("127.0.0.1:{port}")) && err.contains("in use"), "error: {err}");
    assert!(wait_for(Duration::from_secs(5), || !running()), "a failed restore left its process behind");
    drop(taker);
    // The checkpoint is intact.
    let v: serde_json::Value = serde_json::from_str(&ok(&e, &["--json", "restore", &id])).unwrap();
    let (rpid, init) = (v["pid"].as_i64().unwrap() as i32, v["init_pid"].as_i64().unwrap() as i32);
    let mut again = connect_retry(&format!("127.0.0.1:{port}"));
    again.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut got = Vec::new();
    again.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"served", "the restored listener serves");
    let _ = Command::new("kill").args(["-9", &rpid.to_string(), &init.to_string()]).status();
}
