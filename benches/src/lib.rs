//! Shared pieces of Zap's benchmark binaries: synthetic memory, argument parsing, formatting.
//! Each binary in `src/bin/` prints its figures; the README quotes them with the command.
#![forbid(unsafe_code)]

use rand::{Rng, SeedableRng};
use zap_chunker::PAGE_SIZE;

/// Common arguments: `--size-mib N` (default 1024) and `--dir DIR` (default /var/tmp).
pub struct Args {
    /// Size of the synthetic memory in MiB.
    pub size_mib: usize,
    /// Where temporary stores go.
    pub dir: String,
}

impl Args {
    /// Parses the process arguments.
    pub fn parse() -> Args {
        let mut a = Args { size_mib: 1024, dir: "/var/tmp".into() };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--size-mib" => a.size_mib = it.next().and_then(|v| v.parse().ok()).expect("--size-mib N"),
                "--dir" => a.dir = it.next().expect("--dir DIR"),
                "--bench" => {} // passed by `cargo bench`
                other => panic!("unknown argument {other:?} (use --size-mib N, --dir DIR)"),
            }
        }
        a
    }
}

/// Ends a bench whose argument `arg` none of its options took: `-h`/`--help` prints `usage: BIN
/// USAGE` (exit 0); anything else is a usage error naming it (exit 2).
pub fn help_or_bad_argument(bin: &str, arg: &str, usage: &str) -> ! {
    if arg == "-h" || arg == "--help" {
        println!("usage: {bin} {usage}");
        std::process::exit(0);
    }
    eprintln!("{bin}: unknown argument {arg:?} (usage: {bin} {usage})");
    std::process::exit(2)
}

/// `size` bytes of memory-like data: runs of 1 to 32 pages, half of them zero pages, a quarter
/// text-like (compressible), a quarter random. Deterministic for a seed.
pub fn synthetic_memory(size: usize, seed: u64) -> Vec<u8> {
    const TEXT: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: pod.local\r\nuser_id=1234;session=abcdef; ";
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    let pages = size / PAGE_SIZE;
    let mut p = 0;
    while p < pages {
        let run = rng.gen_range(1..=32).min(pages - p);
        let kind = rng.gen_range(0..4);
        let bytes = &mut data[p * PAGE_SIZE..(p + run) * PAGE_SIZE];
        match kind {
            0 | 1 => {}
            2 => {
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = TEXT[(i * 7 + i / 4096) % TEXT.len()];
                }
                // A little variety, as real text has.
                for _ in 0..run * 8 {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] = rng.gen_range(b'a'..=b'z');
                }
            }
            _ => rng.fill(bytes),
        }
        p += run;
    }
    data
}

/// Runs `f` on a rayon pool of `threads` threads.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool").install(f)
}

/// Bytes per second in GB/s (10^9).
pub fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// One line describing the machine: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {} cores, {:.0} GiB, Linux {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        mem as f64 / 1048576.0,
        kernel.trim()
    )
}
