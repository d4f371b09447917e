//! The compiled-component cache: artifacts Sluice compiled itself, under
//! `.sluice/cache/`, so a restart or a reload of an unchanged plugin costs
//! milliseconds instead of seconds.
//!
//! An entry's name is the SHA-256 of the component's bytes plus a hash of the
//! engine's compatibility (wasmtime version and configuration), so an
//! artifact is only ever loaded by the engine that wrote it. Each file ends
//! with the SHA-256 of the artifact; a file that does not match (truncated,
//! or corrupted) is compiled again, never deserialized. Files are written to
//! a temporary name and renamed into place, so a reader never sees half of
//! one.
//!
//! A checksum guards against accidents, not against someone else writing
//! the cache: an artifact is native code, run by the host outside the
//! sandbox. So the cache is used only when its folder and the artifact
//! belong to the user the host runs as and no other user can write them
//! ([`untrusted`]), as ssh treats its keys; otherwise the plugin is compiled
//! and the log says why. The folder is made readable by that user alone.

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
        if let Some(why) = untrusted(&self.dir) {
            tracing::warn!(
                "not using the compiled-component cache {}: {why}, so its artifacts (native code) could be anyone's; compiling instead (chmod go-w, or chown it to this user)",
                self.dir.display()
            );
            return Ok((Component::new(engine, bytes)?, Source::Compiled));
        }
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
        if let Some(why) = untrusted(path) {
            tracing::warn!("ignoring cached artifact {}: {why}; compiling instead", path.display());
            return None;
        }
        let file = std::fs::read(path).ok()?;
        let artifact = verified(&file)?;
        // SAFETY: the folder and the file belong to this user and no other
        // user can write them (`untrusted`), `verified` proved these are the
        // exact bytes written, and the file name pins the engine they were
        // written for; wasmtime checks that compatibility again and refuses
        // a mismatch.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("ignoring cached artifact {}: {e:#}", path.display());
                None
            }
        }
    }

    fn write(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let mut folder = std::fs::DirBuilder::new();
        folder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
        folder.create(&self.dir)?;
        let mut file = component.serialize()?;
        let checksum = Sha256::digest(&file);
        file.extend_from_slice(&checksum);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(&tmp)?, &file)?;
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

/// Why `path` (the cache's folder, or an artifact in it) cannot be trusted
/// to hold native code for this process, or `None` when it can (or does not
/// exist): it must belong to the user the process runs as, and no other
/// user (its group, or anyone) may write it.
#[cfg(unix)]
pub fn untrusted(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Some(format!("it belongs to uid {}, not to the user Sluice runs as (uid {me})", meta.uid()));
    }
    let mode = meta.mode() & 0o777;
    (mode & 0o022 != 0).then(|| format!("other users can write it (mode {mode:o})"))
}

/// Why `path` cannot be trusted (see the Unix version): nothing is checked
/// elsewhere.
#[cfg(not(unix))]
pub fn untrusted(_path: &Path) -> Option<String> {
    None
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
