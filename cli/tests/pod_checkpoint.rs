//! Whole-pod checkpoint and restore from the command line, on real programs in real pods:
//! a shell pipeline, a process tree with sessions, groups, a zombie and shared memory (our C
//! program), a TCP server that accepts new clients after the restore (from the host and from
//! another pod; also in a second copy restored under another name and address), redis-server,
//! a python3 thread pool, System V IPC, a connection inside the pod, damaged checkpoints, and no
//! residue after `zap rm`. Established connections through checkpoints are in `tcp.rs`.
mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn name(tag: &str) -> String {
    pod_name("ck", tag)
}

fn read_num(p: &Path) -> u64 {
    std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn shell_pipeline_continues_after_restore() {
    let e = env();
    let pod = name("pipe");
    let count = e.work.join("count");
    let script = format!(
        "echo console-start; seq 1 100000000 | while read n; do echo $n > {c}.tmp; mv {c}.tmp {c}; [ $((n % 20)) = 0 ] && echo line $n; sleep 0.01; done",
        c = count.display()
    );
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || read_num(&count) >= 5), "pipeline did not start");
    let before_procs = stable_procs(&e, &pod);
    assert!(before_procs.iter().any(|(_, c)| c == "seq"), "{before_procs:?}");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    let at_checkpoint = read_num(&count);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_num(&count), at_checkpoint, "the pod stopped with the checkpoint");
    assert!(!String::from_utf8_lossy(&zap(&e, &["ps"]).stdout).contains(&pod), "checkpointed pod was removed");
    // A pod's name stands for its latest checkpoint; a name with none is refused, naming both.
    let none = zap(&e, &["restore", "no-such-pod"]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success() && err.contains("no pod named \"no-such-pod\""), "{err}");
    let restored = ok(&e, &["--json", "restore", &pod]);
    assert!(restored.contains(&id), "restored by name from the latest checkpoint {id}: {restored}");
    assert!(wait_for(Duration::from_secs(10), || read_num(&count) >= at_checkpoint + 5), "pipeline did not continue");
    let after = read_num(&count);
    assert!(after > at_checkpoint && after < at_checkpoint + 10_000, "counter continues from {at_checkpoint}: {after}");
    let after_procs = stable_procs(&e, &pod);
    assert_eq!(after_procs, before_procs, "same processes with the same pids");
    // The console log came along and goes on.
    let console = e.run.join(&pod).join("console.log");
    let text = || std::fs::read_to_string(&console).unwrap_or_default();
    assert!(text().starts_with("console-start\n"), "console log kept: {:?}", &text()[..text().len().min(200)]);
    let last_line = |t: &str| t.lines().filter_map(|l| l.strip_prefix("line ")?.parse::<u64>().ok()).next_back().unwrap_or(0);
    assert!(wait_for(Duration::from_secs(10), || last_line(&text()) > at_checkpoint), "console log continues after the restore");
}

#[test]
fn process_tree_in_a_pod() {
    let e = env();
    let Some(prog) = build_prog("tree", &e.work, &[]) else { return };
    let pod = name("tree");
    let (out, go, shared) = (e.work.join("out"), e.work.join("go"), e.work.join("shared"));
    std::fs::write(&shared, b"ab").unwrap();
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), shared.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready")), "no ready: {}", text());
    let before = pod_procs(&e, &pod);
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    assert_eq!(pod_procs(&e, &pod), before, "same tree with the same pids");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text().contains("ok") || text().contains("FAIL")), "{}", text());
    assert!(!text().contains("FAIL"), "{}", text());
}

const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7070))
s.listen()
served = 0
while served < 50:
    c, _ = s.accept()
    served += 1
    data = c.recv(64)
    c.sendall(b'served %d %s' % (served, data))
    c.close()
"#;

fn ask(addr: &str, msg: &str) -> std::io::Result<String> {
    let mut c = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(msg.as_bytes())?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok(s)
}

