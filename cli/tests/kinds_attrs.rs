//! Process attributes, processes of other users and stopped processes, each kind run in a pod
//! by a small C program of `engine/tests/progs` (the protocol of `zaptest.h`: it sets its state
//! up, says "ready", waits for the go file after the restore, checks what it sees against what
//! it set up and says "ok" or "FAIL <why>"); the pod is checkpointed (it ends), restored, and the
//! program's verdict read. Then real servers that drop privileges (our own preforking server;
//! nginx with its master as root and workers as www-data) checkpointed while a client fetches
//! pages, answering new clients after the restore. A process traced by another tracer is
//! refused, leaving its pod running.
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn name(tag: &str) -> String {
    pod_name("at", tag)
}

/// Lets processes of other users (nobody, www-data) reach the test's work directory.
fn open_work_dir(e: &Env) {
    for dir in [e.work.parent().unwrap(), e.work.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Prints the program's notes (parts the kernel refused before the checkpoint) as skips.
fn print_notes(out: &str) {
    for l in out.lines().filter_map(|l| l.strip_prefix("note: ")) {
        eprintln!("SKIP: {l}");
    }
}

/// Runs `prog OUT GO ARGS...` in a new pod, waits for `ready` lines (all of `ready`), then
/// checkpoints the pod (which ends it), restores it, creates the go file and waits until every
/// line of `verdicts` is there (or a FAIL). Returns the output and the restore's warnings.
fn cycle(e: &Env, tag: &str, prog: &Path, args: &[&str], ready: &[&str], verdicts: &[&str]) -> (String, Vec<String>) {
    let pod = name(tag);
    let (out, go) = (e.work.join(format!("{tag}.out")), e.work.join(format!("{tag}.go")));
    let mut argv = vec![prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap()];
    argv.extend_from_slice(args);
    let mut run = vec!["run", "--name", &pod, "--"];
    run.extend_from_slice(&argv);
    ok(e, &run);
    let _g = PodGuard(e, pod.clone());
    let has = |t: &str, l: &str| t.lines().any(|x| x == l);
    assert!(
        wait_for(Duration::from_secs(20), || { let t = text(&out); t.contains("FAIL") || ready.iter().all(|r| has(&t, r)) }),
        "{tag}: not ready: {}",
        text(&out)
    );
    assert!(!text(&out).contains("FAIL"), "{tag}: {}", text(&out));
    let id = ok(e, &["checkpoint", &pod]).trim().to_string();
    assert!(!ok(e, &["ps"]).lines().any(|l| l.starts_with(&format!("{pod} "))), "{tag}: the checkpointed pod is gone");
    let restored = json(e, &["restore", &id]);
    let warnings: Vec<String> =
        restored["warnings"].as_array().map(|w| w.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default();
    std::fs::write(&go, b"go").unwrap();
    let done = wait_for(Duration::from_secs(30), || {
        let t = text(&out);
        t.contains("FAIL") || verdicts.iter().all(|v| has(&t, v))
    });
    let t = text(&out);
    assert!(done && !t.contains("FAIL"), "{tag}: {t}\nrestore warnings: {warnings:?}");
    print_notes(&t);
    (t, warnings)
}

#[test]
fn other_user_with_caps_limits_securebits_and_seccomp() {
    let e = env();
    open_work_dir(&e);
    let Some(prog) = build_prog("attrs_user", &e.work, &[]) else { return };
    let (_, warnings) = cycle(&e, "user", &prog, &["81"], &["ready"], &["ok"]);
    assert!(warnings.is_empty(), "restored without warnings: {warnings:?}");
}

/// Kills a process this test restored when dropped (its namespace init then ends by itself).
struct KillOnDrop(i32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill takes integers; the pid is a process this test restored.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[test]
fn other_user_process_outside_a_pod() {
    use std::os::unix::process::CommandExt;
    let e = env();
    open_work_dir(&e);
    let Some(prog) = build_prog("attrs_user", &e.work, &[]) else { return };
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    let port = (900 + std::process::id() % 100).to_string();
    let mut cmd = Command::new(&prog);
    // No stream that leads to this test: a restored process would get `zap restore`'s instead.
    let null = std::process::Stdio::null;
    cmd.arg(&out).arg(&go).arg(&port).stdin(null()).stdout(null()).stderr(null());
    // SAFETY: close_range only touches the child's fd table before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().to_string();
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready") || text(&out).contains("FAIL")), "{}", text(&out));
    let id = json(&e, &["checkpoint", "--pid", &pid])["id"].as_str().unwrap().to_string();
    child.wait().unwrap(); // ended by the checkpoint
    let r = json(&e, &["restore", &id]);
    let _guard = KillOnDrop(r["pid"].as_i64().unwrap() as i32);
    assert_eq!(r["warnings"].as_array().map_or(0, |w| w.len()), 0, "{r}");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ok") || text(&out).contains("FAIL")), "{}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));
}

#[test]
fn setuid_program_and_root_without_capabilities() {
    let e = env();
    let Some(prog) = build_prog("attrs_setuid", &e.work, &[]) else { return };
    let file = e.work.join("owned");
    std::fs::write(&file, b"x").unwrap();
    let (_, warnings) = cycle(&e, "setuid", &prog, &[file.to_str().unwrap()], &["ready", "child ready"], &["ok", "child ok"]);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn scheduling_and_per_thread_attributes() {
    let e = env();
    let Some(prog) = build_prog("attrs_sched", &e.work, &[]) else { return };
    let (_, warnings) = cycle(&e, "sched", &prog, &[], &["ready"], &["ok"]);
    // Setting a loginuid starts a new audit session: the only warning allowed.
    assert!(warnings.iter().all(|w| w.contains("audit sessionid")), "{warnings:?}");
}

#[test]
fn seccomp_filters_in_order_and_strict_mode() {
    let e = env();
    let Some(prog) = build_prog("attrs_seccomp", &e.work, &[]) else { return };
    let (_, warnings) = cycle(&e, "seccomp", &prog, &[], &["ready", "child ready"], &["ok", "child ok"]);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn stopped_processes_stay_stopped_with_their_signal() {
    let e = env();
    let Some(prog) = build_prog("attrs_stop", &e.work, &[]) else { return };
    cycle(&e, "stop", &prog, &[], &["ready"], &["ok"]);
}

#[test]
fn job_stopped_from_a_shell_comes_back_stopped() {
    if Command::new("bash").arg("-c").arg("true").status().is_err() {
        eprintln!("SKIP: bash not installed");
        return;
    }
    let e = env();
    let pod = name("job");
    let w = |f: &str| e.work.join(f).to_str().unwrap().to_string();
    // Job control on: the job is in a group of its own; `kill -TSTP %1` stops it as ^Z would.
    // The shell then waits without forking (a builtin `read` with a timeout on a FIFO it holds
    // open both ways), so the checkpoint never finds it between a fork and an exec.
    let script = format!(
        "set -m; sleep 1000 & while [ \"$(cat /proc/$!/comm)\" != sleep ]; do :; done; kill -TSTP %1; while ! jobs -l | grep -q Stopped; do sleep 0.02; done; mkfifo {fifo}; exec 5<>{fifo}; \
         echo ready > {out}; while [ ! -e {go} ]; do read -t 0.05 -u 5 x; done; ps -o stat= -p $! > {s1}; jobs -l > {jobs}; \
         kill -CONT %1; sleep 0.3; ps -o stat= -p $! > {s2}; kill %1; wait; echo done >> {out}",
        fifo = w("fifo"),
        out = w("out"),
        go = w("go"),
        s1 = w("state1"),
        s2 = w("state2"),
        jobs = w("jobs")
    );
    ok(&e, &["run", "--name", &pod, "--", "bash", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&e.work.join("out")).contains("ready")), "job not stopped");
    // A checkpoint that lets the pod run on leaves the job stopped and the shell undisturbed.
    let job_state = || ok(&e, &["exec", &pod, "--", "ps", "-e", "-o", "stat=,comm="]);
    ok(&e, &["checkpoint", "--leave-running", &pod]);
    std::thread::sleep(Duration::from_millis(200));
    let stat = job_state();
    assert!(stat.lines().any(|l| l.trim_start().starts_with('T') && l.ends_with("sleep")), "still stopped after --leave-running: {stat}");
    assert!(stat.lines().any(|l| l.ends_with("bash")), "the shell runs on: {stat}");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    let stat = job_state();
    assert!(stat.lines().any(|l| l.trim_start().starts_with('T') && l.ends_with("sleep")), "the job is stopped after the restore: {stat}");
    std::fs::write(e.work.join("go"), b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text(&e.work.join("out")).contains("done")), "shell did not finish");
    assert!(text(&e.work.join("state1")).trim_start().starts_with('T'), "stopped: {}", text(&e.work.join("state1")));
    assert!(text(&e.work.join("jobs")).contains("Stopped"), "bash sees its job stopped: {}", text(&e.work.join("jobs")));
    assert!(!text(&e.work.join("state2")).trim_start().starts_with('T'), "resumed by SIGCONT: {}", text(&e.work.join("state2")));
}

#[test]
fn posix_timers_signal_the_same_thread() {
    let e = env();
    let Some(prog) = build_prog("attrs_timer", &e.work, &[]) else { return };
    cycle(&e, "timer", &prog, &[], &["ready"], &["ok"]);
}

/// Processes working in directories removed since (a parent in one whose parent directory
/// remains, its child in a tree removed whole) are checkpointed and restored still working in a
/// removed directory (`engine/tests/progs/cwdgone.c` checks getcwd, "." and creating in it).
/// Before, the checkpoint ended the pod and its restore failed at chdir.
#[test]
fn working_directories_removed_since_come_back_removed() {
    let e = env();
    let Some(prog) = build_prog("cwdgone", &e.work, &[]) else { return };
    let dir = e.work.join("dir");
    std::fs::create_dir_all(&dir).unwrap();
    cycle(&e, "cwdgone", &prog, &[dir.to_str().unwrap()], &["ready"], &["ok"]);
    assert!(dir.join("made-after").exists());
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|d| d.file_name()).collect();
    assert_eq!(left.len(), 1, "nothing left beside the removed directories: {left:?}");
}

/// A chrooted process (`chrooted.c`) with files opened before and after its chroot is
/// checkpointed and restored chrooted, in the same working directory, its files at their
/// offsets. Before, its checkpoint failed (its fds' paths were looked for inside the jail).
#[test]
fn chrooted_process_comes_back_chrooted_with_its_files() {
    let e = env();
    let Some(prog) = build_prog("chrooted", &e.work, &[]) else { return };
    let dir = e.work.join("dir");
    std::fs::create_dir_all(dir.join("jail")).unwrap();
    let pod = name("chroot");
    let out = e.work.join("out");
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), "-", dir.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready") || text(&out).contains("FAIL")), "{}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    std::fs::write(dir.join("jail/sub/go"), b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ok") || text(&out).contains("FAIL")), "no verdict: {}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));
}

