//! Kill a writer (and a garbage collector) at many points and check that the store recovers:
//! every visible checkpoint is complete and exact, `verify` finds nothing wrong, no temporary or
//! unrecorded pack file survives the next open, and the store takes new checkpoints.
//!
//! The child is `store_writer` (this crate's helper binary). It writes checkpoints whose content
//! is a pure function of their name, so the test can check what a killed process left without
//! any other channel. Kills are SIGKILL after a delay spread over 0..400 ms (for every other
//! writer counted from its first commit), which lands them in process start-up, the RocksDB open,
//! chunking, pack writes and fsyncs, and commits.
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use zap_store::{ImageStore, LocalStore};
use zap_tests::{check_checkpoint, options, parse_checkpoint_name, write_checkpoint, Readback};

const ROUNDS: u64 = 25;
/// Every this many rounds the child is a garbage collector instead of a writer.
const GC_EVERY: u64 = 4;

/// A child that is killed and reaped however the test ends.
struct Reaped(Option<Child>);

impl Reaped {
    fn spawn(store: &Path, args: &[String]) -> Reaped {
        let child = Command::new(env!("CARGO_BIN_EXE_store_writer"))
            .arg(store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn store_writer");
        Reaped(Some(child))
    }

    /// Reads the child's stdout up to and including the first line that starts with `trigger`
    /// (or to the end of the output). What was read is kept for [`Reaped::kill_and_collect`].
    fn wait_for_line(&mut self, trigger: &str, seen: &mut String) {
        let child = self.0.as_mut().expect("child present");
        let stdout = child.stdout.as_mut().expect("stdout piped");
        let mut byte = [0u8; 1];
        let mut line = Vec::new();
        // Byte by byte: nothing past the trigger line may be consumed here.
        while stdout.read(&mut byte).expect("read child stdout") == 1 {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                let text = String::from_utf8_lossy(&line).into_owned();
                seen.push_str(&text);
                line.clear();
                if text.starts_with(trigger) {
                    return;
                }
            }
        }
        seen.push_str(&String::from_utf8_lossy(&line));
    }