fn ask_retry(addr: &str, msg: &str) -> String {
    let t = Instant::now();
    loop {
        match ask(addr, msg) {
            Ok(s) => return s,
            Err(err) if t.elapsed() > Duration::from_secs(10) => panic!("no answer from {addr}: {err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn listening_tcp_server_accepts_after_restore_and_in_a_copy() {
    if Command::new("python3").arg("-c").arg("pass").status().is_err() {
        eprintln!("SKIP: python3 not installed");
        return;
    }
    let e = env();
    let net = 100 + (std::process::id() % 100);
    let (ip, ip2) = (format!("10.78.{net}.2/24"), format!("10.78.{net}.3/24"));
    let (addr, addr2) = (format!("10.78.{net}.2:7070"), format!("10.78.{net}.3:7070"));
    let pod = name("tcp");
    let copy = name("tcpcopy");
    ok(&e, &["run", "--name", &pod, "--ip", &ip, "--", "python3", "-c", SERVER]);
    let _g = PodGuard(&e, pod.clone());
    assert_eq!(ask_retry(&addr, "a"), "served 1 a");
    let mac = mac_of(&e, &pod);
    // A second copy of the running pod under another name and address.
    let id = ok(&e, &["checkpoint", "--leave-running", &pod]).trim().to_string();
    assert_eq!(ask(&addr, "b").unwrap(), "served 2 b", "the original runs on");
    // A copy at the same address as the running original is refused (and leaves nothing).
    let clash = zap(&e, &["restore", &id, "--name", &copy]);
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(!clash.status.success() && err.contains("is the address of running pod"), "{err}");
    assert!(!ok(&e, &["ps"]).contains(&copy), "no half-made copy");
    ok(&e, &["restore", &id, "--name", &copy, "--ip", &ip2]);
    let _g2 = PodGuard(&e, copy.clone());
    assert_eq!(ask_retry(&addr2, "c"), "served 2 c", "the copy continues from the checkpoint's state");
    // Checkpoint the original (it goes away) and bring it back at its address.
    let id2 = ok(&e, &["checkpoint", &pod]).trim().to_string();
    assert!(!ok(&e, &["ps"]).lines().any(|l| l.starts_with(&format!("{pod} "))), "the checkpointed pod is gone");
    ok(&e, &["restore", &id2]);
    assert_eq!(ask_retry(&addr, "d"), "served 3 d");
    assert_eq!(ask(&addr2, "e").unwrap(), "served 3 e");
    // A client in another pod (its own network namespace) reaches the restored server too.
    let client = name("tcpclient");
    let ip3 = format!("10.78.{net}.4/24");
    ok(&e, &["run", "--name", &client, "--ip", &ip3, "--", "sleep", "60"]);
    let _g3 = PodGuard(&e, client.clone());
    let server_ip = addr.split(':').next().unwrap();
    let probe = format!(
        "import socket\nc = socket.create_connection(('{server_ip}', 7070), timeout=10)\nc.sendall(b'f')\nprint(c.recv(64).decode())\n"
    );
    assert_eq!(ok(&e, &["exec", &client, "--", "python3", "-c", &probe]).trim(), "served 4 f");
    assert_eq!(ok(&e, &["exec", &pod, "--", "hostname"]).trim(), pod, "hostname kept");
    assert_eq!(mac_of(&e, &pod), mac, "MAC kept");
    let sys_mac = ok(&e, &["exec", &pod, "--", "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(sys_mac.trim(), mac, "the pod's /sys shows its own interface");
    assert_ne!(mac_of(&e, &copy), mac, "the copy at another address has its own MAC");
    // Removing the restored pod leaves nothing behind.
    let host_pids = host_pids_of(&e, &pod);
    assert!(!host_pids.is_empty());
    let mounts = host_mounts();
    ok(&e, &["rm", "-f", &pod]);
    assert_no_residue(&e, &pod, &host_pids, &mounts);
}

fn mac_of(e: &Env, pod: &str) -> String {
    // Through netlink: the pod's /sys is the host's.
    let out = ok(e, &["exec", pod, "--", "ip", "-o", "link", "show", "eth0"]);
    out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or_default().to_string()
}

/// Host pids of a pod's processes (init included), from `zap ps --json` and /proc.
fn host_pids_of(e: &Env, pod: &str) -> Vec<i32> {
    let ps: serde_json::Value = serde_json::from_str(&ok(e, &["--json", "ps"])).unwrap();
    let init = ps.as_array().unwrap().iter().find(|p| p["name"] == pod).expect("pod listed")["init_pid"].as_i64().unwrap() as i32;
    let mut pids = vec![init];
    pids.extend(descendants(init));
    pids
}

fn assert_no_residue(e: &Env, pod: &str, pids: &[i32], mounts_before: &str) {
    for &p in pids {
        let alive = wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z"))
                .unwrap_or(true)
        });
        assert!(alive, "process {p} of pod {pod} still runs");
    }
    for root in ["/sys/fs/cgroup/unified/zap", "/sys/fs/cgroup/zap", "/sys/fs/cgroup/memory/zap", "/sys/fs/cgroup/cpu/zap"] {
        assert!(!Path::new(root).join(pod).exists(), "cgroup {root}/{pod} left behind");
    }
    assert!(!e.run.join(pod).exists(), "pod directory left behind");
    let links = String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).into_owned();
    assert!(!links.contains(&zap_engine::pod::net::veth_name(pod)), "veth left behind: {links}");
    let mounts = host_mounts();
    assert_eq!(mounts.lines().count(), mounts_before.lines().count(), "mounts changed");
}

fn redis(host: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-h", host, "-p", "6379"]).args(args).output().expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_data_set_survives_and_answers_a_new_client() {
    if !installed(&["redis-server", "redis-cli"], "redis-server/redis-cli (scripts/setup.sh installs them)") {
        return;
    }
    let e = env();
    let net = 100 + (std::process::id() % 100);
    let ip = format!("10.79.{net}.2/24");
    let host = format!("10.79.{net}.2");
    let pod = name("redis");
    let data = e.work.join("redis");
    std::fs::create_dir_all(&data).unwrap();
    ok(&e, &["run", "--name", &pod, "--ip", &ip, "--", "redis-server", "--bind", "0.0.0.0", "--port", "6379", "--save", "",
        "--appendonly", "no", "--protected-mode", "no", "--enable-debug-command", "yes", "--dir", data.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || redis(&host, &["ping"]) == "PONG"), "redis did not start");
    // 20000 keys and a list, written through a pipe of commands.
    let mut cmds = String::new();
    for i in 0..20000 {
        cmds.push_str(&format!("SET key:{i} value-{}\n", i * 7));
    }
    for i in 0..500 {
        cmds.push_str(&format!("RPUSH list item-{i}\n"));
    }
    let mut child = Command::new("redis-cli")
        .args(["-h", &host, "-p", "6379", "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(cmds.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let digest = redis(&host, &["debug", "digest"]);
    assert_eq!(digest.len(), 40, "a digest, not an error: {digest}");
    assert_eq!(redis(&host, &["dbsize"]), "20001");
    let threads = |pod: &str| ok(&e, &["exec", pod, "--", "sh", "-c", "ls /proc/2/task | wc -l"]).trim().parse::<u32>().unwrap_or(0);
    let threads_before = threads(&pod);
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    // (Not probed over the network: with the pod gone its address is no longer local.)
    assert!(!ok(&e, &["ps"]).contains(&pod), "the checkpointed pod is gone");
    ok(&e, &["restore", &id]);
    assert!(wait_for(Duration::from_secs(10), || redis(&host, &["ping"]) == "PONG"), "restored redis does not answer");
    assert_eq!(redis(&host, &["dbsize"]), "20001");
    assert_eq!(redis(&host, &["debug", "digest"]), digest, "the data set is intact");
    assert_eq!(redis(&host, &["get", "key:12345"]), format!("value-{}", 12345 * 7));
    assert_eq!(redis(&host, &["lindex", "list", "499"]), "item-499");
    assert_eq!(redis(&host, &["set", "after", "restore"]), "OK");
    assert_eq!(redis(&host, &["get", "after"]), "restore");
    assert_eq!(threads(&pod), threads_before, "every redis thread is back");
}

#[test]
fn python_thread_pool_continues() {
    if !installed(&["python3"], "python3") {
        return;
    }
    let e = env();
    let pod = name("py");
    let out = e.work.join("py.out");
    // Each round, 4 workers square numbers; the main thread checks the sums and appends a line.
    let script = format!(
        "import concurrent.futures, time\n\
         f = open({:?}, 'a', buffering=1)\n\
         pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)\n\
         r = 0\n\
         while True:\n    r += 1\n    got = sum(pool.map(lambda x: x * x, range(r, r + 100)))\n    want = sum(x * x for x in range(r, r + 100))\n    f.write('%d %s\\n' % (r, 'ok' if got == want else 'BAD'))\n    time.sleep(0.01)\n",
        out.to_str().unwrap()
    );
    ok(&e, &["run", "--name", &pod, "--", "python3", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    let rounds = || std::fs::read_to_string(&out).unwrap_or_default().lines().count();
    assert!(wait_for(Duration::from_secs(20), || rounds() >= 10), "pool did not start");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    let at = rounds();
    ok(&e, &["restore", &id]);
    assert!(wait_for(Duration::from_secs(20), || rounds() >= at + 20), "pool did not continue");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("BAD"), "{text}");
    let nums: Vec<u64> = text.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "rounds continue without a gap or a restart");
    }
}

#[test]
fn system_v_shared_memory_and_semaphores() {
    let e = env();
    let Some(prog) = build_prog("sysv", &e.work, &[]) else { return };
    let pod = name("sysv");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    let token = format!("token-{}", std::process::id());
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), &token]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready")), "no ready: {}", text());
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text().contains("ok") || text().contains("FAIL")), "{}", text());
    assert!(!text().contains("FAIL"), "{}", text());
}

