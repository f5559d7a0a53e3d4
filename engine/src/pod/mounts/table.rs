//! A mount namespace's table as `/proc/.../mountinfo` shows it, and how two tables differ.
//!
//! A mount is named across namespaces and across hosts by its *key*: the mount points of its
//! ancestors from the namespace's root mount down to itself (`["/", "/sys", "/sys"]` is a sysfs
//! mounted over the host's `/sys`). Mount ids differ between a namespace and its copy and
//! between hosts; keys do not. Two entries are the same mount when key, device, root and file
//! system type agree.
use std::collections::HashMap;

use crate::sys::mount::attr;

/// One mount of a mountinfo table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Mount id (field 1).
    pub id: u64,
    /// Parent's mount id (field 2; the root mount's parent is not in the table).
    pub parent: u64,
    /// Device of the file system (`major:minor`).
    pub dev: (u32, u32),
    /// The directory of the file system mounted here (field 4).
    pub root: String,
    /// Mount point (field 5).
    pub mountpoint: String,
    /// Per-mount attributes ([`attr`] bits) from field 6.
    pub flags: u64,
    /// Peer group (`shared:N`).
    pub shared: Option<u64>,
    /// Master peer group (`master:N`).
    pub master: Option<u64>,
    /// `unbindable`.
    pub unbindable: bool,
    /// File system type.
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Super block options.
    pub super_opts: String,
}

/// A mountinfo table, in the kernel's order (creation order on Linux 6.8+).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// The mounts.
    pub mounts: Vec<Entry>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("path {s:?} is not UTF-8"))
}

/// Per-mount attributes of a mountinfo options field (`rw,nosuid,relatime`).
pub fn mount_flags(opts: &str) -> u64 {
    let mut f = 0;
    for o in opts.split(',') {
        f |= match o {
            "ro" => attr::RDONLY,
            "nosuid" => attr::NOSUID,
            "nodev" => attr::NODEV,
            "noexec" => attr::NOEXEC,
            "noatime" => attr::NOATIME,
            "nodiratime" => attr::NODIRATIME,
            "nosymfollow" => attr::NOSYMFOLLOW,
            _ => 0,
        };
    }
    // Neither relatime nor noatime shown: strictatime.
    if !opts.split(',').any(|o| o == "relatime" || o == "noatime") {
        f |= attr::STRICTATIME;
    }
    f
}

/// Every per-mount attribute bit [`mount_flags`] knows.
pub const ALL_FLAGS: u64 = attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC | attr::ATIME_MASK | attr::NODIRATIME | attr::NOSYMFOLLOW;

impl Table {
    /// Parses a mountinfo text.
    pub fn parse(text: &str) -> Result<Table, String> {
        let mut mounts = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let bad = |what: &str| format!("unreadable {what} in mountinfo line {line:?}");
            let (left, right) = line.split_once(" - ").ok_or_else(|| bad("separator"))?;
            let f: Vec<&str> = left.split(' ').collect();
            if f.len() < 6 {
                return Err(bad("fields"));
            }
            let (maj, min) = f[2].split_once(':').ok_or_else(|| bad("device"))?;
            let mut e = Entry {
                id: f[0].parse().map_err(|_| bad("mount id"))?,
                parent: f[1].parse().map_err(|_| bad("parent id"))?,
                dev: (maj.parse().map_err(|_| bad("device"))?, min.parse().map_err(|_| bad("device"))?),
                root: unescape(f[3])?,
                mountpoint: unescape(f[4])?,
                flags: mount_flags(f[5]),
                shared: None,
                master: None,
                unbindable: false,
                fstype: String::new(),
                source: String::new(),
                super_opts: String::new(),
            };
            for opt in &f[6..] {
                if let Some(n) = opt.strip_prefix("shared:") {
                    e.shared = Some(n.parse().map_err(|_| bad("peer group"))?);
                } else if let Some(n) = opt.strip_prefix("master:") {
                    e.master = Some(n.parse().map_err(|_| bad("master group"))?);
                } else if *opt == "unbindable" {
                    e.unbindable = true;
                }
            }
            let r: Vec<&str> = right.splitn(3, ' ').collect();
            e.fstype = unescape(r.first().ok_or_else(|| bad("type"))?)?;
            e.source = unescape(r.get(1).copied().unwrap_or("none"))?;
            e.super_opts = r.get(2).copied().unwrap_or("").to_string();
            mounts.push(e);
        }
        Ok(Table { mounts })
    }

    fn by_id(&self) -> HashMap<u64, usize> {
        self.mounts.iter().enumerate().map(|(i, m)| (m.id, i)).collect()
    }

    /// Index of the parent of mount `i` (None for the root mount).
    pub fn parent_of(&self, i: usize) -> Option<usize> {
        let ids = self.by_id();
        ids.get(&self.mounts[i].parent).copied().filter(|&p| p != i)
    }

    /// The key of every mount (see the module doc), by index.
    pub fn keys(&self) -> Vec<Vec<String>> {
        let ids = self.by_id();
        (0..self.mounts.len())
            .map(|i| {
                let mut chain = vec![self.mounts[i].mountpoint.clone()];
                let mut cur = i;
                let mut guard = 0;
                while let Some(&p) = ids.get(&self.mounts[cur].parent).filter(|&&p| p != cur) {
                    chain.push(self.mounts[p].mountpoint.clone());
                    cur = p;
                    guard += 1;
                    if guard > self.mounts.len() {
                        break;
                    }
                }
                chain.reverse();
                chain
            })
            .collect()
    }

    /// Index of the mount with key `key` and type `fstype`.
    pub fn find(&self, keys: &[Vec<String>], key: &[String], fstype: &str) -> Option<usize> {
        (0..self.mounts.len()).find(|&i| keys[i] == key && self.mounts[i].fstype == fstype)
    }

    /// Ancestors of mount `i` from the root mount down, `i` included.
    pub fn chain(&self, i: usize) -> Vec<usize> {
        let mut out = vec![i];
        let mut cur = i;
        while let Some(p) = self.parent_of(cur) {
            if out.contains(&p) {
                break;
            }
            out.push(p);
            cur = p;
        }
        out.reverse();
        out
    }

    /// Mounts that keep mount `i` from being reached by its path: for each mount on the way from
    /// the root, a sibling mounted at or above the next mount point, and mounts stacked on `i`
    /// itself.
    pub fn hiders(&self, i: usize) -> Vec<usize> {
        let chain = self.chain(i);
        let mut out = Vec::new();
        for w in chain.windows(2) {
            let (p, c) = (w[0], w[1]);
            for (x, m) in self.mounts.iter().enumerate() {
                if x != c && m.parent == self.mounts[p].id && x != p && path_within(&self.mounts[c].mountpoint, &m.mountpoint) {
                    out.push(x);
                }
            }
        }
        for (x, m) in self.mounts.iter().enumerate() {
            if x != i && m.parent == self.mounts[i].id && m.mountpoint == self.mounts[i].mountpoint {
                out.push(x);
            }
        }
        out
    }
}