    /// Kills the child (if still running), reaps it and returns (ran to the end by itself,
    /// exit status, stdout, stderr).
    fn kill_and_collect(mut self) -> (bool, std::process::ExitStatus, String, String) {
        let mut child = self.0.take().expect("child present");
        let finished = child.try_wait().expect("try_wait").is_some();
        if !finished {
            child.kill().expect("kill our child");
        }
        let status = child.wait().expect("wait for our child");
        let mut out = String::new();
        let mut err = String::new();
        child.stdout.take().expect("stdout piped").read_to_string(&mut out).expect("read child stdout");
        child.stderr.take().expect("stderr piped").read_to_string(&mut err).expect("read child stderr");
        (finished, status, out, err)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Complete lines (a killed child may leave a partial last line) split into words.
fn lines(out: &str) -> Vec<Vec<&str>> {
    let complete = match out.rfind('\n') {
        Some(n) => &out[..=n],
        None => "",
    };
    complete.lines().map(|l| l.split_whitespace().collect()).collect()
}

/// Reopens the store after a kill, checks everything and returns the open store.
///
/// `must_have`: committed and not deleted as far as the test knows; `may_vanish`: of those, the
/// ones a killed collector may have deleted without getting to say so; `must_not_have`: deleted.
fn reopen_and_check(
    root: &Path,
    round: u64,
    must_have: &BTreeSet<String>,
    may_vanish: &BTreeSet<String>,
    must_not_have: &BTreeSet<String>,
) -> LocalStore {
    // The very first child may have been killed before the store existed; after that the
    // marker must stay.
    let had_marker = root.join("STORE").exists();
    let store = LocalStore::open(root, options(true, Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("round {round}: reopen after kill failed: {e}"));
    if round > 0 {
        assert!(had_marker, "round {round}: the STORE marker disappeared");
    }
    // (c) nothing temporary survives the open.
    let leftovers: Vec<_> = zap_tests::walk(root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".tmp")))
        .collect();
    assert!(leftovers.is_empty(), "round {round}: temporary files after open: {leftovers:?}");
    let list = store.list().unwrap_or_else(|e| panic!("round {round}: list: {e}"));
    let ids: BTreeSet<String> = list.iter().map(|s| s.id.to_hex()).collect();
    for id in must_have {
        assert!(ids.contains(id) || may_vanish.contains(id), "round {round}: committed checkpoint {id} is gone");
    }
    for id in must_not_have {
        assert!(!ids.contains(id), "round {round}: deleted checkpoint {id} is back");
    }
    let mut names = BTreeMap::new();
    for s in &list {
        assert!(parse_checkpoint_name(&s.name).is_some(), "round {round}: unexpected checkpoint {:?}", s.name);
        if let Some(other) = names.insert(s.name.clone(), s.id) {
            panic!("round {round}: two checkpoints named {} ({other} and {})", s.name, s.id);
        }
        // (a) complete and exact.
        match check_checkpoint(&store, &s.id) {
            Readback::Correct => {}
            other => panic!("round {round}: checkpoint {} ({}) after the kill: {other:?}", s.name, s.id),
        }
    }
    // (b) verify finds nothing; this includes pack files the index does not record.
    let report = store.verify(&|_, _| {}).unwrap_or_else(|e| panic!("round {round}: verify: {e}"));
    assert!(report.ok(), "round {round}: verify problems: {:#?}", report.problems);
    assert!(report.broken.is_empty(), "round {round}: broken: {:?}", report.broken);
    assert_eq!(report.checkpoints, list.len() as u64, "round {round}");
    let stats = store.stats().unwrap();
    assert_eq!(stats.packs as usize, zap_tests::pack_files(root).len(), "round {round}: pack files vs index");
    store
}

#[test]
fn killed_writers_and_collectors_leave_a_consistent_store() {
    let started = Instant::now();
    let tmp = tempfile::TempDir::new().unwrap();
    let root = tmp.path().join("store");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x00c0_ffee);
    // Write kills: 0..400 ms in 16 ms steps, shuffled so that store size and delay vary
    // independently. Collector kills: the collector says when it starts collecting, and is
    // killed that many microseconds later (GC of this store takes some milliseconds); the last
    // one, u64::MAX, is killed halfway through its deletions instead.
    let mut write_delays: Vec<u64> = (0..ROUNDS).map(|r| r * 16).collect();
    write_delays.shuffle(&mut rng);
    let gc_delays_us = [0u64, 2000, 500, 5000, 12000, u64::MAX];
    let mut committed: BTreeSet<String> = BTreeSet::new();
    // What the store held before the current child started (the collector deletes every other).
    let mut listed: Vec<String> = Vec::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let (mut killed, mut in_commit_window, mut gc_killed) = (0, 0, 0);
    let (mut tmp_rounds, mut orphan_rounds) = (0, 0);
    for round in 0..ROUNDS {
        let gc_round = round % GC_EVERY == GC_EVERY - 1;
        let (args, delay) = if gc_round {
            (vec!["gc".to_string()], gc_delays_us[(round / GC_EVERY) as usize % gc_delays_us.len()])
        } else {
            (vec!["100000".to_string(), (round * 1000).to_string()], write_delays[round as usize])
        };
        let mut child = Reaped::spawn(&root, &args);
        let mut seen = String::new();
        if !gc_round {
            // Every other writer is killed only after it committed something, whatever the
            // machine's speed (on a loaded machine a fixed delay may land before every commit).
            if round % 2 == 0 {
                child.wait_for_line("committed", &mut seen);
            }
            if round % 3 == 1 {
                // Some writers are killed the moment a pack is being written (a `.tmp` file is
                // there), however short that window is on this machine.
                let t = Instant::now();
                let tmp_there = || zap_tests::walk(&root.join("packs")).iter().any(|p| p.to_string_lossy().ends_with(".tmp"));
                while !tmp_there() && t.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            } else {
                std::thread::sleep(Duration::from_millis(delay));
            }
        } else if delay == u64::MAX {
            child.wait_for_line("deleted", &mut seen);
        } else {
            child.wait_for_line("collecting", &mut seen);
            std::thread::sleep(Duration::from_micros(delay));
        }
        let (finished, status, rest, err) = child.kill_and_collect();
        let out = seen + &rest;
        // What the kill left for recovery: temporary packs, and pack files (some maybe unrecorded).
        let files_before = zap_tests::walk(&root.join("packs"));
        let tmp_left = files_before.iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).count();
        let packs_left = zap_tests::pack_files(&root).len();
        if finished {
            assert!(status.success(), "round {round}: store_writer {args:?} failed by itself: {status}, stderr: {err}");
        } else {
            killed += 1;
        }
        let mut round_committed = 0;
        let mut round_deleted = 0;
        let mut gc_done = false;
        for words in lines(&out) {
            match words.as_slice() {
                ["committed", _name, id] => {
                    committed.insert(id.to_string());
                    round_committed += 1;
                }
                ["deleted", id] => {
                    committed.remove(*id);
                    deleted.insert(id.to_string());
                    round_deleted += 1;
                }
                ["collecting"] => {}
                ["gc", ms, ..] => {
                    gc_done = true;
                    eprintln!("round {round:2}: gc took {ms} ms");
                }
                other => panic!("round {round}: unexpected output {other:?}"),
            }
        }
        if gc_round && !finished && round_deleted > 0 && !gc_done {
            gc_killed += 1;
        }
        if !gc_round && round_committed > 0 && !finished {
            in_commit_window += 1;
        }
        let when = match (gc_round, delay) {
            (false, ms) => format!("{ms} ms after start"),
            (true, u64::MAX) => "at its first deletion".to_string(),
            (true, us) => format!("{us} us into gc"),
        };
        eprint!(
            "round {round:2}: {:>6} killed {when} (finished by itself: {finished}); committed {round_committed}, \
             deleted {round_deleted}, gc finished {gc_done}; left {tmp_left} tmp, {packs_left} packs",
            args[0],
        );

