//! Memory images of real processes: dump a running python3 (threads included) while it runs,
//! verify the image against the frozen process, find its data in the image, and check that the
//! process continues afterwards. Needs root (ptrace of a child is enough) and python3.
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use zap_chunker::ChunkerConfig;
use zap_engine::memdump::{dump_memory, MemDumpOptions};
use zap_engine::EngineError;
use zap_store::{materialize, ImageStore, LocalStore, StoreOptions};

/// A child that is killed and reaped when the test ends, however it ends.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SCRIPT: &str = r#"
import sys, threading, time
marker = bytearray(b"ZAP-MARKER-%08d;" % 7 * 4096)   # ~80 KiB of a recognisable pattern
blob = bytearray(32 * 1024 * 1024)                   # zero pages
counter = [0]
def spin():
    while True:
        counter[0] += 1
        time.sleep(0.001)
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    print("count", counter[0], len(marker), flush=True)
"#;

fn python() -> Option<Reaped> {
    let child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    match child {
        Ok(c) => Some(Reaped(c)),
        Err(e) => {
            eprintln!("SKIP: python3 not available ({e})");
            None
        }
    }
}

#[test]
fn dump_running_python_and_verify() {
    let Some(mut py) = python() else { return };
    let mut out = BufReader::new(py.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = py.0.id() as i32;

    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), StoreOptions { create: true, ..Default::default() }).unwrap();
    let opts = MemDumpOptions { verify: true, chunker: ChunkerConfig::default(), ..Default::default() };
    let first = dump_memory(&store, pid, &opts).expect("dump");
    assert!(first.mappings > 10, "python has many mappings, got {}", first.mappings);
    assert!(first.bytes_read > 32 << 20);
    assert!(first.summary.zero_bytes >= 30 << 20, "the zero blob is recorded, not stored");
    assert!(first.summary.new_stored_bytes < first.bytes_read / 2);

    // The marker pattern is in the stored image.
    let manifest = store.manifest(&first.summary.id).unwrap();
    let needle = b"ZAP-MARKER-00000007;ZAP-MARKER-00000007;";
    let found = manifest.images.iter().any(|img| {
        let (Some(a), Some(b)) = (img.extents.first(), img.extents.last()) else { return false };
        let mut buf = vec![0u8; (b.end() - a.start) as usize];
        materialize(&store, &img.extents, a.start, &mut buf).unwrap();
        buf.windows(needle.len()).any(|w| w == needle)
    });
    assert!(found, "marker not found in the memory image");

    // A second dump of the same process stores little that is new (content dedup).
    let second = dump_memory(&store, pid, &MemDumpOptions { parent: Some(first.summary.id), verify: true, ..opts })
        .expect("second dump");
    assert!(
        second.summary.new_stored_bytes * 4 < first.summary.new_stored_bytes,
        "second dump stored {} new bytes, first {}",
        second.summary.new_stored_bytes,
        first.summary.new_stored_bytes
    );
    assert_eq!(store.list().unwrap().len(), 2);

    // The process was only paused: it answers and its threads kept counting.
    let stdin = py.0.stdin.as_mut().unwrap();
    writeln!(stdin, "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let count: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(count > 0, "threads did not run: {line}");
}

#[test]
fn gone_pid_is_a_clear_error() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), StoreOptions { create: true, ..Default::default() }).unwrap();
    let err = dump_memory(&store, pid, &MemDumpOptions::default()).unwrap_err();
    assert!(matches!(err, EngineError::Proc { .. }), "{err}");
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
    assert!(store.list().unwrap().is_empty(), "nothing is committed for a failed dump");
}
