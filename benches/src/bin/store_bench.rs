//! Store benchmarks: chunk granularity, chunk+store throughput on 1 GiB of synthetic memory
//! (half zero pages, a quarter text-like, a quarter random), an incremental store with 1% of the
//! pages changed, the manifest cost of an unchanged GiB, and read-back throughput.
//!
//! Run: `cargo run --release -p zap-benches --bin store-bench [-- --size-mib N] [--dir DIR]`
//! Figures go to stdout; the README quotes them.
use std::time::Instant;

use rand::{Rng, SeedableRng};
use zap_benches::{gbps, synthetic_memory, with_threads, Args};
use zap_chunker::{chunk_run, ChunkerConfig, Parallelism, PAGE_SIZE};
use zap_store::{
    materialize, overlay, store_run, ChunkSink, Image, ImageKind, ImageStore, LocalStore, Manifest, StoreOptions,
};

const BASE: u64 = 0x7f00_0000_0000;

fn open(dir: &std::path::Path) -> LocalStore {
    LocalStore::open(dir, StoreOptions { create: true, ..Default::default() }).expect("open store")
}

fn store_full(store: &LocalStore, data: &[u8], cfg: &ChunkerConfig) -> (zap_store::CheckpointSummary, f64) {
    let t = Instant::now();
    let mut w = store.writer().expect("writer");
    let mut extents = Vec::new();
    // 64 MiB windows, as the engine reads memory.
    for (i, win) in data.chunks(64 << 20).enumerate() {
        let (mut e, _) = store_run(&mut w, cfg, BASE + (i as u64) * (64 << 20), win).expect("store run");
        extents.append(&mut e);
    }
    let mut m = Manifest::new("bench", "memory");
    m.images.push(Image { name: "heap".into(), kind: ImageKind::Memory, extents });
    let s = w.commit(m).expect("commit");
    (s, t.elapsed().as_secs_f64())
}

