//! Pipelines that move memory between a process and the store in overlapping stages, using
//! both cores, with one code path whatever the parallelism: [`dump`] (read pages, chunk, hash,
//! compress, write packs) and [`restore`] (read and verify chunks, write pages).
//!
//! The stages are the same functions in the same order for [`zap_chunker::Parallelism::Serial`]
//! and [`zap_chunker::Parallelism::Rayon`]; only where they run differs (one thread, or threads
//! joined by bounded channels, with rayon inside a stage). Both give identical chunk ids, pack
//! contents and manifests (tested in `engine/tests/pipeline.rs`).
pub mod dump;
pub mod restore;
