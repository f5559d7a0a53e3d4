//! What processes make inside a pod, checkpointed with the pod (which ends) and restored: mounts
//! (`mounts.c`), sub-cgroups (`cgroups.c`) and namespaces of their own (`nested.c`). Each C
//! program sets its state up, says "ready", waits for the go file the test creates after the
//! restore, checks everything it set up and says "ok" or "FAIL <why>". Plus what is refused
//! (the pod keeps running) and `zap rm` of pods whatever they made.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn name(tag: &str) -> String {
    pod_name("kp", tag)
}

/// Runs `prog` (built from engine/tests/progs) in a new pod with `opts`, waits for "ready",
/// checkpoints the pod with `--leave-running` (it goes on; `between` then looks at it), then
/// checkpoints it again (incremental; the pod ends), restores it, creates the go file and waits
/// for the program's verdict. Returns the program's output.
fn round_trip(e: &Env, tag: &str, prog: &str, opts: &[&str], extra: &[&str], between: &dyn Fn(&str)) -> Option<String> {
    let bin = build_prog(prog, &e.work, &["-pthread"])?;
    let pod = name(tag);
    let (out, go) = (e.work.join(format!("{tag}.out")), e.work.join(format!("{tag}.go")));
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    let mut args = vec!["run", "--name", &pod];
    args.extend_from_slice(opts);
    let (bin, out_s, go_s) = (bin.to_str().unwrap().to_string(), out.to_str().unwrap().to_string(), go.to_str().unwrap().to_string());
    args.extend(["--", bin.as_str(), out_s.as_str(), go_s.as_str()]);
    args.extend_from_slice(extra);
    ok(e, &args);
    let _g = PodGuard(e, pod.clone());
    assert!(wait_for(Duration::from_secs(20), || text().contains("ready") || text().contains("FAIL")), "no ready: {}", text());
    assert!(!text().contains("FAIL"), "{}", text());
    let before = stable_procs(e, &pod);
    ok(e, &["checkpoint", "--leave-running", &pod]);
    assert_eq!(stable_procs(e, &pod), before, "the pod goes on after --leave-running");
    between(&pod);
    assert!(!text().contains("FAIL"), "{}", text());
    let id = ok(e, &["checkpoint", &pod]).trim().to_string();
    assert!(!String::from_utf8_lossy(&zap(e, &["ps"]).stdout).contains(&pod), "checkpointed pod was removed");
    ok(e, &["restore", &id]);
    assert_eq!(stable_procs(e, &pod), before, "same processes with the same pids");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || text().contains("\nok") || text().contains("FAIL")), "no verdict: {}", text());
    assert!(!text().contains("FAIL"), "{}", text());
    Some(text())
}

#[test]
fn mounts_made_in_the_pod_come_back() {
    let e = env();
    let w = e.work.join("w");
    std::fs::create_dir(&w).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    round_trip(&e, "mounts", "mounts", &[], &[w.to_str().unwrap()], &|_| {});
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(w.to_str().unwrap()), "a pod mount reached the host");
    drop(mounts);
}

#[test]
fn sub_cgroups_made_in_the_pod_come_back() {
    let e = env();
    // Limits make the memory and cpu controllers available to the pod where cgroup v2 has them.
    // A checkpoint that lets the pod go on leaves the cgroup the pod froze frozen.
    let still_frozen = |pod: &str| {
        let st: serde_json::Value = serde_json::from_slice(&std::fs::read(e.run.join(pod).join("pod.json")).unwrap()).unwrap();
        let fz = Path::new(st["cgroup"].as_str().unwrap()).join("fz");
        assert_eq!(std::fs::read_to_string(fz.join("cgroup.freeze")).unwrap().trim(), "1");
        assert!(wait_for(Duration::from_secs(5), || std::fs::read_to_string(fz.join("cgroup.events")).unwrap().contains("frozen 1")));
    };
    let out = round_trip(&e, "cgroups", "cgroups", &["--memory", "256M", "--cpus", "1"], &[], &still_frozen);
    if let Some(out) = out {
        let ctrls = out.lines().find_map(|l| l.strip_prefix("ready")).unwrap_or("").trim().to_string();
        if ctrls.is_empty() {
            eprintln!("note: the pod's cgroup offered no controller here (hybrid hierarchy); tree, placement, threads, freezing and tree limits were checked");
        }
    }
}

