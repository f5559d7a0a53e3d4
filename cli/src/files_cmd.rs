//! `zap store put|get`: checkpoints of plain files.
//!
//! `put` walks its paths (directories recursively, never following symlinks; symlinks and special
//! files are skipped) and stores each regular file as an image of kind `File` named by its
//! absolute path. Files are read in 64 MiB windows, each chunked by `zap_store::store_run` at its
//! file offset, so unchanged data deduplicates against everything already stored. The manifest's
//! `state` holds the file list as JSON (`[{"path", "len", "mode"}]`) so that `get` restores exact
//! lengths and permission bits.
//!
//! `get` recreates every file as `DIR/<absolute path without the leading />`, again one 64 MiB
//! window at a time: the image's extents are clipped to the window and materialized into a buffer.
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zap_chunker::ChunkerConfig;
use zap_store::{
    clip, materialize, store_run, ChunkSink, Extent, ExtentData, Image, ImageKind, ImageStore, LocalStore, Manifest,
};

use crate::error::{CliError, Result};
use crate::output::{bytes, duration, gb_per_s, outln, Output};
use crate::progress::{self, Progress};
use crate::Ctx;

/// Bytes read, chunked or restored at a time.
const WINDOW: u64 = 64 << 20;
/// Kind of the checkpoints `put` makes.
const KIND: &str = "files";

/// Options of `zap store put`.
#[derive(Args)]
pub struct PutArgs {
    /// Files and directories to store (directories recursively; symlinks and special files are
    /// skipped, never followed).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Name of the checkpoint [default: the first path].
    #[arg(long)]
    name: Option<String>,
    /// A label to attach, as KEY=VALUE; may be repeated.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Record this checkpoint (id or unique prefix) as the parent.
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
}

/// Options of `zap store get`.
#[derive(Args)]
pub struct GetArgs {
    /// Checkpoint id or unique prefix (at least 4 hex digits).
    id: String,
    /// Directory to recreate the files under (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn parse_label(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// One stored file, as recorded in the manifest state.
#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    /// Absolute path, also the image name.
    path: String,
    /// Exact length in bytes.
    len: u64,
    /// Permission bits (`st_mode & 0o7777`).
    mode: u32,
}

/// A regular file found by the walk.
struct Found {
    path: PathBuf,
    len: u64,
    mode: u32,
}

/// The absolute form of `path`: its directory resolved, its last component kept as it is (so that
/// a symlink given on the command line is seen as a symlink).
fn absolute(path: &Path) -> Result<PathBuf> {
    let resolve = |p: &Path| fs::canonicalize(p).map_err(|e| CliError::io("resolve", p, e));
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            Ok(resolve(dir)?.join(name))
        }
        _ => resolve(path),
    }
}

/// Walks `roots`; returns the regular files by absolute path and the number of entries skipped.
fn collect(roots: &[PathBuf]) -> Result<(BTreeMap<String, Found>, u64)> {
    let mut files = BTreeMap::new();
    let mut skipped = 0u64;
    let mut stack: Vec<(PathBuf, bool)> = Vec::new();
    for root in roots {
        stack.push((absolute(root)?, true));
    }
    while let Some((path, top)) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(|e| CliError::io("stat", &path, e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let list = fs::read_dir(&path).map_err(|e| CliError::io("list directory", &path, e))?;
            for entry in list {
                let entry = entry.map_err(|e| CliError::io("list directory", &path, e))?;
                stack.push((entry.path(), false));
            }
        } else if !ft.is_file() {
            skipped += 1;
            if top {
                progress::warn(format_args!("skipping {}: not a regular file or directory", path.display()));
            } else {
                tracing::info!(path = %path.display(), "skipping: not a regular file or directory");
            }
        } else if let Some(name) = path.to_str() {
            let found = Found { len: meta.len(), mode: meta.mode() & 0o7777, path: path.clone() };
            files.insert(name.to_string(), found);
        } else {
            skipped += 1;
            progress::warn(format_args!("skipping {}: the path is not valid UTF-8", path.display()));
        }
    }
    Ok((files, skipped))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Stores one file window by window; returns its extents and the bytes read.
fn store_file<S: ChunkSink>(
    sink: &mut S,
    cfg: &ChunkerConfig,
    path: &Path,
    buf: &mut [u8],
    bar: &Progress,
) -> Result<(Vec<Extent>, u64)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| CliError::io("open", path, e))?;
    let mut extents: Vec<Extent> = Vec::new();
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut file, buf).map_err(|e| CliError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        let (run, _) = store_run(sink, cfg, offset, &buf[..n])
            .map_err(|e| CliError::Step { step: format!("store {}", path.display()), source: e })?;
        for e in run {
            // Zero extents of consecutive windows join up, as they would within one run.
            match extents.last_mut() {
                Some(prev) if prev.data == ExtentData::Zero && e.data == ExtentData::Zero && prev.end() == e.start => {
                    prev.len += e.len
                }
                _ => extents.push(e),
            }
        }
        offset += n as u64;
        bar.inc(n as u64);
        if n < buf.len() {
            break;
        }
    }
    Ok((extents, offset))
}

