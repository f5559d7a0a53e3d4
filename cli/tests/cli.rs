//! Runs the built `zap` binary against throw-away stores: the store lifecycle from `init` to a
//! corrupted pack, and the errors a user meets first (unknown ids, no store, bad usage).
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use tempfile::TempDir;

/// Runs `zap --store <store> <args>` with a clean environment.
fn zap(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zap"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("ZAP_STORE")
        .env_remove("RUST_LOG")
        .output()
        .expect("run zap")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(store: &Path, args: &[&str]) -> String {
    let out = zap(store, args);
    assert!(out.status.success(), "zap {args:?} failed: {}\n{}", out.status, text(&out.stderr));
    text(&out.stdout)
}

/// Runs a command with `--json` that must succeed; returns the parsed output.
fn json(store: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let stdout = ok(store, &args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("zap {args:?}: bad JSON ({e}): {stdout}"))
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut data[..]);
    data
}

/// A directory of the files the store must round-trip; returns (relative path, content, mode).
fn make_tree(dir: &Path, seed: u64) -> Vec<(&'static str, Vec<u8>, u32)> {
    let mut tail_zeros = random_bytes(8192, seed + 1);
    tail_zeros.extend_from_slice(&[0u8; 100]);
    let notes: Vec<u8> = (0..2000).flat_map(|i| format!("line {i}: the quick brown fox\n").into_bytes()).collect();
    let files = vec![
        ("zeros.bin", vec![0u8; 1 << 20], 0o644),
        ("notes.txt", notes, 0o600),
        ("random.bin", random_bytes((1 << 20) + 4097, seed), 0o644),
        ("empty", Vec::new(), 0o644),
        ("tail_zeros.bin", tail_zeros, 0o640),
        ("sub/deeper/run.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
    ];
    for (rel, data, mode) in &files {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
    }
    symlink("random.bin", dir.join("link")).unwrap();
    files
}

/// Where `get --out out` puts the file stored from `original`.
fn restored(out: &Path, original: &Path) -> PathBuf {
    out.join(original.strip_prefix("/").unwrap())
}

fn pack_files(store: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    packs.sort();
    packs
}

fn total_pack_bytes(store: &Path) -> u64 {
    pack_files(store).iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

#[test]
fn store_lifecycle() {
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    let data = fs::canonicalize(tmp.path()).unwrap().join("data");
    let files = make_tree(&data, 7);
    let data_arg = data.to_str().unwrap();

    // init, twice.
    let init = json(&store, &["store", "init"]);
    assert_eq!(init["created"], true);
    assert_eq!(json(&store, &["store", "init"])["created"], false);

    // put: every regular file, the symlink skipped.
    let first = json(&store, &["store", "put", data_arg, "--name", "first", "--label", "env=test"]);
    let first_id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first_id.len(), 16);
    assert_eq!(first["files"], 6);
    assert_eq!(first["skipped"], 1);
    let logical: u64 = files.iter().map(|(_, d, _)| d.len() as u64).sum();
    assert_eq!(first["logical_bytes"], logical);
    assert!(first["new_stored_bytes"].as_u64().unwrap() > 1 << 20);

    // ls shows it with all summary fields.
    let list = json(&store, &["store", "ls"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], first_id.as_str());
    assert_eq!(list[0]["name"], "first");
    assert_eq!(list[0]["kind"], "files");
    assert_eq!(list[0]["labels"]["env"], "test");
    assert_eq!(list[0]["images"], 6);
    // Zero extents are whole zero pages (one chunk per 64 KiB block, zero pages inside sparse):
    // zeros.bin is one; the 100 zero bytes ending tail_zeros.bin share a page with data.
    assert_eq!(list[0]["zero_bytes"].as_u64().unwrap(), 1 << 20);
    assert!(list[0]["created"].as_str().unwrap().ends_with('Z'));
    assert!(ok(&store, &["store", "ls"]).contains(&first_id[..8]));

    // show by prefix.
    let shown = json(&store, &["store", "show", &first_id[..6]]);
    assert_eq!(shown["id"], first_id.as_str());
    assert_eq!(shown["images"].as_array().unwrap().len(), 6);
    assert!(ok(&store, &["store", "show", &first_id]).contains("sub/deeper/run.sh"));

    // get: exact bytes, lengths and modes.
    let out = tmp.path().join("out");
    let got = json(&store, &["store", "get", &first_id, "--out", out.to_str().unwrap()]);
    assert_eq!(got["files"], 6);
    assert_eq!(got["bytes"], logical);
    for (rel, content, mode) in &files {
        let path = restored(&out, &data.join(rel));
        assert_eq!(&fs::read(&path).unwrap(), content, "{rel} differs after get");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, *mode, "mode of {rel}");
    }
    assert!(!restored(&out, &data.join("link")).exists());

    // The same files again: nothing new to store.
    let second = json(&store, &["store", "put", data_arg, "--parent", &first_id]);
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_eq!(second["new_stored_bytes"], 0, "dedup: {second}");
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("unique.bin"), random_bytes(512 << 10, 99)).unwrap();
    let third = json(&store, &["store", "put", other.to_str().unwrap()]);
    let third_id = third["id"].as_str().unwrap().to_string();
    assert!(third["new_stored_bytes"].as_u64().unwrap() >= 512 << 10);

    // rm: the parent of `second` is deleted with a warning; gc frees `third`'s pack.
    let removed = json(&store, &["store", "rm", &third_id]);
    assert_eq!(removed["removed"][0], third_id.as_str());
    let rm_first = zap(&store, &["store", "rm", &first_id[..8]]);
    assert!(rm_first.status.success());
    let warning = text(&rm_first.stderr);
    assert!(warning.contains("warning") && warning.contains(&second_id), "stderr: {warning}");
    assert!(text(&rm_first.stdout).contains("zap store gc"));
    let before = total_pack_bytes(&store);
    let gc = json(&store, &["store", "gc"]);
    assert!(gc["freed_chunks"].as_u64().unwrap() > 0, "{gc}");
    assert!(gc["bytes_after"].as_u64().unwrap() < gc["bytes_before"].as_u64().unwrap(), "{gc}");
    assert!(total_pack_bytes(&store) < before);
    let stats = json(&store, &["store", "stats"]);
    assert_eq!(stats["store"]["checkpoints"], 1);
    assert_eq!(stats["checkpoints"][0]["id"], second_id.as_str());

    // verify: clean.
    let clean = zap(&store, &["store", "verify"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stdout));

    // One flipped byte in the middle of a pack.
    let packs = pack_files(&store);
    assert_eq!(packs.len(), 1, "{packs:?}");
    let mut bytes = fs::read(&packs[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::write(&packs[0], &bytes).unwrap();

    let damaged = zap(&store, &["store", "verify"]);
    let report = text(&damaged.stdout);
    assert_eq!(damaged.status.code(), Some(1), "{report}");
    assert!(report.contains("problem: chunk "), "{report}");
    assert!(report.contains(&format!("broken checkpoint {second_id}")), "{report}");
    let damaged_json = zap(&store, &["store", "verify", "--json"]);
    assert_eq!(damaged_json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&damaged_json.stdout).unwrap();
    assert!(report["broken"].get(&second_id).is_some(), "{report}");

    // Restoring the damaged checkpoint fails, naming the file and the chunk.
    let out2 = tmp.path().join("out2");
    let failed = zap(&store, &["store", "get", &second_id, "--out", out2.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(1));
    let err = text(&failed.stderr);
    assert!(err.starts_with("zap: error: restore ") && err.contains("chunk "), "stderr: {err}");
    let mut stack = vec![out2];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert!(!path.to_string_lossy().ends_with(".zap-part"), "left behind: {}", path.display());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
}

#[test]
fn unknown_ids_missing_store_and_usage() {
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");

    let no_store = zap(&store, &["store", "ls"]);
    assert_eq!(no_store.status.code(), Some(1));
    assert!(text(&no_store.stderr).contains("zap: error: no Zap store at"), "{}", text(&no_store.stderr));

    ok(&store, &["store", "init"]);
    assert!(ok(&store, &["store", "ls"]).contains("no checkpoints"));
    assert_eq!(json(&store, &["store", "ls"]), Value::Array(Vec::new()));

    let unknown = zap(&store, &["store", "show", "deadbeef"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(text(&unknown.stderr).trim(), "zap: error: no checkpoint matches \"deadbeef\"");

    let not_hex = zap(&store, &["store", "show", "xyz"]);
    assert_eq!(not_hex.status.code(), Some(1));
    assert!(text(&not_hex.stderr).contains("is not a checkpoint id"));

    let rm_unknown = zap(&store, &["store", "rm", "0123abcd"]);
    assert_eq!(rm_unknown.status.code(), Some(1));

    let missing = zap(&store, &["store", "put", tmp.path().join("nowhere").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("nowhere"), "{}", text(&missing.stderr));
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let nothing = zap(&store, &["store", "put", empty.to_str().unwrap()]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(text(&nothing.stderr).contains("nothing to store"), "{}", text(&nothing.stderr));
    assert_eq!(json(&store, &["store", "ls"]), Value::Array(Vec::new()));

    // Usage errors are clap's: status 2.
    assert_eq!(zap(&store, &["store", "gc", "--repack-threshold", "3"]).status.code(), Some(2));
    assert_eq!(zap(&store, &["store", "put"]).status.code(), Some(2));
    assert_eq!(zap(&store, &["store", "put", "x", "--label", "novalue"]).status.code(), Some(2));
    assert_eq!(zap(&store, &["store", "frobnicate"]).status.code(), Some(2));
}
