//! `zap store ...`: the command group over the image store.
//!
//! This module declares the whole group and runs the catalogue commands (`init`, `ls`, `show`,
//! `rm`); maintenance (`verify`, `gc`, `stats`) is in [`crate::maint_cmd`], storing and restoring
//! plain files (`put`, `get`) in [`crate::files_cmd`]. Checkpoints are named by their 16-digit hex
//! id or any unique prefix of at least 4 digits.
use std::collections::BTreeSet;

use clap::Subcommand;
use serde_json::{json, Value};
use zap_store::{CheckpointId, ExtentData, Image, ImageKind, ImageStore, LocalStore, StoreError, StoreOptions};

use crate::error::Result;
use crate::output::{self, bytes, outln, percent, short_id, summary_json, utc, Align, Output, Table};
use crate::{files_cmd, maint_cmd, progress, Ctx};

/// The `zap store` subcommands.
#[derive(Subcommand)]
pub enum StoreCommand {
    /// Create the store (nothing happens if it exists).
    Init,
    /// List checkpoints, oldest first.
    Ls,
    /// Show a checkpoint: its summary, images, labels and children.
    Show {
        /// Checkpoint id or unique prefix (at least 4 hex digits).
        id: String,
    },
    /// Read every chunk and manifest and report damage; exit status 1 when anything is wrong.
    Verify,
    /// Free the space of chunks no checkpoint references.
    Gc(maint_cmd::GcArgs),
    /// Store-wide figures and a per-checkpoint table.
    Stats,
    /// Delete checkpoints (their space is freed by `zap store gc`).
    Rm {
        /// Checkpoint ids or unique prefixes.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Store files and directories as one checkpoint of kind `files`.
    Put(files_cmd::PutArgs),
    /// Recreate the files of a `files` checkpoint under a directory.
    Get(files_cmd::GetArgs),
}

/// Runs one `zap store` subcommand.
pub fn run(ctx: &Ctx, cmd: StoreCommand) -> Result<Output> {
    match cmd {
        StoreCommand::Init => init(ctx),
        StoreCommand::Ls => ls(ctx),
        StoreCommand::Show { id } => show(ctx, &id),
        StoreCommand::Verify => maint_cmd::verify(ctx),
        StoreCommand::Gc(args) => maint_cmd::gc(ctx, &args),
        StoreCommand::Stats => maint_cmd::stats(ctx),
        StoreCommand::Rm { ids } => rm(ctx, &ids),
        StoreCommand::Put(args) => files_cmd::put(ctx, &args),
        StoreCommand::Get(args) => files_cmd::get(ctx, &args),
    }
}

fn init(ctx: &Ctx) -> Result<Output> {
    let (store, created) = match LocalStore::open(&ctx.store, StoreOptions::default()) {
        Ok(store) => (store, false),
        Err(StoreError::NotAStore(_)) => {
            (LocalStore::open(&ctx.store, StoreOptions { create: true, ..StoreOptions::default() })?, true)
        }
        Err(e) => return Err(e.into()),
    };
    let path = std::fs::canonicalize(store.root()).unwrap_or_else(|_| store.root().to_path_buf());
    let path = path.to_string_lossy();
    if ctx.json {
        return Output::json(&json!({ "path": path, "created": created }));
    }
    let mut out = String::new();
    if created {
        outln!(out, "created store {path}");
    } else {
        outln!(out, "store {path} already exists");
    }
    Ok(Output::text(out))
}

/// `zap store ls`, also `zap ls`: the checkpoints, oldest first.
pub fn ls(ctx: &Ctx) -> Result<Output> {
    let store = ctx.open()?;
    let list = store.list()?;
    if ctx.json {
        let rows = list.iter().map(summary_json).collect::<Result<Vec<_>>>()?;
        return Output::json(&rows);
    }
    if list.is_empty() {
        return Ok(Output::text(format!("no checkpoints in {}\n", ctx.store.display())));
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("CREATED (UTC)", Align::Left),
        ("NAME", Align::Left),
        ("KIND", Align::Left),
        ("LOGICAL", Align::Right),
        ("NEW", Align::Right),
        ("REUSED", Align::Right),
        ("PARENT", Align::Left),
    ]);
    for s in &list {
        table.row(vec![
            short_id(&s.id),
            utc(s.created_ms),
            s.name.clone(),
            s.kind.clone(),
            bytes(s.logical_bytes),
            bytes(s.new_stored_bytes),
            percent(s.chunk_stored_bytes.saturating_sub(s.new_stored_bytes), s.chunk_stored_bytes),
            s.parent.as_ref().map_or_else(|| "-".into(), short_id),
        ]);
    }
    let mut out = table.render();
    outln!(
        out,
        "{} checkpoint(s); REUSED: share of a checkpoint's stored bytes already in the store when written",
        list.len()
    );
    Ok(Output::text(out))
}

