//! memcached in a pod with a client (python3, in the pod, over the pod's loopback) that holds one
//! connection: it stores 200 items and then increments a counter every 50 ms. The pod goes through
//! a `--leave-running` checkpoint, a checkpoint that ends it and a restore: the counter goes on
//! from where it was on the same connection (no reset, no gap), and the items read back whole.
mod common;

use std::time::Duration;

use common::*;

const CLIENT: &str = r#"
import os, socket, sys, time
out, go = sys.argv[1], sys.argv[2]
s = None
for _ in range(200):
    try:
        s = socket.create_connection(("127.0.0.1", 11311))
        break
    except OSError:
        time.sleep(0.05)
f = s.makefile("rb")
def line():
    return f.readline().decode().strip()
def val(i):
    return "value-%d-" % i + "x" * 100
for i in range(200):
    s.sendall(("set k%d 0 0 %d\r\n%s\r\n" % (i, len(val(i)), val(i))).encode())
    assert line() == "STORED"
s.sendall(b"set ctr 0 0 1\r\n0\r\n")
line()
checked = False
for n in range(4000):
    s.sendall(b"incr ctr 1\r\n")
    r = line()
    with open(out, "a") as o:
        o.write("ctr %s\n" % r)
    if not checked and os.path.exists(go):
        bad = 0
        for i in range(200):
            s.sendall(("get k%d\r\n" % i).encode())
            hdr, v, end = line(), line(), line()
            if v != val(i) or end != "END":
                bad += 1
        with open(out, "a") as o:
            o.write("keys %s\n" % ("ok" if bad == 0 else "FAIL %d" % bad))
        checked = True
    time.sleep(0.05)
"#;

fn counters(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.strip_prefix("ctr ")?.parse().ok()).collect()
}

#[test]
fn memcached_keeps_its_items_and_a_client_connection() {
    if !installed(&["memcached", "python3"], "memcached and python3") {
        return;
    }
    let e = env();
    let pod = pod_name("mc", "memcached");
    let (out, go, client) = (e.work.join("out"), e.work.join("go"), e.work.join("client.py"));
    std::fs::write(&client, CLIENT).unwrap();
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    let script = format!(
        "memcached -u nobody -l 127.0.0.1 -p 11311 -U 0 -t 2 & exec python3 {} {} {}",
        client.display(),
        out.display(),
        go.display()
    );
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(20), || counters(&text()).len() >= 3), "the client did not start: {}", text());
    ok(&e, &["checkpoint", &pod, "--leave-running"]);
    let before = counters(&text()).len();
    assert!(wait_for(Duration::from_secs(20), || counters(&text()).len() >= before + 3), "the pod did not run on: {}", text());
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    assert!(!ok(&e, &["ps"]).contains(&pod), "the checkpoint ended the pod");
    let last = counters(&text()).len();
    ok(&e, &["restore", &id]);
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || counters(&text()).len() >= last + 3 && text().contains("keys ")), "the client did not go on: {}", text());
    assert!(text().contains("keys ok"), "items after the restore: {}", text());
    let c = counters(&text());
    assert!(c.windows(2).all(|w| w[1] == w[0] + 1), "the counter goes on by one on the same connection: {c:?}");
    eprintln!("counter {}..{} ({} before the checkpoint that ended the pod)", c[0], c[c.len() - 1], last);
}
