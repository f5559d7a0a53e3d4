//! Hosts for migration tests: `scripts/hosts.sh` with a topology of the test's own (namespace
//! prefix, LAN subnet and hosts' directory unique to the test), torn down on drop.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn zap_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zap"))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/hosts.sh")
}

/// A LAN with hosts a, b, c and a client.
pub struct Hosts {
    pub prefix: String,
    /// First three octets of the LAN.
    pub net: String,
    dir: tempfile::TempDir,
}

impl Hosts {
    /// Builds the topology, or prints `SKIP: ...` and returns None when the tools are missing.
    pub fn up() -> Option<Hosts> {
        for tool in ["ip", "nsenter", "unshare"] {
            if Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| !o.status.success()).unwrap_or(true) {
                eprintln!("SKIP: {tool} not available");
                return None;
            }
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("zm{:03x}{n}", pid % 0xfff);
        let net = format!("10.{}.{}", 160 + pid % 60, (pid / 60 % 20) * 10 + n % 10 + 1);
        let dir = tempfile::Builder::new().prefix("zap-hosts-").tempdir_in("/var/tmp").unwrap();
        let h = Hosts { prefix, net, dir };
        let out = h.script_cmd(&["up"]).output().unwrap();
        assert!(out.status.success(), "hosts.sh up: {}", String::from_utf8_lossy(&out.stderr));
        Some(h)
    }