/// Lower-case name of an image kind.
pub fn kind_name(kind: ImageKind) -> &'static str {
    match kind {
        ImageKind::Memory => "memory",
        ImageKind::File => "file",
    }
}

fn zero_bytes(img: &Image) -> u64 {
    img.extents.iter().filter(|e| e.data == ExtentData::Zero).map(|e| e.len).sum()
}

fn show(ctx: &Ctx, prefix: &str) -> Result<Output> {
    let store = ctx.open()?;
    let id = store.resolve(prefix)?;
    let summary = store.summary(&id)?;
    let manifest = store.manifest(&id)?;
    let children = store.children(&id)?;
    if ctx.json {
        let mut v = summary_json(&summary)?;
        if let Value::Object(map) = &mut v {
            let images: Vec<Value> = manifest
                .images
                .iter()
                .map(|img| {
                    json!({
                        "name": img.name,
                        "kind": kind_name(img.kind),
                        "extents": img.extents.len(),
                        "logical_bytes": img.logical_len(),
                        "zero_bytes": zero_bytes(img),
                    })
                })
                .collect();
            map.insert("images".into(), Value::Array(images));
            map.insert("children".into(), json!(children.iter().map(CheckpointId::to_hex).collect::<Vec<_>>()));
            map.insert("state_bytes".into(), json!(manifest.state.len()));
        }
        return Output::json(&v);
    }
    let s = &summary;
    let mut out = String::new();
    outln!(out, "checkpoint  {}", s.id);
    outln!(out, "created     {} UTC", utc(s.created_ms));
    outln!(out, "name        {}", s.name);
    outln!(out, "kind        {}", s.kind);
    outln!(out, "parent      {}", s.parent.map_or_else(|| "-".into(), |p| p.to_hex()));
    outln!(out, "labels      {}", output::labels(&s.labels));
    outln!(out, "logical     {} ({} in zero extents)", bytes(s.logical_bytes), bytes(s.zero_bytes));
    outln!(
        out,
        "chunks      {} referenced: {} raw, {} stored",
        s.chunks,
        bytes(s.chunk_raw_bytes),
        bytes(s.chunk_stored_bytes)
    );
    outln!(out, "new         {} chunks, {} stored", s.new_chunks, bytes(s.new_stored_bytes));
    outln!(out, "manifest    {} (engine state {})", bytes(s.manifest_bytes), bytes(manifest.state.len() as u64));
    let children: Vec<String> = children.iter().map(CheckpointId::to_hex).collect();
    outln!(out, "children    {}", if children.is_empty() { "-".into() } else { children.join(", ") });
    outln!(out);
    if manifest.images.is_empty() {
        outln!(out, "no images");
    } else {
        let mut table = Table::new(&[
            ("IMAGE", Align::Left),
            ("KIND", Align::Left),
            ("EXTENTS", Align::Right),
            ("LOGICAL", Align::Right),
            ("ZERO", Align::Right),
        ]);
        for img in &manifest.images {
            table.row(vec![
                img.name.clone(),
                kind_name(img.kind).into(),
                img.extents.len().to_string(),
                bytes(img.logical_len()),
                bytes(zero_bytes(img)),
            ]);
        }
        out.push_str(&table.render());
    }
    Ok(Output::text(out))
}

fn rm(ctx: &Ctx, prefixes: &[String]) -> Result<Output> {
    let store = ctx.open()?;
    // Resolve everything first: a typo in the last id must not leave the first ones deleted.
    let mut ids: Vec<CheckpointId> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        let id = store.resolve(p)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let removing: BTreeSet<CheckpointId> = ids.iter().copied().collect();
    let mut out = String::new();
    for id in &ids {
        let name = store.summary(id).map(|s| s.name).unwrap_or_default();
        let orphans: Vec<String> =
            store.children(id)?.iter().filter(|c| !removing.contains(c)).map(CheckpointId::to_hex).collect();
        if !orphans.is_empty() {
            progress::warn(format_args!(
                "checkpoint {id} is the parent of {}; deleting it anyway (children are self-contained)",
                orphans.join(", ")
            ));
        }
        store.delete(id)?;
        outln!(out, "removed {id} {name}");
    }
    if ctx.json {
        return Output::json(&json!({ "removed": ids.iter().map(CheckpointId::to_hex).collect::<Vec<_>>() }));
    }
    outln!(out, "run `zap store gc` to free the space they used");
    Ok(Output::text(out))
}