/// A working directory whose path now leads to another directory (one mounted over it) is
/// refused by name; the pod runs on. (A renamed one is not: its link shows the new path.)
#[test]
fn working_directory_whose_path_leads_elsewhere_is_refused() {
    let e = env();
    let Some(prog) = build_prog("cwdgone", &e.work, &[]) else { return };
    let dir = e.work.join("dir");
    std::fs::create_dir_all(&dir).unwrap();
    let pod = name("cwdcovered");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), dir.to_str().unwrap(), "covered"]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready") || text(&out).contains("FAIL")), "{}", text(&out));
    let res = zap(&e, &["checkpoint", &pod]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && err.contains("working directory") && err.contains("leads to another directory"), "{err}");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ok")), "the pod runs on: {}", text(&out));
}

#[test]
fn process_traced_by_another_tracer_is_refused_and_keeps_running() {
    let e = env();
    let Some(prog) = build_prog("attrs_traced", &e.work, &[]) else { return };
    let pod = name("traced");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready")), "{}", text(&out));
    let r = zap(&e, &["checkpoint", &pod]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("is traced by process"), "refused naming the tracer: {err}");
    assert!(ok(&e, &["ps"]).lines().any(|l| l.starts_with(&format!("{pod} ")) && l.contains("running")), "the pod runs on");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ok") || text(&out).contains("FAIL")), "{}", text(&out));
    assert!(text(&out).contains("child runs") && !text(&out).contains("FAIL"), "{}", text(&out));
}