/// `zap store put`.
pub fn put(ctx: &Ctx, args: &PutArgs) -> Result<Output> {
    let store = ctx.open()?;
    let parent = args.parent.as_deref().map(|p| store.resolve(p)).transpose()?;
    let (files, skipped) = collect(&args.paths)?;
    if files.is_empty() {
        return Err(CliError::Invalid(format!(
            "nothing to store: no regular file in {}",
            args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let total: u64 = files.values().map(|f| f.len).sum();
    let largest = files.values().map(|f| f.len).max().unwrap_or(0);
    let name = match &args.name {
        Some(n) => n.clone(),
        None => absolute(&args.paths[0])?.to_string_lossy().into_owned(),
    };
    let mut manifest = Manifest::new(name, KIND);
    manifest.parent = parent;
    manifest.labels.extend(args.labels.iter().cloned());

    let started = Instant::now();
    let cfg = ChunkerConfig::default();
    // Sized for the largest file as walked; a file that grew since is read in several windows.
    let mut buf = vec![0u8; largest.clamp(1, WINDOW) as usize];
    let mut entries = Vec::with_capacity(files.len());
    let mut logical = 0u64;
    let summary = {
        let bar = Progress::bytes(total, "put");
        let mut writer = store.writer()?;
        for (path, f) in &files {
            let (extents, len) = store_file(&mut writer, &cfg, &f.path, &mut buf, &bar)?;
            logical += len;
            entries.push(FileEntry { path: path.clone(), len, mode: f.mode });
            manifest.images.push(Image { name: path.clone(), kind: ImageKind::File, extents });
        }
        manifest.state =
            serde_json::to_vec(&entries).map_err(|e| CliError::Invalid(format!("encode the file list: {e}")))?;
        writer.commit(manifest)?
    };
    let elapsed = started.elapsed();
    let rate = gb_per_s(logical, elapsed);
    if ctx.json {
        return Output::json(&json!({
            "id": summary.id.to_hex(),
            "name": summary.name,
            "files": entries.len(),
            "skipped": skipped,
            "logical_bytes": logical,
            "zero_bytes": summary.zero_bytes,
            "new_chunks": summary.new_chunks,
            "new_stored_bytes": summary.new_stored_bytes,
            "seconds": elapsed.as_secs_f64(),
            "gb_per_s": rate,
        }));
    }
    let mut out = String::new();
    outln!(out, "stored checkpoint {} ({})", summary.id, summary.name);
    outln!(
        out,
        "{} file(s), {} logical ({} zero), {} new stored in {} chunk(s)",
        entries.len(),
        bytes(logical),
        bytes(summary.zero_bytes),
        bytes(summary.new_stored_bytes),
        summary.new_chunks
    );
    if skipped > 0 {
        outln!(out, "skipped {skipped} non-regular entries (symlinks, sockets, devices...)");
    }
    outln!(out, "{} at {rate:.2} GB/s", duration(elapsed));
    Ok(Output::text(out))
}

/// Where the file stored as `name` (an absolute path) goes under `out`.
fn destination(out: &Path, name: &str) -> Result<PathBuf> {
    let refuse = || CliError::Invalid(format!("image {name:?} is not a plain absolute path; refusing to restore it"));
    let mut parts = Path::new(name).components();
    if parts.next() != Some(Component::RootDir) {
        return Err(refuse());
    }
    let mut dest = out.to_path_buf();
    for part in parts {
        match part {
            Component::Normal(p) => dest.push(p),
            _ => return Err(refuse()),
        }
    }
    if dest == out {
        return Err(refuse());
    }
    Ok(dest)
}

/// Writes one file of `len` bytes from `img`, window by window, under a temporary name that is
/// renamed over `dest` once complete: a failed restore leaves no half-written file (and keeps a
/// file that was there before).
fn restore_file(
    store: &LocalStore,
    img: &Image,
    len: u64,
    mode: u32,
    dest: &Path,
    buf: &mut [u8],
    bar: &Progress,
) -> Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(|e| CliError::io("create directory", dir, e))?;
    }
    let mut part_name = std::ffi::OsString::from(".");
    part_name.push(dest.file_name().unwrap_or_default());
    part_name.push(".zap-part");
    let part = dest.with_file_name(part_name);
    let written = write_file(store, img, len, mode, &part, buf, bar)
        .and_then(|()| fs::rename(&part, dest).map_err(|e| CliError::io("rename into place", dest, e)));
    if written.is_err() {
        let _ = fs::remove_file(&part);
    }
    written
}

fn write_file(
    store: &LocalStore,
    img: &Image,
    len: u64,
    mode: u32,
    path: &Path,
    buf: &mut [u8],
    bar: &Progress,
) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| CliError::io("create", path, e))?;
    let mut pos = 0u64;
    while pos < len {
        let end = (pos + WINDOW).min(len);
        let window = &mut buf[..(end - pos) as usize];
        window.fill(0);
        materialize(store, &clip(&img.extents, pos, end), pos, window)
            .map_err(|e| CliError::Step { step: format!("restore {} at offset {pos:#x}", img.name), source: e })?;
        file.write_all(window).map_err(|e| CliError::io("write", path, e))?;
        bar.inc(end - pos);
        pos = end;
    }
    file.set_permissions(Permissions::from_mode(mode)).map_err(|e| CliError::io("set mode of", path, e))
}