fn main() {
    let args = Args::parse();
    let size = args.size_mib << 20;
    let tmp = tempfile::Builder::new().prefix("zap-bench-").tempdir_in(&args.dir).expect("temp dir");
    println!("# store-bench: {} MiB synthetic memory, {} cores, store in {}", args.size_mib, num_cpus(), args.dir);
    println!("# machine: {}", zap_benches::machine());
    let data = synthetic_memory(size, 1);

    println!("\n## chunk granularity (chunk+hash+compress only, no I/O, all cores)");
    println!("{:>10} {:>10} {:>10} {:>12} {:>10}", "chunk", "GB/s", "chunks", "stored MiB", "ratio");
    for chunk_size in [4096usize, 16384, 65536, 262144] {
        let cfg = ChunkerConfig { chunk_size, ..Default::default() };
        let t = Instant::now();
        let exts = chunk_run(BASE, &data, &cfg);
        let secs = t.elapsed().as_secs_f64();
        let chunks: Vec<_> = exts.iter().filter_map(|e| e.chunk.as_ref()).collect();
        let stored: usize = chunks.iter().map(|c| c.data.len()).sum();
        println!(
            "{:>9}K {:>10.2} {:>10} {:>12.1} {:>10.2}",
            chunk_size / 1024,
            gbps(size as u64, secs),
            chunks.len(),
            stored as f64 / 1048576.0,
            size as f64 / stored as f64
        );
    }

    println!("\n## chunk + store {} MiB (fsync at commit)", args.size_mib);
    println!("{:>10} {:>8} {:>10} {:>12} {:>10}", "threads", "secs", "GB/s", "stored MiB", "ratio");
    let mut last = None;
    for threads in [1usize, num_cpus()] {
        let dir = tmp.path().join(format!("full-{threads}"));
        let store = open(&dir);
        let par = if threads == 1 { Parallelism::Serial } else { Parallelism::Rayon };
        let cfg = ChunkerConfig { parallelism: par, ..Default::default() };
        let (s, secs) = with_threads(threads, || store_full(&store, &data, &cfg));
        println!(
            "{:>10} {:>8.3} {:>10.2} {:>12.1} {:>10.2}",
            threads,
            secs,
            gbps(size as u64, secs),
            s.new_stored_bytes as f64 / 1048576.0,
            size as f64 / s.new_stored_bytes as f64
        );
        last = Some((dir, store, s));
    }
    let (_dir, store, parent) = last.expect("ran");
    let parent_manifest = store.manifest(&parent.id).expect("manifest");
    let parent_extents = parent_manifest.images[0].extents.clone();

    println!("\n## second checkpoint with 1% of pages changed");
    let mut changed = data.clone();
    let pages = size / PAGE_SIZE;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut dirty: Vec<usize> = (0..pages / 100).map(|_| rng.gen_range(0..pages)).collect();
    dirty.sort_unstable();
    dirty.dedup();
    for &p in &dirty {
        rng.fill(&mut changed[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
    }
    let cfg = ChunkerConfig::default();
    // Incremental: only the written pages (what the dirty tracker reports) are chunked.
    let t = Instant::now();
    let mut w = store.writer().expect("writer");
    let mut new_exts = Vec::new();
    let mut i = 0;
    while i < dirty.len() {
        let mut j = i;
        while j + 1 < dirty.len() && dirty[j + 1] == dirty[j] + 1 {
            j += 1;
        }
        let (from, to) = (dirty[i] * PAGE_SIZE, (dirty[j] + 1) * PAGE_SIZE);
        let (mut e, _) = store_run(&mut w, &cfg, BASE + from as u64, &changed[from..to]).expect("store run");
        new_exts.append(&mut e);
        i = j + 1;
    }
    let mut m = Manifest::new("bench", "memory");
    m.parent = Some(parent.id);
    m.images.push(Image { name: "heap".into(), kind: ImageKind::Memory, extents: overlay(&parent_extents, &new_exts) });
    let inc = w.commit(m).expect("commit");
    let inc_secs = t.elapsed().as_secs_f64();
    // Full re-dump of the changed memory, deduplicated by content only.
    let (full, full_secs) = store_full(&store, &changed, &cfg);
    println!("{:>22} {:>8} {:>14} {:>14}", "mode", "ms", "new bytes KiB", "manifest KiB");
    println!(
        "{:>22} {:>8.1} {:>14.1} {:>14.1}",
        "incremental (dirty)",
        inc_secs * 1e3,
        inc.new_stored_bytes as f64 / 1024.0,
        inc.manifest_bytes as f64 / 1024.0
    );
    println!(
        "{:>22} {:>8.1} {:>14.1} {:>14.1}",
        "full + dedup",
        full_secs * 1e3,
        full.new_stored_bytes as f64 / 1024.0,
        full.manifest_bytes as f64 / 1024.0
    );
    println!(
        "  {} dirty pages ({:.1} MiB of {} MiB); incremental is {:.1}% of the full dump's time",
        dirty.len(),
        (dirty.len() * PAGE_SIZE) as f64 / 1048576.0,
        args.size_mib,
        100.0 * inc_secs / full_secs
    );

    // Unchanged: the manifest alone.
    let t = Instant::now();
    let w = store.writer().expect("writer");
    let mut m = Manifest::new("bench", "memory");
    m.parent = Some(inc.id);
    let inc_manifest = store.manifest(&inc.id).expect("manifest");
    m.images = inc_manifest.images.clone();
    let same = w.commit(m).expect("commit");
    let per_gib = same.manifest_bytes as f64 * (1u64 << 30) as f64 / size as f64;
    println!(
        "\n## unchanged checkpoint: {:.1} ms, manifest {:.1} KiB = {:.1} KiB per GiB of memory ({:.3}%), new bytes {}",
        t.elapsed().as_secs_f64() * 1e3,
        same.manifest_bytes as f64 / 1024.0,
        per_gib / 1024.0,
        100.0 * per_gib / (1u64 << 30) as f64,
        same.new_stored_bytes
    );

    println!("\n## read-back (restore path: read, decompress, verify, copy)");
    let manifest = store.manifest(&inc.id).expect("manifest");
    // Prefaulted output, as a restore writes into mappings it has already created.
    let mut out = vec![1u8; size];
    for (label, threads) in [("1 thread", 1usize), ("all cores", num_cpus())] {
        let mut secs = f64::MAX;
        for _ in 0..2 {
            let t = Instant::now();
            with_threads(threads, || materialize(&store, &manifest.images[0].extents, BASE, &mut out).expect("materialize"));
            secs = secs.min(t.elapsed().as_secs_f64());
        }
        assert!(out == changed, "read-back differs from what was stored");
        println!("{:>10}: {:.3} s, {:.2} GB/s (page cache warm)", label, secs, gbps(size as u64, secs));
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
