//! Message queues in pods (`engine/tests/progs/msgq.c`): System V queues (key, id, mode,
//! `msg_qbytes`, messages with their types in order, a child blocked in `msgrcv`) and POSIX queues
//! (name, mode, `mq_maxmsg`, `mq_msgsize`, messages with their priorities, `O_NONBLOCK`, a child
//! blocked in `mq_receive`) go through a `--leave-running` checkpoint (the POSIX queues are emptied
//! and filled again while the pod is stopped: the program must find them as they were), then a
//! checkpoint that ends the pod and a restore. The POSIX queues that are refused (an `mq_notify`
//! registration, a full queue, an unlinked queue) fail the checkpoint with a clear error, and the
//! pod runs on with the queue as it was. A queue made through an mqueue mount of the pod's own
//! comes back too.
mod common;

use std::time::Duration;

use common::*;

fn name(tag: &str) -> String {
    pod_name("ki", tag)
}

/// What the kernel needs for System V queues: `msgrcv(MSG_COPY)` and `msg_next_id` come with
/// CONFIG_CHECKPOINT_RESTORE.
fn have_msg_copy() -> bool {
    let ok = std::path::Path::new("/proc/sys/kernel/msg_next_id").exists();
    if !ok {
        eprintln!("SKIP: the kernel lacks CONFIG_CHECKPOINT_RESTORE (no /proc/sys/kernel/msg_next_id, no msgrcv MSG_COPY)");
    }
    ok
}

#[test]
fn system_v_and_posix_message_queues_keep_their_messages_in_order() {
    if !have_msg_copy() {
        return;
    }
    let e = env();
    let Some(prog) = build_prog("msgq", &e.work, &["-lrt"]) else { return };
    let pod = name("msgq");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), "all"]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready") || text().contains("FAIL")), "no ready: {}", text());
    assert!(!text().contains("FAIL"), "{}", text());
    // The first checkpoint lets the pod run on: its queues must be left exactly as they were.
    ok(&e, &["checkpoint", &pod, "--leave-running"]);
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    assert!(!ok(&e, &["ps"]).contains(&pod), "the checkpoint ended the pod");
    ok(&e, &["restore", &id]);
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || text().contains("ok") || text().contains("FAIL")), "no verdict: {}", text());
    assert!(!text().contains("FAIL"), "{}", text());
}

/// Runs msgq.c holding a POSIX queue of `kind`: the checkpoint must fail naming `want`, and the
/// program must find its queue as it was.
fn refused(kind: &str, want: &str) {
    let e = env();
    let Some(prog) = build_prog("msgq", &e.work, &["-lrt"]) else { return };
    let pod = name(&format!("no-{kind}"));
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), kind]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready") || text().contains("FAIL")), "{kind}: {}", text());
    let res = zap(&e, &["checkpoint", &pod]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{kind}: the checkpoint must be refused");
    assert!(err.contains(want) && err.contains("zapq-r"), "{kind}: the error names the queue and why: {err}");
    eprintln!("{kind}: {}", err.trim());
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text().contains("ok") || text().contains("FAIL")), "{kind}: the pod must run on: {}", text());
    assert!(!text().contains("FAIL"), "{kind}: {}", text());
    let ls: serde_json::Value = serde_json::from_str(&ok(&e, &["--json", "ls"])).unwrap();
    assert_eq!(ls.as_array().map(|a| a.len()), Some(0), "a refused checkpoint stores nothing: {ls}");
}

#[test]
fn posix_queue_with_a_notification_registered_is_refused() {
    refused("notify", "mq_notify");
}

#[test]
fn full_posix_queue_is_refused_and_keeps_its_messages() {
    refused("full", "full");
}

#[test]
fn unlinked_posix_queue_is_refused() {
    refused("unlinked", "mq_unlink");
}

/// A POSIX queue made through an mqueue file system the pod mounted itself (`touch` on it: the
/// default attributes) comes back, seen through the same mount after the restore.
#[test]
fn queue_made_through_a_mount_in_the_pod_comes_back() {
    let e = env();
    let pod = name("mqmount");
    let w = e.work.join("w");
    std::fs::create_dir_all(&w).unwrap();
    let ready = w.join("ready");
    let script = format!("cd {w} && mkdir mq && mount -t mqueue none mq && touch mq/zapq && touch {ready} && exec sleep 1000", w = w.display(), ready = ready.display());
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || ready.exists()), "setup did not finish");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    let q = w.join("mq/zapq");
    let seen = ok(&e, &["exec", &pod, "--", "cat", q.to_str().unwrap()]);
    assert!(seen.starts_with("QSIZE:0"), "the queue through the pod's mount after the restore: {seen:?}");
}
