//! `zap store verify|gc|stats`: store maintenance.
//!
//! `verify` reads every pack, chunk and manifest; it prints every problem on its object and every
//! checkpoint that cannot be restored, and exits with status 1 when it found anything (with or
//! without `--json`). `gc` frees unreferenced chunks; `stats` shows where the bytes are.
use clap::Args;
use serde_json::json;
use zap_store::{CheckpointId, ImageStore};

use crate::error::{CliError, Result};
use crate::output::{bytes, outln, short_id, summary_json, Align, Output, Table};
use crate::progress::Progress;
use crate::Ctx;

/// Options of `zap store gc`.
#[derive(Args)]
pub struct GcArgs {
    /// Rewrite packs whose dead bytes are at least this share of the pack (0.0 to 1.0).
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction, value_name = "F")]
    repack_threshold: f64,
}

fn parse_fraction(s: &str) -> std::result::Result<f64, String> {
    let f: f64 = s.trim().parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is not between 0.0 and 1.0"))
    }
}

/// `zap store verify`.
pub fn verify(ctx: &Ctx) -> Result<Output> {
    let store = ctx.open()?;
    let report = {
        let bar = Progress::bytes(0, "verify");
        store.verify(&|done, total| bar.report(done, total))?
    };
    if ctx.json {
        return Ok(Output::json(&report)?.failed(!report.ok()));
    }
    let mut out = String::new();
    outln!(
        out,
        "checked {} pack(s), {} chunk(s) ({} stored), {} checkpoint(s)",
        report.packs,
        report.chunks,
        bytes(report.bytes),
        report.checkpoints
    );
    for p in &report.problems {
        outln!(out, "problem: {}: {}", p.object, p.detail);
    }
    for (cid, bad) in &report.broken {
        let name = CheckpointId::from_hex(cid)
            .and_then(|id| store.summary(&id).ok())
            .map_or_else(String::new, |s| format!(" ({})", s.name));
        let why = if *bad == 0 { "its manifest cannot be read".to_string() } else { format!("{bad} bad chunk(s)") };
        outln!(out, "broken checkpoint {cid}{name}: {why}");
    }
    if report.ok() {
        outln!(out, "no problems found");
    } else {
        outln!(out, "{} problem(s); {} checkpoint(s) cannot be restored", report.problems.len(), report.broken.len());
    }
    Ok(Output::text(out).failed(!report.ok()))
}

/// `zap store gc`.
pub fn gc(ctx: &Ctx, args: &GcArgs) -> Result<Output> {
    let store = ctx.open()?;
    let r = store.gc(args.repack_threshold)?;
    if ctx.json {
        return Output::json(&r);
    }
    let mut out = String::new();
    outln!(out, "kept {} live chunk(s) referenced by {} checkpoint(s)", r.live_chunks, r.checkpoints);
    outln!(out, "freed {} chunk(s)", r.freed_chunks);
    outln!(out, "packs: {} deleted, {} rewritten", r.packs_deleted, r.packs_rewritten);
    outln!(
        out,
        "pack files: {} -> {} ({} freed)",
        bytes(r.bytes_before),
        bytes(r.bytes_after),
        bytes(r.bytes_before.saturating_sub(r.bytes_after))
    );
    Ok(Output::text(out))
}

/// `zap store stats`.
pub fn stats(ctx: &Ctx) -> Result<Output> {
    let store = ctx.open()?;
    let s = store.stats()?;
    let list = store.list()?;
    if ctx.json {
        let store_json = serde_json::to_value(&s).map_err(|e| CliError::Invalid(format!("encode statistics: {e}")))?;
        let rows = list.iter().map(summary_json).collect::<Result<Vec<_>>>()?;
        return Output::json(&json!({ "store": store_json, "checkpoints": rows }));
    }
    let mut out = String::new();
    outln!(out, "store        {}", ctx.store.display());
    outln!(out, "checkpoints  {}", s.checkpoints);
    outln!(out, "logical      {} ({} zero, {} data)", bytes(s.logical_bytes), bytes(s.zero_bytes), bytes(s.data_bytes));
    outln!(out, "chunks       {} ({} raw, {} stored)", s.chunks, bytes(s.chunk_raw_bytes), bytes(s.chunk_stored_bytes));
    outln!(out, "packs        {} ({} on disk)", s.packs, bytes(s.pack_bytes));
    outln!(out, "dedup        {:.2}x (data bytes / distinct chunk bytes)", s.dedup_ratio);
    outln!(out, "compression  {:.2}x (raw / stored)", s.compression_ratio);
    if !list.is_empty() {
        outln!(out);
        let mut table = Table::new(&[
            ("ID", Align::Left),
            ("NAME", Align::Left),
            ("LOGICAL", Align::Right),
            ("ZERO", Align::Right),
            ("REFERENCED", Align::Right),
            ("NEW", Align::Right),
            ("MANIFEST", Align::Right),
        ]);
        for c in &list {
            table.row(vec![
                short_id(&c.id),
                c.name.clone(),
                bytes(c.logical_bytes),
                bytes(c.zero_bytes),
                bytes(c.chunk_stored_bytes),
                bytes(c.new_stored_bytes),
                bytes(c.manifest_bytes),
            ]);
        }
        out.push_str(&table.render());
        outln!(out, "REFERENCED: stored bytes of the chunks a checkpoint uses; NEW: what it added when written");
    }
    Ok(Output::text(out))
}