#[test]
fn namespaces_made_in_the_pod_come_back() {
    if !Path::new("/proc/self/timens_offsets").exists() {
        eprintln!("SKIP: time namespaces (CONFIG_TIME_NS)");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIP: iproute2 (ip) not installed");
        return;
    }
    let e = env();
    let w = e.work.join("w");
    std::fs::create_dir(&w).unwrap();
    round_trip(&e, "nested", "nested", &[], &[w.to_str().unwrap()], &|_| {});
}

/// A pod running `script` (sh -c, in work directory W) whose checkpoint must fail naming
/// `expect`; the pod keeps running with the same processes and the store gets no checkpoint.
fn refused(e: &Env, tag: &str, script: &str, expect: &str) {
    let pod = name(tag);
    let w = e.work.join(tag);
    std::fs::create_dir_all(&w).unwrap();
    let ready = w.join("ready");
    let full = format!("cd {w} && {script} && touch {ready} && exec sleep 1000", w = w.display(), ready = ready.display());
    ok(e, &["run", "--name", &pod, "--", "sh", "-c", &full]);
    let _g = PodGuard(e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || ready.exists()), "{tag}: setup did not finish ({script})");
    // The main shell (pid 2) execs sleep right after `ready`: under load that can fall between
    // stable_procs' samples, which would then leave pid 2 out of `before`.
    assert!(wait_for(Duration::from_secs(10), || pod_procs(e, &pod).contains(&(2, "sleep".to_string()))), "{tag}: main did not exec sleep");
    let before = stable_procs(e, &pod);
    let listed = ok(e, &["ls"]);
    let out = zap(e, &["checkpoint", &pod]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{tag}: checkpoint should fail");
    assert!(err.contains(expect) && err.contains(&pod), "{tag}: {err}");
    eprintln!("{tag}: {}", err.trim());
    assert_eq!(stable_procs(e, &pod), before, "{tag}: the pod runs on");
    assert_eq!(ok(e, &["ls"]), listed, "{tag}: no checkpoint stored");
}

#[test]
fn what_cannot_be_restored_is_refused_and_the_pod_runs_on() {
    let e = env();
    if Command::new("unshare").arg("--help").output().is_err() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIP: unshare (util-linux) or ip (iproute2) not installed");
        return;
    }
    ok(&e, &["store", "init"]);
    refused(&e, "pidns", "(unshare --pid --fork sleep 1000 &) && sleep 0.3", "nested PID namespaces are not supported");
    refused(&e, "userns", "(unshare --user sleep 1000 &) && sleep 0.3", "user namespace of its own");
    refused(
        &e,
        "veth",
        "(unshare --net sh -c 'ip link add zv0 type veth peer name zv1 && exec sleep 1000' &) && sleep 0.5",
        "it has interface zv",
    );
    refused(&e, "nsfs", "touch nsf && mount --bind /proc/self/ns/net nsf", "namespace file");
    refused(
        &e,
        "overlay",
        "mkdir lo up wk ov && mount -t overlay overlay -o lowerdir=$PWD/lo,upperdir=$PWD/up,workdir=$PWD/wk ov && rmdir lo",
        "no longer exists",
    );
}

