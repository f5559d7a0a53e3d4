//! Memory images hold secrets: everything under a store's root must be owner-only, whatever the
//! umask of the process that wrote it. (Its own test binary: the store tightens the umask of the
//! whole process, and the test sets a permissive one first.)
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use zap_store::{ImageStore, LocalStore};
use zap_tests::{options, write_checkpoint};

fn group_or_other_accessible(root: &Path) -> Vec<String> {
    let mut entries = zap_tests::walk(root);
    entries.push(root.to_path_buf());
    assert!(entries.len() > 8, "too few files to mean anything: {entries:?}");
    entries
        .into_iter()
        .filter_map(|p| {
            let mode = std::fs::symlink_metadata(&p).unwrap().permissions().mode();
            (mode & 0o077 != 0).then(|| format!("{} {:o}", p.display(), mode & 0o7777))
        })
        .collect()
}

#[test]
fn every_file_of_a_store_is_owner_only() {
    // SAFETY: umask(2) only swaps the process's file-mode mask.
    unsafe { libc::umask(0o022) };
    let tmp = tempfile::TempDir::new().unwrap();

    // Written by another process that starts with a permissive umask.
    let child_root = tmp.path().join("child");
    let status = Command::new(env!("CARGO_BIN_EXE_store_writer"))
        .arg(&child_root)
        .args(["2", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("run store_writer");
    assert!(status.success());
    let bad = group_or_other_accessible(&child_root);
    assert!(bad.is_empty(), "accessible to group or others: {bad:#?}");

    // Written, collected and reopened in this process (reopening turns the log into SST files).
    let root = tmp.path().join("own");
    {
        let store = LocalStore::open(&root, options(true, Duration::from_secs(10))).unwrap();
        let a = write_checkpoint(&store, 0).unwrap();
        write_checkpoint(&store, 1).unwrap();
        store.delete(&a.id).unwrap();
        store.gc(0.0).unwrap();
    }
    let store = LocalStore::open(&root, options(false, Duration::from_secs(10))).unwrap();
    write_checkpoint(&store, 2).unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
    let bad = group_or_other_accessible(&root);
    assert!(bad.is_empty(), "accessible to group or others: {bad:#?}");
}