    fn script_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(script())
            .args(args)
            .env("ZAP_HOSTS_PREFIX", &self.prefix)
            .env("ZAP_HOSTS_NET", &self.net)
            .env("ZAP_HOSTS_DIR", self.dir.path())
            .env("ZAP", zap_bin());
        c
    }

    /// The command line that runs `args` on host `h` (for `--via`).
    pub fn exec_line(&self, h: &str, args: &str) -> String {
        format!(
            "ZAP_HOSTS_PREFIX={} ZAP_HOSTS_NET={} ZAP_HOSTS_DIR={} bash {} exec {h} -- {args}",
            self.prefix,
            self.net,
            self.dir.path().display(),
            script().display()
        )
    }

    /// The `--via` command reaching `zap receive --stdio` on host `h`, with extra environment.
    pub fn via(&self, h: &str, env: &str) -> String {
        format!("{env} {}", self.exec_line(h, &format!("{} receive --stdio", zap_bin().display())))
    }

    /// Runs `args` on host `h` (or `client`).
    pub fn exec(&self, h: &str, args: &[&str]) -> Output {
        let mut a = vec!["exec", h, "--"];
        a.extend_from_slice(args);
        self.script_cmd(&a).output().unwrap()
    }

    /// Runs `zap ARGS` on host `h`, with extra environment.
    pub fn zap_env(&self, h: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        let bin = zap_bin();
        let mut a = vec!["exec", h, "--", bin.to_str().unwrap()];
        a.extend_from_slice(args);
        let mut c = self.script_cmd(&a);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    pub fn zap(&self, h: &str, args: &[&str]) -> Output {
        self.zap_env(h, &[], args)
    }

    /// `zap ARGS` on `h`, which must succeed; its stdout.
    pub fn ok(&self, h: &str, args: &[&str]) -> String {
        let out = self.zap(h, args);
        assert!(out.status.success(), "zap {args:?} on {h} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Host `h`'s Zap root.
    pub fn root(&self, h: &str) -> PathBuf {
        self.dir.path().join(h)
    }

    /// Keys on every host; each host accepts every other's. Returns nothing: `migrate` finds
    /// the destination's key with `key show`.
    pub fn keys(&self) {
        let hosts = ["a", "b", "c"];
        let keys: Vec<String> = hosts.iter().map(|h| self.ok(h, &["key", "gen"]).trim().to_string()).collect();
        for h in hosts {
            for (k, other) in keys.iter().zip(hosts) {
                if other != h {
                    self.ok(h, &["key", "allow", k, "--comment", other]);
                }
            }
        }
    }

    pub fn key_of(&self, h: &str) -> String {
        self.ok(h, &["key", "show"]).trim().to_string()
    }

    /// `zap migrate POD --via ... --peer-key K EXTRA` from `src` to `dst`.
    pub fn migrate(&self, src: &str, dst: &str, pod: &str, extra: &[&str]) -> Output {
        self.migrate_env(src, dst, pod, extra, &[], "")
    }

    /// Same, with environment for the source (`env`) and the destination (`dest_env`, shell words).
    pub fn migrate_env(&self, src: &str, dst: &str, pod: &str, extra: &[&str], env: &[(&str, &str)], dest_env: &str) -> Output {
        let key = self.key_of(dst);
        let via = self.via(dst, dest_env);
        let mut args = vec!["migrate", pod, "--via", &via, "--peer-key", &key];
        args.extend_from_slice(extra);
        self.zap_env(src, env, &args)
    }

    /// Starts `zap migrate POD` from `src` to `dst` like [`Hosts::migrate_env`], without waiting
    /// (stdout and stderr piped); the child is `zap migrate` itself (the script execs it).
    pub fn spawn_migrate(&self, src: &str, dst: &str, pod: &str, env: &[(&str, &str)], dest_env: &str) -> std::process::Child {
        let key = self.key_of(dst);
        let via = self.via(dst, dest_env);
        let bin = zap_bin();
        let mut c = self.script_cmd(&["exec", src, "--", bin.to_str().unwrap(), "migrate", pod, "--via", &via, "--peer-key", &key]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }

    /// The receiving workers (`zap __receive-worker`) of host `h`: their pids.
    pub fn workers(&self, h: &str) -> Vec<i32> {
        let want = format!("ZAP_ROOT={}", std::fs::canonicalize(self.root(h)).unwrap_or_else(|_| self.root(h)).display());
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !cmdline.split(|&b| b == 0).any(|a| a == b"__receive-worker") {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }

    /// The veth interfaces Zap made on host `h`.
    pub fn veths(&self, h: &str) -> Vec<String> {
        let out = self.exec(h, &["ip", "-o", "link"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(|n| n.trim_end_matches(':').split('@').next().unwrap_or("").to_string()))
            .filter(|n| n.starts_with("zv-"))
            .collect()
    }

    /// Checks that host `h` has nothing of pod `pod` (process, cgroup, veth, directory,
    /// tracker state, migration state, checkpoint in its store).
    pub fn assert_clean(&self, h: &str, pod: &str, init_pid: Option<i32>) {
        let root = self.root(h);
        assert!(!root.join("pods").join(pod).exists(), "{h}: pod directory of {pod} left");
        let cg = cgroup_parent(&root);
        for base in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory"] {
            assert!(!Path::new(base).join(&cg).join(pod).exists(), "{h}: cgroup {base}/{cg}/{pod} left");
        }
        assert!(self.veths(h).is_empty(), "{h}: veths left: {:?}", self.veths(h));
        if let Some(pid) = init_pid {
            let t = Instant::now();
            let running = |p: i32| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).ok().is_some_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
            };
            while running(pid) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(!running(pid), "{h}: init {pid} of {pod} still runs");
        }
        let sessions: Vec<_> = std::fs::read_dir(root.join("migrate"))
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("in-")).collect())
            .unwrap_or_default();
        assert!(sessions.is_empty(), "{h}: migration sessions left: {sessions:?}");
        let ls = self.zap(h, &["ls"]);
        let text = String::from_utf8_lossy(&ls.stdout);
        assert!(!text.lines().any(|l| l.split_whitespace().any(|w| w == pod)), "{h}: checkpoint of {pod} left: {text}");
    }

    /// Pod `pod`'s (vpid, comm) list on host `h`, from inside the pod.
    pub fn procs(&self, h: &str, pod: &str) -> Vec<(i32, String)> {
        let out = self.ok(h, &["exec", pod, "--", "ps", "-e", "-o", "pid=,comm="]);
        let mut v: Vec<(i32, String)> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.parse().ok()?, it.next()?.to_string()))
            })
            .filter(|(_, c)| c != "ps")
            .collect();
        v.sort();
        v
    }

    /// The pod's hostname and the MAC and address of its eth0, from inside it.
    pub fn identity(&self, h: &str, pod: &str) -> String {
        self.ok(h, &["exec", pod, "--", "sh", "-c", "hostname; ip -o link show eth0 | grep -o 'link/ether [0-9a-f:]*'; ip -o -4 addr show eth0 | awk '{print $4}'"])
    }

    /// The init pid of pod `pod` on `h`.
    pub fn init_pid(&self, h: &str, pod: &str) -> i32 {
        let v: serde_json::Value = serde_json::from_str(&self.ok(h, &["--json", "ps"])).unwrap();
        v.as_array().unwrap().iter().find(|p| p["name"] == pod).map(|p| p["init_pid"].as_i64().unwrap() as i32).expect("pod listed")
    }

    /// Runs a command in the client namespace.
    pub fn client(&self, args: &[&str]) -> Output {
        self.exec("client", args)
    }

    /// Starts `args` in the client namespace without waiting (stdout piped); the child is the
    /// command itself (the script execs it), for the caller to end by pid.
    pub fn spawn_client(&self, args: &[&str]) -> std::process::Child {
        let mut a = vec!["exec", "client", "--"];
        a.extend_from_slice(args);
        self.script_cmd(&a).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }

    /// A scratch directory that lives as long as the hosts.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = self.script_cmd(&["down"]).output();
    }
}

/// The cgroup parent Zap derives from root `r` (as `zap_engine::host::cgroup_parent_of`).
pub fn cgroup_parent(r: &Path) -> String {
    zap_engine::host::cgroup_parent_of(r)
}