#[test]
fn connection_inside_the_pod_is_saved_and_tcp_close_gives_it_up() {
    if !installed(&["python3"], "python3") {
        return;
    }
    let e = env();
    let pod = name("tcpopen");
    let count = e.work.join("count");
    // An established TCP connection inside the pod (over its loopback), and a counter.
    let script = format!(
        "import socket, time\nl = socket.socket()\nl.bind(('127.0.0.1', 0))\nl.listen()\nc = socket.create_connection(l.getsockname())\ns, _ = l.accept()\nn = 0\nwhile True:\n    n += 1\n    open({c:?} + '.tmp', 'w').write(str(n))\n    __import__('os').rename({c:?} + '.tmp', {c:?})\n    time.sleep(0.01)\n",
        c = count.to_str().unwrap()
    );
    ok(&e, &["run", "--name", &pod, "--", "python3", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(20), || read_num(&count) >= 3), "counter did not start");
    // The connection is saved (a refused one is tested in tests/tcp.rs) and the pod runs on.
    ok(&e, &["checkpoint", "--leave-running", &pod]);
    let n = read_num(&count);
    assert!(wait_for(Duration::from_secs(5), || read_num(&count) > n + 5), "the pod runs on after the checkpoint");
    // With --tcp-close the connection is given up and the checkpoint goes through.
    ok(&e, &["checkpoint", "--tcp-close", "--leave-running", &pod]);
    let n = read_num(&count);
    assert!(wait_for(Duration::from_secs(5), || read_num(&count) > n + 5), "still running");
}

