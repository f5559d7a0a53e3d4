//! Real programs and the patterns real programs use, in pods, checkpointed (with and without
//! `--leave-running`), restored, rolled back, and checked for the same state afterwards: a Python
//! asyncio server running as another user (signal handlers, interval timer, memfd, flock, name,
//! parent-death signal, limits), Python's threaded HTTP server with keep-alive clients, sqlite3
//! writing a WAL database, a shell pipeline, bash with job control and vim on ptys in tmux, nginx
//! with several workers and keep-alive clients, a Java server, redis in the middle of a
//! background save, and pthread mutexes (a robust one whose owner dies after the restore); and
//! the tmux session live-migrated between two hosts.
//! Each test says SKIP and returns when its program is not installed.
mod common;
mod hosts;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn name(tag: &str) -> String {
    pod_name("pr", tag)
}

/// A subnet of its own per test (10.84-10.85.N.0/24): the pod's address and host:port.
fn addr(second: u32, port: u16) -> (String, String) {
    let net = 100 + std::process::id() % 100;
    (format!("10.{second}.{net}.2/24"), format!("10.{second}.{net}.2:{port}"))
}

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

fn up(addr: &str) -> bool {
    wait_for(Duration::from_secs(60), || TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(500)).is_ok())
}

/// A connection that sends a line and reads one back.
struct Lines {
    conn: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Lines {
    fn open(addr: &str) -> Lines {
        let conn = connect(addr);
        Lines { reader: BufReader::new(conn.try_clone().unwrap()), conn }
    }

    fn ask(&mut self) -> Vec<String> {
        self.conn.write_all(b"x\n").unwrap();
        let mut l = String::new();
        self.reader.read_line(&mut l).expect("answer");
        assert!(l.ends_with('\n'), "a whole line: {l:?}");
        l.split_whitespace().map(str::to_string).collect()
    }
}

/// An HTTP/1.1 keep-alive connection.
struct Http {
    conn: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Http {
    fn open(addr: &str) -> Http {
        let conn = connect(addr);
        Http { reader: BufReader::new(conn.try_clone().unwrap()), conn }
    }

    /// GET `path`: the body (status 200 and keep-alive checked).
    fn get(&mut self, path: &str) -> Vec<u8> {
        write!(self.conn, "GET {path} HTTP/1.1\r\nHost: zap\r\nConnection: keep-alive\r\n\r\n").unwrap();
        let mut status = String::new();
        self.reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "GET {path}: {status:?}");
        let mut len = None;
        loop {
            let mut l = String::new();
            self.reader.read_line(&mut l).expect("header");
            let low = l.to_ascii_lowercase();
            if let Some(v) = low.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            assert!(!low.starts_with("connection: close"), "the server keeps the connection");
            if l == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len.expect("content-length")];
        self.reader.read_exact(&mut body).expect("body");
        body
    }
}

/// `grep` of the lines of /proc/PID/status (in the pod) that start with `keys`.
fn status_lines(e: &Env, pod: &str, pid: i32, keys: &[&str]) -> Vec<String> {
    let t = ok(e, &["exec", pod, "--", "cat", &format!("/proc/{pid}/status")]);
    t.lines().filter(|l| keys.iter().any(|k| l.starts_with(k))).map(str::to_string).collect()
}

fn mode_of(v: &serde_json::Value) -> String {
    v["mode"].as_str().unwrap_or("").to_string()
}

fn open_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A Python asyncio server (epoll, its self-pipe woken by signals through `set_wakeup_fd`),
/// running as `nobody` with supplementary groups and no capabilities, which set its name and
/// parent-death signal with prctl, lowered its fd limit, runs an interval timer (SIGALRM to a
/// loop signal handler) and a 10 ms loop timer, holds a memfd with 1 MiB of data and an flock
/// on a file. One client connection is kept through a `--leave-running` checkpoint, an
/// incremental one that ends the pod and the restore: the count goes on, every attribute is
/// the same, the timers fire, SIGHUP reaches its handler, the lock is still held; a rollback to a
/// later checkpoint brings the count back to what it was there.
#[test]
fn python_asyncio_server_as_another_user_keeps_its_state_and_client() {
    let py = Path::new("/usr/bin/python3");
    if !py.exists() || !installed(&["setpriv", "flock"], "/usr/bin/python3, setpriv or flock") {
        return;
    }
    let e = env();
    open_dir(e.work.parent().unwrap());
    open_dir(&e.work);
    let lock = e.work.join("lock");
    std::fs::write(&lock, b"").unwrap();
    std::fs::set_permissions(&lock, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let script = e.work.join("srv.py");
    std::fs::write(
        &script,
        r#"import asyncio, ctypes, fcntl, hashlib, os, resource, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(15, b"asyncsrv", 0, 0, 0) == 0          # PR_SET_NAME
assert libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0        # PR_SET_PDEATHSIG
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))
lockf = open(sys.argv[1], "a")
fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
mfd = os.memfd_create("appdata")
data = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(32768))
os.write(mfd, data)
st = {"count": 0, "ticks": 0, "alarms": 0, "hups": 0}
def pdeath():
    v = ctypes.c_int()
    libc.prctl(2, ctypes.byref(v), 0, 0, 0)                # PR_GET_PDEATHSIG
    return v.value
async def handle(r, w):
    while await r.readline():
        st["count"] += 1
        comm = open("/proc/self/comm").read().strip()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        digest = hashlib.sha256(os.pread(mfd, len(data) + 1, 0)).hexdigest()[:16]
        w.write(f"{st['count']} {st['ticks']} {st['alarms']} {st['hups']} {comm} {pdeath()} {soft} {hard} {digest}\n".encode())
        await w.drain()
    w.close()
def tick(loop):
    st["ticks"] += 1
    loop.call_later(0.01, tick, loop)
def bump(k):
    st[k] += 1
async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, bump, "hups")
    loop.add_signal_handler(signal.SIGALRM, bump, "alarms")
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    loop.call_later(0.01, tick, loop)
    srv = await asyncio.start_server(handle, "0.0.0.0", 8081)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"#,
    )
    .unwrap();
    let (ip, addr) = addr(84, 8081);
    let pod = name("async");
    let (s, l) = (script.to_str().unwrap(), lock.to_str().unwrap());
    let user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--groups=4,20", "--inh-caps=-all", "--bounding-set=-all"];
    let mut args = vec!["run", "--name", &pod, "--ip", &ip, "--"];
    args.extend(user);
    args.extend(["/usr/bin/python3", s, l]);
    ok(&e, &args);
    let _g = PodGuard(&e, pod.clone());
    assert!(up(&addr), "the server does not answer: {}", text(&e.run.join(&pod).join("console.log")));
    let keys = ["Name", "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"];
    let status = status_lines(&e, &pod, 2, &keys);
    assert!(status.iter().any(|l| l.starts_with("Uid:") && l.contains("65534")) && status.contains(&"Groups:\t4 20 ".to_string()), "{status:?}");
    let lock_held = || Command::new("flock").args(["-n"]).arg(&lock).arg("true").status().unwrap().code() == Some(1);
    assert!(lock_held(), "the server holds its flock");
    let mut c = Lines::open(&addr);
    let a0 = c.ask();
    assert_eq!(a0[0], "1");
    assert_eq!(&a0[4..8], ["asyncsrv", "15", "200", "300"], "{a0:?}");
    assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
    let a1 = c.ask();
    assert_eq!(a1[0], "2");
    std::thread::sleep(Duration::from_millis(200));
    let second = json(&e, &["checkpoint", &pod]);
    assert!(mode_of(&second).starts_with("incremental"), "{second}");
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    let a2 = c.ask();
    assert_eq!(a2[0], "3", "the same connection and count go on: {a2:?}");
    assert_eq!(a2[4..], a0[4..], "name, parent-death signal, fd limits and the memfd's data as they were");
    assert_eq!(status_lines(&e, &pod, 2, &keys), status, "user, groups, capabilities as they were");
    assert!(lock_held(), "the flock is held after the restore");
    ok(&e, &["exec", &pod, "--", "kill", "-HUP", "2"]);
    std::thread::sleep(Duration::from_millis(400));
    let a3 = c.ask();
    let n = |a: &[String], i: usize| a[i].parse::<u64>().unwrap();
    assert!(n(&a3, 1) > n(&a2, 1) && n(&a3, 2) > n(&a2, 2), "the loop timer and the interval timer run on: {a2:?} then {a3:?}");
    assert_eq!(n(&a3, 3), n(&a2, 3) + 1, "SIGHUP reached its handler once: {a3:?}");
    // A rollback to a checkpoint taken now: the count comes back to 4 (a new connection: the
    // old one comes back with old sequence numbers and is reset).
    assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
    assert_eq!(c.ask()[0], "5");
    ok(&e, &["rollback", &pod]);
    drop(c);
    assert!(up(&addr), "the rolled back server answers");
    let a5 = Lines::open(&addr).ask();
    assert_eq!(a5[0], "5", "the count as it was at the checkpoint rolled back to, plus this request: {a5:?}");
    assert_eq!(a5[4..], a0[4..]);
    assert!(lock_held(), "the flock is held after the rollback");
}

