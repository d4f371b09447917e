//! The compiled-component cache: artifacts Sluice compiled itself, under
//! `.sluice/cache/`, so a restart or a reload of an unchanged plugin costs
//! milliseconds instead of seconds.
//!
//! An entry's name is the SHA-256 of the component's bytes plus a hash of the
//! engine's compatibility (wasmtime version and configuration), so an
//! artifact is only ever loaded by the engine that wrote it. Each file ends
//! with the SHA-256 of the artifact; a file that does not match (truncated,
//! corrupted, or written by anything else) is compiled again, never
//! deserialized. Files are written to a temporary name and renamed into
//! place, so a reader never sees half of one.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Length of the trailing checksum.
const CHECKSUM_LEN: usize = 32;

/// A folder of compiled artifacts, for any engine.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

/// Where a component came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Loaded from the cache.
    Cache,
    /// Compiled now (and written to the cache).
    Compiled,
}

impl ComponentCache {
    /// A cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> ComponentCache {
        ComponentCache { dir: dir.into() }
    }

    /// The component for `engine` whose bytes are `bytes` (with SHA-256
    /// `digest`, hex): from the cache if a valid artifact is there, else
    /// compiled and stored.
    pub fn load(&self, engine: &Engine, bytes: &[u8], digest: &str) -> wasmtime::Result<(Component, Source)> {
        let path = self.dir.join(format!("{digest}-{}.cwasm", engine_key(engine)));
        if let Some(component) = self.read(engine, &path) {
            return Ok((component, Source::Cache));
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.write(&path, &component) {
            tracing::warn!("cannot write compiled-component cache {}: {e:#}", path.display());
        }
        Ok((component, Source::Compiled))
    }

    fn read(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let file = std::fs::read(path).ok()?;
        let artifact = verified(&file)?;
        // SAFETY: `verified` proved these are the exact bytes this cache
        // wrote, and the file name pins the engine they were written for;
        // wasmtime checks that compatibility again and refuses a mismatch.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("ignoring cached artifact {}: {e:#}", path.display());
                None
            }
        }
    }

    fn write(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut file = component.serialize()?;
        let checksum = Sha256::digest(&file);
        file.extend_from_slice(&checksum);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &file)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// Hex hash of `engine`'s compatibility (wasmtime version and
/// configuration, fuel counting included); part of every entry's name.
fn engine_key(engine: &Engine) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..8])
}

/// The artifact in `file` if its trailing checksum matches.
fn verified(file: &[u8]) -> Option<&[u8]> {
    let split = file.len().checked_sub(CHECKSUM_LEN)?;
    let (artifact, checksum) = file.split_at(split);
    (Sha256::digest(artifact).as_slice() == checksum).then_some(artifact)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `Hash` output into SHA-256, for a hash that is stable across runs.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 digest is used")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_or_truncated_file_is_not_trusted() {
        let mut file = b"artifact".to_vec();
        file.extend_from_slice(&Sha256::digest(b"artifact"));
        assert_eq!(verified(&file), Some(&b"artifact"[..]));
        let mut tampered = file.clone();
        tampered[0] ^= 1;
        assert_eq!(verified(&tampered), None);
        assert_eq!(verified(&file[..file.len() - 1]), None);
        assert_eq!(verified(b"short"), None);
    }
}