#[test]
fn corrupted_checkpoint_fails_restore_cleanly() {
    let e = env();
    let pod = name("corrupt");
    let count = e.work.join("count");
    let script = format!("i=0; while true; do i=$((i+1)); echo $i > {c}.tmp; mv {c}.tmp {c}; sleep 0.01; done", c = count.display());
    ok(&e, &["run", "--name", &pod, "--ip", &format!("10.81.{}.2/24", 100 + std::process::id() % 100), "--", "sh", "-c", &script]);
    let g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || read_num(&count) >= 3));
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    drop(g);
    // Flip bytes in the middle of every pack file: the chunks' BLAKE3 check must catch it.
    for p in std::fs::read_dir(e.store.join("packs")).unwrap().flatten() {
        let mut data = std::fs::read(p.path()).unwrap();
        let (mid, len) = (data.len() / 2, data.len());
        for b in &mut data[mid..(mid + 64).min(len)] {
            *b ^= 0x5a;
        }
        std::fs::write(p.path(), data).unwrap();
    }
    let mounts = host_mounts();
    let out = zap(&e, &["restore", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a restore from damaged chunks must fail");
    assert!(err.contains("chunk") || err.contains("pack"), "the error names what is damaged: {err}");
    eprintln!("restore of a damaged checkpoint: {}", err.trim());
    assert!(!ok(&e, &["ps"]).contains(&pod), "no half-restored pod is left");
    assert_no_residue(&e, &pod, &[], &mounts);
    let verify = zap(&e, &["store", "verify"]);
    assert!(!verify.status.success(), "verify reports the damage");
}

/// `tail -f` on a file another process of the pod appends to without pause: at nearly every stop
/// its inotify instance has events queued, which no interface reads without consuming. The stop
/// lets the pod run on a moment to read them, so every checkpoint succeeds (before, most of
/// them failed naming the queued events), and `tail` goes on after a restore.
#[test]
fn tail_follows_a_busy_file_through_checkpoints() {
    let e = env();
    if !installed(&["tail"], "tail") {
        return;
    }
    let pod = name("tail");
    let log = e.work.join("busy.log");
    let seen = e.work.join("seen.log");
    let script = format!(
        "touch {l}; tail -n 0 -f {l} > {s} & n=0; while :; do n=$((n+1)); echo $n >> {l}; done",
        l = log.display(),
        s = seen.display()
    );
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(wait_for(Duration::from_secs(10), || size(&seen) > 1000), "tail did not start following");
    for round in 0..8 {
        let out = zap(&e, &["checkpoint", &pod, "--leave-running"]);
        assert!(out.status.success(), "checkpoint {round} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    let stopped_at = size(&seen);
    ok(&e, &["restore", &id]);
    assert!(wait_for(Duration::from_secs(10), || size(&seen) > stopped_at + 1000), "tail does not follow after the restore");
    // What tail printed is what was appended, line by line in order (its inotify watch
    // came back on the same file).
    let text = std::fs::read_to_string(&seen).unwrap();
    let nums: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "tail's output skips or repeats lines");
}

/// Each pod has a devpts instance of its own: its pseudo-terminals are numbered from 0 whatever
/// the host and other pods hold, so a pod with a terminal session can be restored as a copy
/// beside the original (both hold pty 0; before, the copy failed: "pseudo-terminal 0 is in use").
#[test]
fn pods_number_their_terminals_apart_and_a_copy_gets_its_pty_back() {
    let e = env();
    if !installed(&["script"], "script (util-linux)") {
        return;
    }
    let pod = name("ptyc");
    let copy = name("ptyd");
    let out = e.work.join("tty");
    let script = format!("while :; do tty > {o}.$$; mv {o}.$$ {o}; sleep 0.05; done", o = out.display());
    ok(&e, &["run", "--name", &pod, "--", "script", "-qfc", &format!("sh -c '{script}'"), "/dev/null"]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&out).trim() == "/dev/pts/0"), "the session's terminal: {:?}", text(&out));
    let id = ok(&e, &["checkpoint", &pod, "--leave-running"]).trim().to_string();
    ok(&e, &["restore", &id, "--name", &copy]);
    let _c = PodGuard(&e, copy.clone());
    for p in [&pod, &copy] {
        let pts = ok(&e, &["exec", p, "--", "ls", "/dev/pts"]);
        assert!(pts.lines().any(|l| l == "0"), "pod {p}: /dev/pts holds {pts:?}");
    }
    // The copy's session goes on on its terminal (both write the same file: wait for a new write).
    let _ = std::fs::remove_file(&out);
    assert!(wait_for(Duration::from_secs(10), || text(&out).trim() == "/dev/pts/0"), "sessions go on: {:?}", text(&out));
    ok(&e, &["rm", "-f", &pod]);
    let _ = std::fs::remove_file(&out);
    assert!(wait_for(Duration::from_secs(10), || text(&out).trim() == "/dev/pts/0"), "the copy's session goes on alone: {:?}", text(&out));
}