/// Python's `ThreadingHTTPServer` speaking HTTP/1.1: three keep-alive clients, each with a
/// handler thread blocked reading its connection, a 3 MiB body and a hit counter under a lock;
/// after a `--leave-running` checkpoint, an incremental one that ends the pod and the restore,
/// every connection is served by the same threads and the counter goes on.
#[test]
fn python_threaded_http_server_serves_its_keep_alive_clients_after_restore() {
    if !installed(&["python3"], "python3") {
        return;
    }
    let e = env();
    let script = e.work.join("webserver.py"); // not http.py: it would shadow the http package
    std::fs::write(
        &script,
        r#"import http.server, socketserver, threading
big = bytes((i * 7919) % 251 for i in range(3 << 20))
lock, hits = threading.Lock(), 0
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        global hits
        with lock:
            hits += 1
            n = hits
        body = big if self.path == "/big" else f"{n} {threading.active_count()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    def server_bind(self):  # no getfqdn: the pod has no name server
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "pod", self.server_address[1]
S(("0.0.0.0", 8000), H).serve_forever()
"#,
    )
    .unwrap();
    let big: Vec<u8> = (0..3usize << 20).map(|i| (i * 7919 % 251) as u8).collect();
    let (ip, addr) = addr(85, 8000);
    let pod = name("http");
    ok(&e, &["run", "--name", &pod, "--ip", &ip, "--", "python3", script.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(up(&addr), "the server does not answer");
    let mut conns: Vec<Http> = (0..3).map(|_| Http::open(&addr)).collect();
    let hit = |c: &mut Http| -> (u64, u64) {
        let b = String::from_utf8(c.get("/n")).unwrap();
        let mut f = b.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        (f.next().unwrap(), f.next().unwrap())
    };
    let mut last = 0;
    let mut round = |conns: &mut Vec<Http>, when: &str| {
        for c in conns.iter_mut() {
            assert!(c.get("/big") == big, "{when}: the 3 MiB body");
            let (n, threads) = hit(c);
            assert!(n > last, "{when}: the counter goes on ({n} after {last})");
            assert_eq!(threads, 4, "{when}: main thread and one handler per connection");
            last = n;
        }
    };
    round(&mut conns, "before");
    assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
    round(&mut conns, "after the first checkpoint");
    let second = json(&e, &["checkpoint", &pod]);
    assert!(mode_of(&second).starts_with("incremental"), "{second}");
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    round(&mut conns, "after the restore");
}

/// Python's multiprocessing started the `spawn` and `forkserver` ways (Python 3.14's default):
/// workers exec'd anew share a counter and a lock (named POSIX semaphores: glibc's sem_open maps
/// each under a temporary name that it then renames, so its creator's mapping shows a deleted
/// file still linked under the semaphore's name) and feed a queue, and a pool answers; after a
/// `--leave-running` checkpoint, an incremental one that ends the pod and the restore, all goes
/// on. Before, the creator's mappings came back as private copies: it waited forever on its
/// own copy of a lock, and the pool's workers left.
#[test]
fn python_multiprocessing_spawn_and_forkserver_go_on_after_restore() {
    if !installed(&["python3"], "python3") {
        return;
    }
    let e = env();
    let script = e.work.join("mpstart.py");
    std::fs::write(
        &script,
        r#"import multiprocessing as mp, os, sys, time
def worker(v, lock, q):
    while True:
        with lock:
            v.value += 1
        q.put(1)
        time.sleep(0.005)
if __name__ == "__main__":
    mp.set_start_method(sys.argv[2])
    v, lock, q = mp.Value('l', 0), mp.Lock(), mp.Queue()
    for _ in range(3):
        mp.Process(target=worker, args=(v, lock, q), daemon=True).start()
    got = 0
    with mp.Pool(2) as pool:
        while True:
            while not q.empty():
                q.get()
                got += 1
            r = pool.apply_async(pow, (3, 4)).get(timeout=30)
            with open(sys.argv[1] + ".tmp", "w") as f:
                f.write(f"{v.value} {got} {r}\n")
            os.rename(sys.argv[1] + ".tmp", sys.argv[1])
            time.sleep(0.05)
"#,
    )
    .unwrap();
    for method in ["spawn", "forkserver"] {
        let state = e.work.join(format!("{method}.state"));
        let read = || -> Vec<u64> { text(&state).split_whitespace().filter_map(|x| x.parse().ok()).collect() };
        let pod = name(method);
        ok(&e, &["run", "--name", &pod, "--", "python3", script.to_str().unwrap(), state.to_str().unwrap(), method]);
        let _g = PodGuard(&e, pod.clone());
        assert!(wait_for(Duration::from_secs(30), || read().first().is_some_and(|&n| n > 100)), "{method}: no progress: {} {}", text(&state), text(&e.run.join(&pod).join("console.log")));
        assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
        let second = json(&e, &["checkpoint", &pod]);
        assert!(mode_of(&second).starts_with("incremental"), "{second}");
        let at = read();
        ok(&e, &["restore", second["id"].as_str().unwrap()]);
        let on = || read().len() == 3 && read()[0] > at[0] + 100 && read()[1] > at[1] + 100;
        assert!(wait_for(Duration::from_secs(20), on), "{method}: workers, queue and pool do not go on: {:?} after {at:?}", read());
        let now = read();
        // The named semaphores' files: the pod is killed, so Python's resource tracker cannot
        // remove them; the test does.
        let maps = ok(&e, &["exec", &pod, "--", "sh", "-c", "cat /proc/[0-9]*/maps"]);
        let mut sems: Vec<String> = maps.split_whitespace().filter(|w| w.starts_with("/dev/shm/sem.mp-")).map(str::to_string).collect();
        sems.sort();
        sems.dedup();
        drop(_g);
        for f in &sems {
            let _ = std::fs::remove_file(f);
        }
        assert!(now[1] <= now[0] && now[2] == 81, "{method}: every item queued was counted, the pool answers: {now:?}");
        assert!(!sems.is_empty(), "{method}: the locks are named semaphores");
    }
}

/// sqlite3 in WAL mode written all the time (transactions of 10 rows; the `-wal` file, the
/// `-shm` index mapped shared, fcntl locks): the database is read from outside while it runs,
/// checkpointed with `--leave-running` and by an incremental checkpoint that ends the pod,
/// restored, read from outside again while the writer goes on, and once the writer is ended it
/// passes `integrity_check` with every row the writer reported.
#[test]
fn sqlite_wal_writer_goes_on_and_its_database_stays_whole() {
    if !installed(&["python3", "sqlite3"], "python3 or sqlite3") {
        return;
    }
    let e = env();
    let (script, db, done) = (e.work.join("w.py"), e.work.join("db"), e.work.join("n"));
    std::fs::write(
        &script,
        r#"import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
assert db.execute("pragma journal_mode=wal").fetchone()[0] == "wal"
db.execute("create table if not exists t (i integer primary key, v text)")
i = 0
while True:
    db.execute("begin immediate")
    for _ in range(10):
        i += 1
        db.execute("insert into t values (?, ?)", (i, "x" * (i % 300)))
    db.execute("commit")
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(f"{i}\n")
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    time.sleep(0.002)
"#,
    )
    .unwrap();
    let reported = || text(&done).trim().parse::<u64>().unwrap_or(0);
    let query = |sql: &str| -> String {
        let o = Command::new("sqlite3").args(["-cmd", ".timeout 10000"]).arg(&db).arg(sql).output().unwrap();
        assert!(o.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let consistent = |when: &str| {
        let at_least = reported();
        let got = query("select count(*), max(i), sum(length(v) != i % 300) from t");
        let f: Vec<u64> = got.split('|').map(|x| x.parse().unwrap()).collect();
        assert!(f[0] == f[1] && f[0] >= at_least && f[2] == 0, "{when}: rows {got} (writer reported {at_least})");
        f[0]
    };
    let pod = name("sqlite");
    ok(&e, &["run", "--name", &pod, "--", "python3", script.to_str().unwrap(), db.to_str().unwrap(), done.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(30), || reported() > 500), "the writer does not write: {}", text(&e.run.join(&pod).join("console.log")));
    consistent("while running");
    assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
    consistent("after the first checkpoint");
    let second = json(&e, &["checkpoint", &pod]);
    assert!(mode_of(&second).starts_with("incremental"), "{second}");
    let at = reported();
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(30), || reported() > at + 500), "the writer does not go on after the restore ({} after {at})", reported());
    consistent("after the restore");
    ok(&e, &["exec", &pod, "--", "kill", "-9", "2"]);
    assert!(wait_for(Duration::from_secs(10), || !ok(&e, &["ps"]).lines().any(|l| l.starts_with(&pod) && l.contains("running"))), "the writer ended");
    let rows = consistent("at the end");
    assert!(rows >= reported(), "every row the writer reported committed is there");
    assert_eq!(query("pragma integrity_check"), "ok");
}

/// A shell pipeline `seq | gzip -1 | tee FILE | wc -c > COUNT` (four processes, three pipes
/// with bytes buffered, gzip's state in memory, tee's file offset) checkpointed twice while it
/// streams, the second time ended and restored; seq is then stopped: `wc -c` counted exactly
/// the bytes in FILE, and FILE holds a valid gzip stream of consecutive numbers from 1, none
/// lost or repeated (the last line may be cut where seq was killed).
#[test]
fn shell_pipeline_streams_on_with_its_buffered_bytes() {
    if !installed(&["seq", "gzip", "tee", "wc", "pidof"], "coreutils, gzip or pidof") {
        return;
    }
    let e = env();
    let (gz, count) = (e.work.join("seq.gz"), e.work.join("count"));
    let pipeline = format!("seq 1 100000000000 | gzip -1 | tee {} | wc -c > {}", gz.display(), count.display());
    let pod = name("pipe");
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &pipeline]);
    let _g = PodGuard(&e, pod.clone());
    let size = || std::fs::metadata(&gz).map(|m| m.len()).unwrap_or(0);
    assert!(wait_for(Duration::from_secs(20), || size() > 1 << 20), "the pipeline does not stream");
    assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
    let second = json(&e, &["checkpoint", &pod]);
    assert!(mode_of(&second).starts_with("incremental"), "{second}");
    let at = size();
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(20), || size() > at + (1 << 20)), "the pipeline does not go on after the restore");
    ok(&e, &["exec", &pod, "--", "sh", "-c", "kill $(pidof seq)"]);
    assert!(wait_for(Duration::from_secs(30), || text(&count).trim().parse::<u64>().is_ok()), "wc -c did not finish");
    assert_eq!(text(&count).trim().parse::<u64>().unwrap(), size(), "wc -c counted every byte tee wrote");
    let mut zcat = Command::new("gzip").arg("-dc").arg(&gz).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::with_capacity(1 << 20, zcat.stdout.take().unwrap());
    let (mut n, mut buf, mut last) = (0u64, Vec::new(), Vec::new());
    loop {
        buf.clear();
        if lines.read_until(b'\n', &mut buf).unwrap() == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            last = buf.clone();
            break;
        }
        n += 1;
        let want = n.to_string();
        assert_eq!(&buf[..buf.len() - 1], want.as_bytes(), "line {n}");
    }
    let expected_next = (n + 1).to_string();
    assert!(expected_next.as_bytes().starts_with(&last), "the cut last line is the start of {expected_next}: {last:?}");
    assert!(zcat.wait().unwrap().success(), "a whole gzip stream");
    assert!(n > 100_000, "{n} lines");
}