/// One HTTP/1.0 GET on a fresh connection: the body, or why not.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut c = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: zap\r\n\r\n").as_bytes())?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    match s.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad answer: {:?}", &s[..s.len().min(80)]))),
    }
}

/// (user, pid in the pod) of the pod's nginx processes.
fn nginx_procs(e: &Env, pod: &str) -> Vec<(String, i32)> {
    let out = ok(e, &["exec", pod, "--", "ps", "-e", "-o", "user=,pid=,comm="]);
    let mut v: Vec<(String, i32)> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "nginx").then(|| (f[0].to_string(), f[1].parse().unwrap_or(0)))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn nginx_master_as_root_workers_as_www_data_serve_across_checkpoints() {
    if Command::new("nginx").arg("-v").output().is_err() {
        eprintln!("SKIP: nginx not installed");
        return;
    }
    if !Command::new("id").arg("www-data").output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP: no www-data user");
        return;
    }
    let e = env();
    open_work_dir(&e);
    let www = e.work.join("www");
    std::fs::create_dir_all(e.work.join("tmp")).unwrap();
    std::fs::create_dir_all(&www).unwrap();
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).unwrap();
    let page: String = (0..2000).map(|i| format!("line {i} of the page\n")).collect();
    std::fs::write(www.join("index.html"), "hello from nginx\n").unwrap();
    std::fs::write(www.join("big.html"), &page).unwrap();
    let w = |p: &str| e.work.join(p).to_str().unwrap().to_string();
    let conf = format!(
        "worker_processes 2; user www-data; pid {pid}; error_log {err}; daemon off; master_process on;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;\n\
         uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi; keepalive_timeout 0;\n\
         server {{ listen 8080; root {www}; location / {{ }} }} }}\n",
        pid = w("nginx.pid"),
        err = w("error.log"),
        t = w("tmp"),
        www = www.display()
    );
    std::fs::write(e.work.join("nginx.conf"), conf).unwrap();
    let net = 100 + (std::process::id() % 100);
    let (ip, addr) = (format!("10.81.{net}.2/24"), format!("10.81.{net}.2:8080"));
    let pod = name("nginx");
    ok(&e, &["run", "--name", &pod, "--ip", &ip, "--", "nginx", "-c", &w("nginx.conf")]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || http_get(&addr, "/").is_ok()), "nginx does not answer: {}", text(&e.work.join("error.log")));
    let procs = nginx_procs(&e, &pod);
    let users: Vec<&str> = procs.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(users, ["root", "www-data", "www-data"], "master as root, workers as www-data: {procs:?}");
    // A client fetching pages without pause, for at most 60 s or 20,000 requests.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = {
        let (addr, stop, page, served) = (addr.clone(), stop.clone(), page.clone(), served.clone());
        std::thread::spawn(move || {
            let (mut good, mut bad, t0) = (Vec::new(), 0u32, Instant::now());
            for i in 0..20_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(60) {
                    break;
                }
                match http_get(&addr, if i % 2 == 0 { "/" } else { "/big.html" }) {
                    Ok(body) => {
                        assert!(body == "hello from nginx\n" || body == page, "wrong page: {:?}", &body[..body.len().min(60)]);
                        good.push(Instant::now());
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => bad += 1,
                }
            }
            (good, bad)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // While it serves: a checkpoint that arms dirty tracking in every process (www-data ones
    // too), then an incremental one, with no flag: connections caught open are saved and come back.
    json(&e, &["checkpoint", "--leave-running", &pod]);
    let second = json(&e, &["checkpoint", "--leave-running", &pod]);
    let mode = second["mode"].as_str().unwrap_or_default().to_string();
    assert!(mode.starts_with("incremental: 3 of 3"), "every process tracked, the workers of www-data too: {mode}");
    // The checkpoint that ends the pod, then the restore, while the client goes on.
    let id = json(&e, &["checkpoint", &pod])["id"].as_str().unwrap().to_string();
    let ended = Instant::now();
    let served_before = served.load(std::sync::atomic::Ordering::Relaxed);
    ok(&e, &["restore", &id]);
    assert!(wait_for(Duration::from_secs(10), || http_get(&addr, "/big.html").is_ok_and(|b| b == page)), "restored nginx answers");
    assert_eq!(nginx_procs(&e, &pod), procs, "same processes, pids and users after the restore");
    let status = |pid: i32| ok(&e, &["exec", &pod, "--", "cat", &format!("/proc/{pid}/status")]);
    for (user, pid) in &procs {
        let st = status(*pid);
        let cap_eff = st.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap_or("").trim().to_string();
        if user == "www-data" {
            assert!(st.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().skip(1).all(|u| u == "33")), "worker uids: {st}");
            assert_eq!(cap_eff, "0000000000000000", "a worker has no capabilities");
        } else {
            assert_ne!(cap_eff, "0000000000000000", "the master keeps root's capabilities");
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    // The master still manages its workers: a reload starts new ones, which drop to www-data.
    ok(&e, &["exec", &pod, "--", "sh", "-c", &format!("kill -HUP $(cat {})", w("nginx.pid"))]);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let now = nginx_procs(&e, &pod);
            now.len() == 3 && now[0] == procs[0] && now[1..].iter().all(|p| p.0 == "www-data" && !procs.contains(p))
        }),
        "reload replaced the workers: {:?}",
        nginx_procs(&e, &pod)
    );
    assert_eq!(http_get(&addr, "/").unwrap(), "hello from nginx\n", "new workers serve");
    wait_for(Duration::from_secs(15), || served.load(std::sync::atomic::Ordering::Relaxed) >= served_before + 10);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (good, bad) = client.join().unwrap();
    let after = good.iter().filter(|t| **t > ended).count();
    assert!(good.len() > after && after >= 10, "the client was served before ({}) and after ({after}) the restore; {bad} failed", good.len() - after);
}