/// Waits that the kernel restarts through its restart block when a tracer stops a thread (poll
/// with a timeout, nanosleep, relative clock_nanosleep, a futex wait with a timeout) go on after
/// a restore as waits, never failing with EINTR, also when an earlier stop (the pre-copy's arming
/// stop, or an earlier `--leave-running` checkpoint, whose notes the pod's directory keeps) left
/// them restarting (`restart_syscall`) in code that does not name the syscall (glibc's
/// `syscall()`, which `waits.c` uses for two of them). The
/// program (`waits.c`) exits on the first EINTR; util-linux's `script` did the same on its poll.
#[test]
fn interrupted_waits_go_on_after_a_restore_without_eintr() {
    let e = env();
    let Some(prog) = build_prog("waits", &e.work, &["-lpthread"]) else { return };
    let pod = name("waits");
    let copy = name("waitc");
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    let console = |p: &str| std::fs::read_to_string(e.run.join(p).join("console.log")).unwrap_or_default();
    let last = |text: &str, what: &str| {
        text.lines().filter_map(|l| l.strip_prefix(what)?.strip_prefix(' ')?.parse::<i64>().ok()).next_back().unwrap_or(0)
    };
    const WAITS: [&str; 4] = ["poll", "nanosleep", "clock_nanosleep", "futex"];
    let all_past = |p: &str, at: &[i64]| {
        let t = console(p);
        WAITS.iter().zip(at).all(|(w, &n)| last(&t, w) > n)
    };
    assert!(wait_for(Duration::from_secs(10), || all_past(&pod, &[1, 1, 1, 1])), "the waits did not start: {}", console(&pod));
    let pre = ok(&e, &["checkpoint", &pod, "--leave-running"]).trim().to_string();
    // The next commands stop the pod while waits the last one restarted still go on: they are
    // named from the notes the pod's directory keeps.
    ok(&e, &["checkpoint", &pod, "--leave-running"]);
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    for (ck, p) in [(&id, &pod), (&pre, &copy)] {
        let text = console(&pod);
        assert!(!text.contains("EINTR"), "before the restore: {text}");
        let at: Vec<i64> = WAITS.iter().map(|w| last(&text, w)).collect();
        if p == &copy {
            ok(&e, &["restore", ck, "--name", &copy]);
        } else {
            ok(&e, &["restore", ck]);
        }
        let _c = PodGuard(&e, copy.clone());
        assert!(wait_for(Duration::from_secs(10), || all_past(p, &at) || console(p).contains("EINTR")), "pod {p} does not go on");
        assert!(!console(p).contains("EINTR"), "a wait of pod {p} failed with EINTR after the restore: {}", console(p));
        if p == &pod {
            ok(&e, &["rm", "-f", &pod]);
        }
    }
}