        let may_vanish: BTreeSet<String> = if gc_round {
            listed.iter().step_by(2).cloned().collect()
        } else {
            BTreeSet::new()
        };
        let store = reopen_and_check(&root, round, &committed, &may_vanish, &deleted);
        let orphans = packs_left.saturating_sub(zap_tests::pack_files(&root).len());
        eprintln!(", recovery removed {orphans} unrecorded packs");
        tmp_rounds += usize::from(tmp_left > 0);
        orphan_rounds += usize::from(orphans > 0);
        // Whatever of the collector's share is gone was deleted by it.
        for id in &may_vanish {
            if committed.contains(id) && !store.list().unwrap().iter().any(|s| &s.id.to_hex() == id) {
                committed.remove(id);
                deleted.insert(id.clone());
            }
        }
        // (d) still writable, in this process too.
        let probe = write_checkpoint(&store, 10_000_000 + round).unwrap_or_else(|e| panic!("round {round}: write: {e}"));
        assert!(check_checkpoint(&store, &probe.id).is_correct(), "round {round}: probe checkpoint");
        committed.insert(probe.id.to_hex());
        // Keep the store small: drop the oldest checkpoints now and then and collect in-process.
        let list = store.list().unwrap();
        if list.len() > 30 {
            for s in &list[..list.len() - 12] {
                store.delete(&s.id).unwrap();
                committed.remove(&s.id.to_hex());
                deleted.insert(s.id.to_hex());
            }
            let before = store.stats().unwrap().pack_bytes;
            let t = Instant::now();
            let report = store.gc(0.0).unwrap();
            eprintln!("round {round:2}: in-process gc took {} ms: {report:?}", t.elapsed().as_millis());
            let after = store.stats().unwrap().pack_bytes;
            assert!(after < before, "round {round}: in-process gc freed nothing ({report:?})");
            drop(store);
            let store = reopen_and_check(&root, round, &committed, &BTreeSet::new(), &deleted);
            listed = store.list().unwrap().iter().map(|s| s.id.to_hex()).collect();
        } else {
            listed = list.iter().map(|s| s.id.to_hex()).collect();
        }
    }
    // A writer left alone finishes.
    let mut child = Reaped::spawn(&root, &["2".to_string(), "999000".to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.0.as_mut().unwrap().try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (finished, status, out, err) = child.kill_and_collect();
    assert!(finished && status.success(), "final writer: {status}, stderr: {err}");
    let last: Vec<String> = lines(&out).iter().map(|w| w[2].to_string()).collect();
    assert_eq!(last.len(), 2, "final writer output: {out}");
    committed.extend(last);
    reopen_and_check(&root, ROUNDS, &committed, &BTreeSet::new(), &deleted);
    eprintln!(
        "{ROUNDS} rounds: {killed} children killed, {in_commit_window} writers killed after committing some \
         checkpoints, {gc_killed} collectors killed mid-way; {tmp_rounds} kills left temporary packs, \
         {orphan_rounds} left unrecorded packs; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The test means nothing if the kills never land while something is going on.
    assert!(killed >= ROUNDS * 3 / 4, "only {killed} of {ROUNDS} children were still running when killed");
    assert!(in_commit_window >= ROUNDS / 3, "only {in_commit_window} writers were killed mid-stream");
    assert!(gc_killed >= 3, "only {gc_killed} collectors were killed mid-way");
    assert!(tmp_rounds >= 5, "only {tmp_rounds} kills landed while a pack was being written");
}