/// `zap store get`.
pub fn get(ctx: &Ctx, args: &GetArgs) -> Result<Output> {
    let store = ctx.open()?;
    let id = store.resolve(&args.id)?;
    let manifest = store.manifest(&id)?;
    if manifest.kind != KIND {
        return Err(CliError::Invalid(format!(
            "checkpoint {id} is of kind {:?}; `zap store get` restores only {KIND:?} checkpoints (made by `zap store put`)",
            manifest.kind
        )));
    }
    let entries: Vec<FileEntry> = if manifest.state.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&manifest.state).map_err(|e| {
            CliError::Invalid(format!("checkpoint {id}: the file list in its manifest is unreadable: {e}"))
        })?
    };
    let by_path: HashMap<&str, &FileEntry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
    // Length and mode per image; a file missing from the list ends with its last extent.
    let plan: Vec<(&Image, u64, u32)> = manifest
        .images
        .iter()
        .filter(|img| img.kind == ImageKind::File)
        .map(|img| match by_path.get(img.name.as_str()) {
            Some(e) => (img, e.len, e.mode),
            None => (img, img.extents.last().map_or(0, Extent::end), 0o600),
        })
        .collect();
    let total: u64 = plan.iter().map(|(_, len, _)| len).sum();
    let largest = plan.iter().map(|(_, len, _)| *len).max().unwrap_or(0);
    fs::create_dir_all(&args.out).map_err(|e| CliError::io("create directory", &args.out, e))?;

    let started = Instant::now();
    let mut buf = vec![0u8; largest.clamp(1, WINDOW) as usize];
    {
        let bar = Progress::bytes(total, "get");
        for (img, len, mode) in &plan {
            let dest = destination(&args.out, &img.name)?;
            restore_file(&store, img, *len, *mode, &dest, &mut buf, &bar)?;
        }
    }
    let elapsed = started.elapsed();
    let rate = gb_per_s(total, elapsed);
    if ctx.json {
        return Output::json(&json!({
            "id": id.to_hex(),
            "out": args.out.to_string_lossy(),
            "files": plan.len(),
            "bytes": total,
            "seconds": elapsed.as_secs_f64(),
            "gb_per_s": rate,
        }));
    }
    let mut out = String::new();
    outln!(out, "restored checkpoint {id} into {}", args.out.display());
    outln!(out, "{} file(s), {} in {} at {rate:.2} GB/s", plan.len(), bytes(total), duration(elapsed));
    Ok(Output::text(out))
}
