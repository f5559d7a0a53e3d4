//! Real servers in pods, checkpointed and restored while a client holds a session open:
//! PostgreSQL (a postmaster and its backends running as `postgres`, their shared buffers in
//! shared anonymous memory that backends write and then exit, the WAL and data files on disk)
//! and Node.js (a V8 heap, libuv's threads, timers and an HTTP server with a keep-alive client).
//! Each test says SKIP and returns when its program is not installed (`scripts/setup.sh`
//! installs them).
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

fn name(tag: &str) -> String {
    pod_name("ap", tag)
}

/// The directory of PostgreSQL's server programs (Debian: /usr/lib/postgresql/VERSION/bin).
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|d| d.path().join("bin")).collect();
    dirs.sort();
    dirs.into_iter().rev().find(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
}

/// uid and gid of user `user`, from /etc/passwd.
fn ids_of(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
    })
}

/// A `psql` session kept open on one connection: statements go to its stdin, its answers (`-qAt`:
/// values only, one row a line) come back through a reader thread.
struct Psql {
    child: Child,
    input: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Psql {
    fn open(host: &str) -> Psql {
        let mut child = Command::new("psql")
            .args(["-h", host, "-U", "postgres", "-qAt", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        let input = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Psql { child, input, lines }
    }

    /// Runs `sql` (one statement that returns one row) and returns that row.
    fn one(&mut self, sql: &str) -> String {
        // psql runs what it has read once a statement ends with ';'.
        writeln!(self.input, "{};", sql.trim_end_matches(';')).expect("send to psql");
        self.input.flush().unwrap();
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = self.child.kill();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("no answer to {sql:?} on the open session: {err}");
            }
        }
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One statement on a new connection (a backend that exits afterwards); its output.
fn psql(host: &str, sql: &str) -> std::io::Result<String> {
    let out = Command::new("psql").args(["-h", host, "-U", "postgres", "-qAt", "-c", sql]).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Starts PostgreSQL on data directory `data` in pod `pod` at `ip` (as user postgres, with
/// `setpriv`, which execs it: the postmaster is the pod's main process) and waits until it
/// answers.
fn start_postgres(e: &Env, bin: &Path, pod: &str, ip: &str, host: &str, data: &Path) {
    let postgres = bin.join("postgres");
    ok(e, &[
        "run",
        "--name",
        pod,
        "--ip",
        ip,
        "--",
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        postgres.to_str().unwrap(),
        "-D",
        data.to_str().unwrap(),
    ]);
    let up = wait_for(Duration::from_secs(30), || psql(host, "select 1").is_ok_and(|o| o == "1"));
    assert!(up, "postgres does not answer: {}", text(&data.join("log")));
}

/// PostgreSQL with a client session open: rows written on the session and by short-lived
/// clients (whose backends write the shared buffers and exit) before a `--leave-running`
/// checkpoint and between it and an incremental one that ends the pod; after the restore the
/// same session goes on, every row is there, and the database, shut down and started again in a
/// new pod from its files, holds them all (its disk state matches the restored memory).
#[test]
fn postgres_keeps_its_rows_and_an_open_session_across_checkpoints() {
    let Some(bin) = postgres_bin() else {
        eprintln!("SKIP: PostgreSQL server not installed (/usr/lib/postgresql/*/bin/postgres)");
        return;
    };
    let (Some((uid, gid)), true, true) = (ids_of("postgres"), have("psql"), have("setpriv")) else {
        eprintln!("SKIP: user postgres, psql or setpriv missing");
        return;
    };
    let e = env();
    // Not under /tmp's private 0700 directories: the postgres user must reach it.
    let tmp = tempfile::Builder::new().prefix("zap-apps-pg-").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    let init = Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
    let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
    writeln!(conf, "listen_addresses = '*'\nunix_socket_directories = '{}'\nshared_buffers = 32MB\nlogging_collector = off", dir.display()).unwrap();
    let mut hba = std::fs::OpenOptions::new().append(true).open(data.join("pg_hba.conf")).unwrap();
    writeln!(hba, "host all all 0.0.0.0/0 trust").unwrap();
    let net = 100 + std::process::id() % 100;
    let (ip, host) = (format!("10.82.{net}.2/24"), format!("10.82.{net}.2"));
    let pod = name("pg");
    start_postgres(&e, &bin, &pod, &ip, &host, &data);
    let guard = PodGuard(&e, pod.clone());
    let mut s = Psql::open(&host);
    assert_eq!(s.one("create table t (i int primary key, v text); select 'made'"), "made");
    let insert = |s: &mut Psql, from: u32, to: u32| {
        let got = s.one(&format!("insert into t select g, md5(g::text) from generate_series({from}, {to}) g; select count(*) from t where i <= {to}"));
        assert_eq!(got, to.to_string(), "rows up to {to}");
    };
    insert(&mut s, 1, 1000);
    psql(&host, "insert into t select g, md5(g::text) from generate_series(1001, 2000) g").unwrap();
    let first = json(&e, &["checkpoint", "--leave-running", &pod]);
    assert_eq!(first["left_running"], true, "{first}");
    insert(&mut s, 2001, 3000);
    for k in 0..5 {
        let (a, b) = (3001 + k * 200, 3200 + k * 200);
        psql(&host, &format!("insert into t select g, md5(g::text) from generate_series({a}, {b}) g")).unwrap();
    }
    let second = json(&e, &["checkpoint", &pod]);
    assert!(second["mode"].as_str().unwrap_or("").starts_with("incremental"), "{second}");
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    // The same session goes on: its connection and its backend came back.
    assert_eq!(s.one("select count(*) from t"), "4000");
    insert(&mut s, 4001, 5000);
    assert_eq!(psql(&host, "select count(*), sum(i) from t where v = md5(i::text)").unwrap(), "5000|12502500");
    assert_eq!(psql(&host, "select count(*) from pg_class where relname = 't'").unwrap(), "1", "catalog intact");
    drop(s);
    // A clean shutdown (SIGINT to the postmaster: fast shutdown), then the files alone.
    ok(&e, &["exec", &pod, "--", "sh", "-c", &format!("kill -INT $(head -n 1 {}/postmaster.pid)", data.display())]);
    let down = wait_for(Duration::from_secs(30), || !data.join("postmaster.pid").exists());
    assert!(down, "postgres did not shut down");
    drop(guard);
    let again = name("pg2");
    start_postgres(&e, &bin, &again, &ip, &host, &data);
    let g2 = PodGuard(&e, again);
    assert_eq!(psql(&host, "select count(*), sum(i) from t where v = md5(i::text)").unwrap(), "5000|12502500", "rows on disk");
    // Shut down cleanly again: a postmaster killed with its pod leaves its dynamic shared
    // memory segments in /dev/shm (PostgreSQL.N).
    ok(&e, &["exec", &g2.1, "--", "sh", "-c", &format!("kill -INT $(head -n 1 {}/postmaster.pid)", data.display())]);
    assert!(wait_for(Duration::from_secs(30), || !data.join("postmaster.pid").exists()), "postgres did not shut down");
}

/// A Node.js HTTP server counting timer ticks, with a keep-alive client: checkpointed with
/// `--leave-running`, then ended by a second (incremental) checkpoint and restored; the same
/// connection gets answers throughout, the count goes on from where it was, and the server's
/// 64 MiB buffer is intact.
#[test]
fn node_http_server_keeps_its_state_and_keep_alive_client() {
    if !installed(&["node"], "node (Node.js)") {
        return;
    }
    let e = env();
    let script = e.work.join("server.js");
    std::fs::write(
        &script,
        r#"const http = require('http');
let ticks = 0;
const big = Buffer.alloc(64 << 20);
for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE((i * 2654435761) >>> 0, i);
setInterval(() => { ticks++; }, 5);
http.createServer((req, res) => {
  let sum = 0;
  for (let i = 0; i < big.length; i += 4096) sum = (sum + (big.readUInt32LE(i) ^ ((i * 2654435761) >>> 0))) >>> 0;
  res.end(`${ticks} ${sum}\n`);
}).listen(8080, () => console.log('listening'));
"#,
    )
    .unwrap();
    let net = 100 + std::process::id() % 100;
    let (ip, addr) = (format!("10.83.{net}.2/24"), format!("10.83.{net}.2:8080"));
    let pod = name("node");
    ok(&e, &["run", "--name", &pod, "--ip", &ip, "--", "node", script.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    let up = wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(&addr).is_ok());
    assert!(up, "node does not answer");
    // One keep-alive connection for the whole test.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut ask = |conn: &mut std::net::TcpStream| -> (u64, u64) {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n").unwrap();
        let mut len = 0usize;
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).expect("response header");
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if l == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        std::io::Read::read_exact(&mut reader, &mut body).unwrap();
        let body = String::from_utf8(body).unwrap();
        let mut f = body.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        (f.next().unwrap(), f.next().unwrap())
    };
    let (t0, sum) = ask(&mut conn);
    assert_eq!(sum, 0, "the buffer as written");
    ok(&e, &["checkpoint", "--leave-running", &pod]);
    let (t1, sum) = ask(&mut conn);
    assert!(t1 >= t0 && sum == 0, "after the first checkpoint: {t1} ticks (before {t0}), checksum {sum}");
    std::thread::sleep(Duration::from_millis(200));
    let second = json(&e, &["checkpoint", &pod]);
    assert!(second["mode"].as_str().unwrap_or("").starts_with("incremental"), "{second}");
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    let (t2, sum) = ask(&mut conn);
    assert!(t2 > t1 && sum == 0, "after the restore: {t2} ticks (before {t1}), checksum {sum}");
    // The timers run on: more ticks a moment later.
    std::thread::sleep(Duration::from_millis(300));
    let (t3, _) = ask(&mut conn);
    assert!(t3 > t2, "timer ticks go on after the restore: {t3} after {t2}");
}

/// Python's multiprocessing: three worker processes share a counter, a lock (a POSIX semaphore)
/// and an array in memory mapped from a file made with `mkstemp` in /dev/shm and deleted
/// (opened `O_NOFOLLOW`); checkpointed with `--leave-running`, ended by an incremental
/// checkpoint and restored: the workers go on counting under the lock, and the array's sum
/// still equals the counter.
#[test]
fn python_multiprocessing_workers_share_memory_and_a_lock_after_restore() {
    let e = env();
    let script = e.work.join("mp.py");
    let state = e.work.join("state");
    std::fs::write(
        &script,
        r#"import multiprocessing as mp, os, sys, time
def worker(v, lock, arr):
    while True:
        with lock:
            v.value += 1
            arr[v.value % len(arr)] += 1
        time.sleep(0.002)
if __name__ == "__main__":
    v, lock, arr = mp.Value('l', 0), mp.Lock(), mp.Array('l', 4096)
    for _ in range(3):
        mp.Process(target=worker, args=(v, lock, arr), daemon=True).start()
    out = sys.argv[1]
    while True:
        with lock:
            n, s = v.value, sum(arr)
        with open(out + ".tmp", "w") as f:
            f.write(f"{n} {s}\n")
        os.rename(out + ".tmp", out)
        time.sleep(0.02)
"#,
    )
    .unwrap();
    let read = || -> (u64, u64) {
        let t = text(&state);
        let mut f = t.split_whitespace().filter_map(|x| x.parse::<u64>().ok());
        (f.next().unwrap_or(0), f.next().unwrap_or(u64::MAX))
    };
    let pod = name("mp");
    ok(&e, &["run", "--name", &pod, "--", "python3", script.to_str().unwrap(), state.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(20), || read().0 > 100), "workers do not count: {:?}", text(&state));
    ok(&e, &["checkpoint", "--leave-running", &pod]);
    let second = json(&e, &["checkpoint", &pod]);
    assert!(second["mode"].as_str().unwrap_or("").starts_with("incremental"), "{second}");
    let (at, _) = read();
    ok(&e, &["restore", second["id"].as_str().unwrap()]);
    assert!(wait_for(Duration::from_secs(20), || read().0 > at + 100), "workers do not go on after the restore: {:?} (was {at})", text(&state));
    let (n, s) = read();
    assert_eq!(n, s, "the shared array's sum equals the shared counter");
}
