//! A helper process for the store tests, meant to be killed at any point.
//!
//! ```text
//! store_writer STORE_DIR N [START]   open (create) the store, write checkpoints ckpt-START ..
//!                                    ckpt-(START+N-1), printing "committed <name> <id>" after each
//! store_writer STORE_DIR gc          delete every other checkpoint (oldest first), printing
//!                                    "deleted <id>", then "collecting", then gc(0.0) and
//!                                    "gc <ms taken> <report json>"
//! store_writer STORE_DIR probe MS    try to open the store with a lock timeout of MS ms; print
//!                                    "opened", or "busy <ms waited>" and exit 3
//! ```
//! Any other failure prints the error on stderr and exits 1.
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use zap_store::{ImageStore, LocalStore, StoreError};
use zap_tests::{checkpoint_name, options, write_checkpoint};

fn usage() -> ExitCode {
    eprintln!("usage: store_writer STORE_DIR (N [START] | gc | probe MS)");
    ExitCode::from(2)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The test reads these lines after killing us; each must be out before the next step.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run(args: &[String]) -> Result<ExitCode, StoreError> {
    let dir = &args[0];
    match args[1].as_str() {
        "gc" => {
            let store = LocalStore::open(dir, options(false, Duration::from_secs(20)))?;
            for (k, s) in store.list()?.iter().enumerate() {
                if k % 2 == 0 {
                    store.delete(&s.id)?;
                    say(&format!("deleted {}", s.id));
                }
            }
            say("collecting");
            let start = Instant::now();
            let report = store.gc(0.0)?;
            let ms = start.elapsed().as_millis();
            say(&format!("gc {ms} {}", serde_json::to_string(&report).expect("report serializes")));
            Ok(ExitCode::SUCCESS)
        }
        "probe" => {
            let Some(ms) = args.get(2).and_then(|a| a.parse().ok()) else { return Ok(usage()) };
            let start = Instant::now();
            match LocalStore::open(dir, options(false, Duration::from_millis(ms))) {
                Ok(_) => {
                    say("opened");
                    Ok(ExitCode::SUCCESS)
                }
                Err(StoreError::Busy { .. }) => {
                    say(&format!("busy {}", start.elapsed().as_millis()));
                    Ok(ExitCode::from(3))
                }
                Err(e) => Err(e),
            }
        }
        n => {
            let Ok(n) = n.parse::<u64>() else { return Ok(usage()) };
            let start: u64 = match args.get(2).map(|a| a.parse()) {
                None => 0,
                Some(Ok(s)) => s,
                Some(Err(_)) => return Ok(usage()),
            };
            let store = LocalStore::open(dir, options(true, Duration::from_secs(20)))?;
            for i in start..start + n {
                let summary = write_checkpoint(&store, i)?;
                say(&format!("committed {} {}", checkpoint_name(i), summary.id));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return usage();
    }
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("store_writer: {e}");
            ExitCode::FAILURE
        }
    }
}