/// The mount tables of pod `pod`'s namespaces (the init's, then each other one a process is in),
/// normalized: per mount its mount point, root, options, type, source and super options, and
/// peer groups named by the mounts in them (numbers differ after a restore); sorted.
fn mount_tables(e: &Env, pod: &str) -> Vec<String> {
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(e.run.join(pod).join("pod.json")).unwrap()).unwrap();
    let init = st["init_pid"].as_i64().unwrap();
    let cg = Path::new(st["cgroup"].as_str().unwrap()).to_path_buf();
    let ns_of = |p: i64| std::fs::read_link(format!("/proc/{p}/ns/mnt")).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
    let mut seen = vec![ns_of(init)];
    let mut readers = vec![init];
    for p in std::fs::read_to_string(cg.join("cgroup.procs")).unwrap().lines().filter_map(|l| l.parse::<i64>().ok()) {
        let ns = ns_of(p);
        if !ns.is_empty() && !seen.contains(&ns) {
            seen.push(ns);
            readers.push(p);
        }
    }
    let mut rows = Vec::new();
    for (tag, p) in readers.iter().enumerate() {
        for l in std::fs::read_to_string(format!("/proc/{p}/mountinfo")).unwrap().lines() {
            let (left, right) = l.split_once(" - ").unwrap();
            let f: Vec<&str> = left.split(' ').collect();
            rows.push((tag, f[3].to_string(), f[4].to_string(), f[5].to_string(), f[6..].iter().map(|s| s.to_string()).collect::<Vec<_>>(), right.to_string()));
        }
    }
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in &rows {
        for o in &r.4 {
            if let Some(g) = o.strip_prefix("shared:") {
                groups.entry(g.to_string()).or_default().push(format!("{}{}", r.0, r.2));
            }
        }
    }
    let label = |g: &str| groups.get(g).map(|v| { let mut v = v.clone(); v.sort(); v.join("|") }).unwrap_or_else(|| format!("outside:{g}"));
    let mut out: Vec<String> = rows
        .iter()
        .map(|(tag, root, mp, opts, optional, right)| {
            let prop: Vec<String> = optional
                .iter()
                .map(|o| match o.split_once(':') {
                    Some((k @ ("shared" | "master"), g)) => format!("{k}:{}", label(g)),
                    _ => o.clone(),
                })
                .collect();
            format!("{tag} {mp} {root} {opts} [{}] {right}", prop.join(" "))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn mount_tables_come_back_the_same() {
    if Command::new("unshare").arg("--help").output().is_err() {
        eprintln!("SKIP: unshare (util-linux) not installed");
        return;
    }
    let e = env();
    let pod = name("mtab");
    let w = e.work.join("w");
    std::fs::create_dir(&w).unwrap();
    // systemd-like: everything shared; a tmpfs with a bind of a subdirectory (peers), a slave
    // bind, a read-only bind of a host directory; a process in a slave copy of the namespace
    // with a tmpfs of its own under a shared mount and one of the pod's mounts gone.
    let script = format!(
        "cd {w} && mount --make-rshared / && mkdir -p a b s h hb && mount -t tmpfs -o size=1m,mode=700 ta a && mkdir a/sub && \
         mount --bind a/sub b && mount --bind a s && mount --make-slave s && mount --bind h hb && mount -o remount,bind,ro hb && \
         (unshare --mount --propagation slave sh -c 'umount {w}/hb; mount -t tmpfs tn {w}/a/sub; touch {w}/nested-ready; exec sleep 1000' &) && \
         while [ ! -e nested-ready ]; do sleep 0.05; done; touch ready; exec sleep 1000",
        w = w.display()
    );
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || w.join("ready").exists()), "setup did not finish");
    let before = mount_tables(&e, &pod);
    assert!(before.iter().any(|l| l.starts_with("1 ")), "no nested namespace: {before:#?}");
    assert!(before.iter().any(|l| l.contains("[master:")) && before.iter().any(|l| l.contains("[shared:")), "{before:#?}");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    let after = mount_tables(&e, &pod);
    let gone: Vec<_> = before.iter().filter(|l| !after.contains(l)).collect();
    let new: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!(gone.is_empty() && new.is_empty(), "mount tables differ:\nbefore only: {gone:#?}\nafter only: {new:#?}");
}