/// True when `path` is `dir` or lies below it (whole components).
pub fn path_within(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return path.starts_with('/');
    }
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// `path` relative to `dir` (which it lies within): `""` when equal, without a leading `/`.
pub fn relative(path: &str, dir: &str) -> String {
    if dir == "/" {
        return path.trim_start_matches('/').to_string();
    }
    path.strip_prefix(dir).unwrap_or(path).trim_start_matches('/').to_string()
}

/// Same mount in two tables (key, device, root and type agree), or, with `by_dev` false, key,
/// root and type only.
fn same(a: &Entry, ka: &[String], b: &Entry, kb: &[String], by_dev: bool) -> bool {
    ka == kb && a.fstype == b.fstype && a.root == b.root && (!by_dev || a.dev == b.dev)
}

/// How `now` differs from `base`: for each mount of `now`, the index of the same mount in `base`
/// (None: added since); and the mounts of `base` that are gone. With `by_dev` false the devices
/// are not compared (a base read on the host rather than in the namespace).
pub fn diff(base: &Table, now: &Table, by_dev: bool) -> (Vec<Option<usize>>, Vec<usize>) {
    let kb = base.keys();
    let kn = now.keys();
    let mut used = vec![false; base.mounts.len()];
    let mut map = Vec::with_capacity(now.mounts.len());
    for (i, m) in now.mounts.iter().enumerate() {
        let found = (0..base.mounts.len()).find(|&j| !used[j] && same(&base.mounts[j], &kb[j], m, &kn[i], by_dev));
        if let Some(j) = found {
            used[j] = true;
        }
        map.push(found);
    }
    let gone = (0..base.mounts.len()).filter(|&j| !used[j]).collect();
    (map, gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
24 22 0:6 / /proc rw,relatime - proc proc rw
60 23 0:40 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
61 60 0:41 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
70 22 0:50 / /mnt/a\\040b rw,noatime master:7 - tmpfs tmpfs rw,size=1024k
71 70 0:50 /x /mnt/a\\040b/y ro,relatime unbindable - tmpfs tmpfs rw,size=1024k
72 70 0:51 / /mnt/a\\040b rw,relatime shared:9 - tmpfs none rw
";

    #[test]
    fn parse_and_keys() {
        let t = Table::parse(INFO).unwrap();
        assert_eq!(t.mounts.len(), 8);
        let m = &t.mounts[5];
        assert_eq!(m.mountpoint, "/mnt/a b");
        assert_eq!(m.master, Some(7));
        assert_eq!(m.flags, attr::NOATIME);
        assert_eq!(t.mounts[6].flags, attr::RDONLY);
        assert!(t.mounts[6].unbindable);
        assert_eq!(t.mounts[6].root, "/x");
        assert_eq!(t.mounts[0].shared, Some(1));
        assert_eq!(t.mounts[7].super_opts, "rw");
        let k = t.keys();
        assert_eq!(k[0], vec!["/"]);
        assert_eq!(k[3], vec!["/", "/sys", "/sys"]);
        assert_eq!(k[4], vec!["/", "/sys", "/sys", "/sys/fs/cgroup"]);
        assert_eq!(t.find(&k, &["/".to_string(), "/sys".to_string()], "sysfs"), Some(1));
        // /mnt/a b is covered by the tmpfs stacked on it, which also hides its child /y.
        assert_eq!(t.hiders(5), vec![7]);
        assert_eq!(t.hiders(6), vec![7]);
        assert!(t.hiders(7).is_empty());
        // The host's /sys (23) is covered by the pod's sysfs (60).
        assert_eq!(t.hiders(1), vec![3]);
    }

    #[test]
    fn differences() {
        let base = Table::parse(&INFO.lines().take(5).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let now = Table::parse(INFO).unwrap();
        let (map, gone) = diff(&base, &now, true);
        assert_eq!(map, vec![Some(0), Some(1), Some(2), Some(3), Some(4), None, None, None]);
        assert!(gone.is_empty());
        let (map, gone) = diff(&now, &base, true);
        assert_eq!(map.len(), 5);
        assert_eq!(gone, vec![5, 6, 7]);
        assert!(path_within("/a/b", "/a") && path_within("/a", "/a") && !path_within("/ab", "/a") && path_within("/x", "/"));
        assert_eq!(relative("/a/b/c", "/a"), "b/c");
        assert_eq!(relative("/a", "/a"), "");
        assert_eq!(relative("/a", "/"), "a");
    }
}