/// Sets up tmux's session in pod `pod` (already running `tmux -S SOCK -D`, the pod's commands
/// run by `exec`): bash under job control with a background loop writing `cnt` and a `cat`
/// stopped with ^Z in window 0, vim editing `file` with "hello before" typed in window 1.
struct TmuxSession {
    sock: std::path::PathBuf,
    cnt: std::path::PathBuf,
    file: std::path::PathBuf,
}

impl TmuxSession {
    fn tmux(&self, args: &[&str]) -> String {
        let o = Command::new("tmux").arg("-S").arg(&self.sock).args(args).output().unwrap();
        assert!(o.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn pane(&self, w: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-t", w])
    }

    /// `exec` runs a command in the pod (`zap exec POD -- ARGS`).
    fn set_up(&self, exec: impl Fn(&[&str])) {
        assert!(wait_for(Duration::from_secs(10), || self.sock.exists()), "no tmux server");
        let s = self.sock.to_str().unwrap();
        exec(&["tmux", "-S", s, "new-session", "-d", "-s", "w", "-x", "120", "-y", "40", "bash", "--norc", "--noprofile", "-i"]);
        exec(&["tmux", "-S", s, "new-window", "-t", "w", &format!("vim -u NONE -N {}", self.file.display())]);
        let loop_cmd = format!("n=0; while :; do n=$((n+1)); echo $n > {}; sleep 0.02; done &", self.cnt.display());
        self.tmux(&["send-keys", "-t", "w:0", &loop_cmd, "Enter"]);
        self.tmux(&["send-keys", "-t", "w:0", "cat", "Enter"]);
        std::thread::sleep(Duration::from_millis(300));
        self.tmux(&["send-keys", "-t", "w:0", "C-z"]);
        assert!(wait_for(Duration::from_secs(10), || self.pane("w:0").contains("Stopped")), "cat stopped: {}", self.pane("w:0"));
        self.tmux(&["send-keys", "-t", "w:1", "ihello before", "Escape"]);
        assert!(wait_for(Duration::from_secs(10), || self.pane("w:1").contains("hello before")), "vim: {}", self.pane("w:1"));
    }

    /// After the restore or move: the loop counts on, `jobs` lists both jobs, `fg` brings `cat`
    /// back and it echoes and ends with 0, and vim saves what was typed before and after.
    fn check(&self) {
        let count = || text(&self.cnt).trim().parse::<u64>().unwrap_or(0);
        let at = count();
        assert!(wait_for(Duration::from_secs(10), || count() > at + 5), "the background loop counts on");
        self.tmux(&["send-keys", "-t", "w:0", "jobs; echo mark$((6*7))", "Enter"]);
        assert!(wait_for(Duration::from_secs(10), || self.pane("w:0").contains("mark42")), "bash answers: {}", self.pane("w:0"));
        let p = self.pane("w:0");
        let after_mark = &p[p.rfind("jobs; echo").unwrap()..];
        assert!(after_mark.contains("Running") && after_mark.contains("Stopped"), "both jobs listed: {after_mark}");
        self.tmux(&["send-keys", "-t", "w:0", "fg %2", "Enter"]);
        std::thread::sleep(Duration::from_millis(300));
        self.tmux(&["send-keys", "-t", "w:0", "echo-from-cat", "Enter"]);
        assert!(wait_for(Duration::from_secs(10), || self.pane("w:0").matches("echo-from-cat").count() == 2), "cat in the foreground echoes: {}", self.pane("w:0"));
        self.tmux(&["send-keys", "-t", "w:0", "C-d"]);
        self.tmux(&["send-keys", "-t", "w:0", "echo status$?", "Enter"]);
        assert!(wait_for(Duration::from_secs(10), || self.pane("w:0").contains("status0")), "cat ended with 0: {}", self.pane("w:0"));
        self.tmux(&["send-keys", "-t", "w:1", "o", "and after", "Escape", ":wq", "Enter"]);
        assert!(wait_for(Duration::from_secs(10), || text(&self.file) == "hello before\nand after\n"), "vim saved: {:?}", text(&self.file));
    }
}

/// tmux (its server in the pod, clients from the host through its socket) with bash under job
/// control in one window (a background loop writing a counter, a `cat` stopped with ^Z) and vim
/// editing a file in another: after the checkpoint and restore, `jobs` lists both jobs, `fg`
/// brings `cat` back to the terminal and it echoes, the loop counts on, and vim saves the text
/// typed before and after.
#[test]
fn bash_job_control_and_vim_on_ptys_in_tmux() {
    if !installed(&["tmux", "bash", "vim"], "tmux, bash or vim") {
        return;
    }
    let e = env();
    let t = TmuxSession { sock: e.work.join("tmux.sock"), cnt: e.work.join("cnt"), file: e.work.join("edited") };
    let pod = name("tmux");
    ok(&e, &["run", "--name", &pod, "--", "tmux", "-S", t.sock.to_str().unwrap(), "-D", "-f", "/dev/null"]);
    let _g = PodGuard(&e, pod.clone());
    t.set_up(|args| {
        let mut a = vec!["exec", pod.as_str(), "--"];
        a.extend_from_slice(args);
        ok(&e, &a);
    });
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    t.check();
}

/// The same tmux session live-migrated from host a to host b (`scripts/hosts.sh`): the ptys,
/// sessions, job-control stop and vim come along.
#[test]
fn tmux_session_with_jobs_and_vim_migrates_between_hosts() {
    if !installed(&["tmux", "bash", "vim"], "tmux, bash or vim") {
        return;
    }
    let Some(h) = hosts::Hosts::up() else { return };
    h.keys();
    let dir = tempfile::Builder::new().prefix("zap-tmux-").tempdir_in("/var/tmp").unwrap();
    let t = TmuxSession { sock: dir.path().join("tmux.sock"), cnt: dir.path().join("cnt"), file: dir.path().join("edited") };
    h.ok("a", &["run", "--name", "tm", "--", "tmux", "-S", t.sock.to_str().unwrap(), "-D", "-f", "/dev/null"]);
    t.set_up(|args| {
        let mut a = vec!["exec", "tm", "--"];
        a.extend_from_slice(args);
        h.ok("a", &a);
    });
    let out = h.migrate("a", "b", "tm", &[]);
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    assert!(h.ok("b", &["ps"]).contains("tm "), "the pod runs on b");
    t.check();
    h.ok("b", &["rm", "-f", "tm"]);
}

/// nginx, master as root and three workers as `www-data`, keep-alive on: six client connections
/// spread over the workers stay open through a `--leave-running` checkpoint, an incremental
/// one that ends the pod and the restore, and each gets the same pages on the same connection.
#[test]
fn nginx_workers_keep_their_keep_alive_connections() {
    if !installed(&["nginx"], "nginx") {
        return;
    }
    let e = env();
    open_dir(e.work.parent().unwrap());
    open_dir(&e.work);
    let www = e.work.join("www");
    std::fs::create_dir_all(e.work.join("tmp")).unwrap();
    std::fs::create_dir_all(&www).unwrap();
    open_dir(&www);
    let page: String = (0..20000).map(|i| format!("line {i} of the page\n")).collect();
    std::fs::write(www.join("index.html"), "hello\n").unwrap();
    std::fs::write(www.join("big.html"), &page).unwrap();
    let w = |p: &str| e.work.join(p).to_str().unwrap().to_string();
    let conf = format!(
        "worker_processes 3; user www-data; pid {pid}; error_log {err}; daemon off; master_process on;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;\n\
         uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi; keepalive_timeout 600; keepalive_requests 100000;\n\
         server {{ listen 8080; root {www}; location / {{ }} }} }}\n",
        pid = w("nginx.pid"),
        err = w("error.log"),
        t = w("tmp"),
        www = www.display()
    );
    std::fs::write(e.work.join("nginx.conf"), conf).unwrap();
    let (ip, addr) = addr(86, 8080);
    let pod = name("nginx");
    ok(&e, &["run", "--name", &pod, "--ip", &ip, "--", "nginx", "-c", &w("nginx.conf")]);
    let _g = PodGuard(&e, pod.clone());
    assert!(up(&addr), "nginx does not answer: {}", text(&e.work.join("error.log")));
    let users = || -> String {
        let out = ok(&e, &["exec", &pod, "--", "ps", "-e", "-o", "user=,pid=,comm="]);
        out.lines().filter(|l| !l.ends_with(" ps")).map(|l| format!("{l}\n")).collect()
    };
    // The master listens before it starts its workers.
    assert!(wait_for(Duration::from_secs(20), || users().matches("www-data").count() == 3), "three workers: {}", users());
    let procs = users();
    let mut conns: Vec<Http> = (0..6).map(|_| Http::open(&addr)).collect();
    let round = |conns: &mut Vec<Http>, when: &str| {
        for c in conns.iter_mut() {
            assert!(c.get("/big.html") == page.as_bytes(), "{when}: the big page");
            assert_eq!(c.get("/index.html"), b"hello\n", "{when}");
        }
    };
    round(&mut conns, "before");
    assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
    round(&mut conns, "after the first checkpoint");
    let second = json(&e, &["checkpoint", &pod]);
    assert!(mode_of(&second).starts_with("incremental"), "{second}");
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    round(&mut conns, "after the restore");
    assert_eq!(users(), procs, "the same processes, pids and users");
}

/// A Java server (the JVM's threads, its garbage collector running on a churning thread, its JIT
/// code, a 32 MiB heap of arrays, a scheduled executor): one client connection is answered with
/// the tick count and a checksum of the heap before, after a `--leave-running` checkpoint, and
/// after an incremental checkpoint that ends the pod and the restore.
#[test]
fn java_server_keeps_its_heap_threads_and_client() {
    if !installed(&["java", "javac"], "java or javac (a JDK)") {
        return;
    }
    let e = env();
    let src = e.work.join("Srv.java");
    std::fs::write(
        &src,
        r#"import java.io.*; import java.net.*; import java.util.*; import java.util.concurrent.*; import java.util.concurrent.atomic.*;
public class Srv {
  public static void main(String[] a) throws Exception {
    AtomicLong ticks = new AtomicLong();
    Executors.newScheduledThreadPool(2).scheduleAtFixedRate(ticks::incrementAndGet, 0, 5, TimeUnit.MILLISECONDS);
    Map<Integer, byte[]> heap = new ConcurrentHashMap<>();
    for (int i = 0; i < 2048; i++) { byte[] b = new byte[16384]; Arrays.fill(b, (byte) i); heap.put(i, b); }
    new Thread(() -> { long x = 0; while (true) { List<String> l = new ArrayList<>(); for (int i = 0; i < 1000; i++) l.add("s" + i + x); x += l.size(); try { Thread.sleep(1); } catch (Exception e) {} } }).start();
    ServerSocket ss = new ServerSocket(9090);
    ExecutorService pool = Executors.newCachedThreadPool();
    while (true) {
      Socket s = ss.accept();
      pool.submit(() -> {
        try (BufferedReader r = new BufferedReader(new InputStreamReader(s.getInputStream())); PrintWriter w = new PrintWriter(s.getOutputStream(), true)) {
          while (r.readLine() != null) {
            long good = 0;
            for (Map.Entry<Integer, byte[]> e : heap.entrySet()) { byte[] b = e.getValue(); for (int i = 0; i < b.length; i += 512) good += b[i] == (byte) (int) e.getKey() ? 1 : 0; }
            w.println(ticks.get() + " " + good);
          }
        } catch (IOException e) {}
        return null;
      });
    }
  }
}
"#,
    )
    .unwrap();
    let javac = Command::new("javac").arg("-d").arg(&e.work).arg(&src).output().unwrap();
    assert!(javac.status.success(), "javac: {}", String::from_utf8_lossy(&javac.stderr));
    let (ip, addr) = addr(87, 9090);
    let pod = name("java");
    ok(&e, &["run", "--name", &pod, "--ip", &ip, "--", "java", "-Xmx256m", "-cp", e.work.to_str().unwrap(), "Srv"]);
    let _g = PodGuard(&e, pod.clone());
    assert!(up(&addr), "the JVM does not answer: {}", text(&e.run.join(&pod).join("console.log")));
    let mut c = Lines::open(&addr);
    let n = |a: &[String], i: usize| a[i].parse::<u64>().unwrap();
    let a0 = c.ask();
    assert_eq!(n(&a0, 1), 2048 * 32, "every checked byte of the heap is right");
    assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
    let a1 = c.ask();
    std::thread::sleep(Duration::from_millis(200));
    let second = json(&e, &["checkpoint", &pod]);
    assert!(mode_of(&second).starts_with("incremental"), "{second}");
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    let a2 = c.ask();
    assert_eq!(n(&a2, 1), 2048 * 32, "the heap after the restore");
    assert!(n(&a2, 0) > n(&a1, 0) && n(&a1, 0) >= n(&a0, 0), "ticks go on: {a0:?} {a1:?} {a2:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(n(&c.ask(), 0) > n(&a2, 0), "the scheduled executor runs after the restore");
}

/// redis in the middle of a background save (its forked child writing `temp-PID.rdb`, slowed
/// with `rdb-key-save-delay`) and with an append-only file: the pod is checkpointed (it ends)
/// while the child writes, and restored; the child finishes the save, the parent learns it
/// succeeded, and `redis-check-rdb` reads every key from the file; the data set and the AOF go on.
#[test]
fn redis_background_save_in_progress_completes_after_restore() {
    if !installed(&["redis-server", "redis-cli", "redis-check-rdb"], "redis-server, redis-cli or redis-check-rdb") {
        return;
    }
    let e = env();
    let dir = e.work.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let (ip, addr) = addr(88, 6379);
    let host = addr.split(':').next().unwrap().to_string();
    let cli = |args: &[&str]| -> String {
        let o = Command::new("redis-cli").args(["-h", &host]).args(args).output().unwrap();
        assert!(o.status.success(), "redis-cli {args:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let info = |key: &str| -> String {
        let t = cli(&["info", "persistence"]);
        t.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).unwrap_or_default().trim().to_string()
    };
    let pod = name("redis");
    let d = dir.to_str().unwrap();
    ok(&e, &[
        "run", "--name", &pod, "--ip", &ip, "--", "redis-server", "--port", "6379", "--dir", d, "--save", "", "--appendonly", "yes",
        "--protected-mode", "no", "--enable-debug-command", "yes", "--rdb-key-save-delay", "20",
    ]);
    let _g = PodGuard(&e, pod.clone());
    assert!(up(&addr), "redis does not answer");
    assert_eq!(cli(&["debug", "populate", "200000", "key", "100"]), "OK");
    assert_eq!(cli(&["set", "counter", "41"]), "OK");
    assert!(cli(&["bgsave"]).contains("started"));
    assert_eq!(info("rdb_bgsave_in_progress"), "1", "the save runs while the pod is checkpointed");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    let procs = ok(&e, &["exec", &pod, "--", "ps", "-e", "-o", "args="]);
    assert!(procs.contains("redis-rdb-bgsave"), "the saving child came back: {procs}");
    assert_eq!(cli(&["incr", "counter"]), "42");
    assert!(wait_for(Duration::from_secs(60), || info("rdb_bgsave_in_progress") == "0"), "the background save did not end");
    assert_eq!(info("rdb_last_bgsave_status"), "ok");
    assert_eq!(cli(&["dbsize"]), "200001");
    let check = Command::new("redis-check-rdb").arg(dir.join("dump.rdb")).output().unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && out.contains("RDB looks OK") && out.contains("200001 keys read"), "{out}");
    assert_eq!(info("aof_last_write_status"), "ok");
}

/// pthread mutexes held across a checkpoint (`engine/tests/progs/robustmx.c`): a child holds a
/// robust process-shared mutex the parent waits on, the parent's threads take turns on another;
/// after the restore the child is killed while holding the lock, and the parent's lock returns
/// EOWNERDEAD (the child's robust list came back), its threads counting on.
#[test]
fn robust_mutex_owner_killed_after_restore_wakes_the_waiter() {
    let e = env();
    let Some(bin) = build_prog("robustmx", &e.work, &["-pthread"]) else { return };
    let out = e.work.join("out");
    let pod = name("robust");
    ok(&e, &["run", "--name", &pod, "--", bin.to_str().unwrap(), out.to_str().unwrap(), e.work.join("go").to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready") || text(&out).contains("FAIL")), "{}", text(&out));
    let child: i32 = text(&out).split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("child pid");
    assert_eq!(json(&e, &["checkpoint", "--leave-running", &pod])["left_running"], true);
    let second = json(&e, &["checkpoint", &pod]);
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    assert!(!text(&out).contains("ok"), "the parent still waits for the lock");
    ok(&e, &["exec", &pod, "--", "kill", "-9", &child.to_string()]);
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ok") || text(&out).contains("FAIL")), "no verdict: {}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));
}
