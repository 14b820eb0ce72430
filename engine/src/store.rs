//! The data directory: its lock, its `corewal.meta` file (store identity and
//! shard count) and one sub-directory per shard.
//!
//! ```text
//! DIR/LOCK                  flock held by the engine that has the directory open
//! DIR/corewal.meta          64 bytes, see below
//! DIR/shard-000/…wal        segments of shard 0
//! ```
//!
//! `corewal.meta`, little-endian: `0 magic u32 "CWMT"`, `4 crc32c of bytes 8..64`,
//! `8 version u16`, `10 reserved u16`, `12 shards u32`, `16 store_id u64`,
//! `24 created_unix_ns u64`, zeros to byte 64.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::file::{self, Access, DiskFile};
use crate::io::fs::Fs;

const META_FILE: &str = "corewal.meta";
const META_MAGIC: u32 = u32::from_le_bytes(*b"CWMT");
const META_BYTES: usize = 64;
const META_VERSION: u16 = 1;

/// What `corewal.meta` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Number of shards; fixed for the directory's life.
    pub shards: u32,
    /// Random identity written into every segment and commit header.
    pub store_id: u64,
    /// Creation time.
    pub created_unix_ns: u64,
}

impl Meta {
    fn encode(&self) -> [u8; META_BYTES] {
        let mut b = [0u8; META_BYTES];
        b[0..4].copy_from_slice(&META_MAGIC.to_le_bytes());
        b[8..10].copy_from_slice(&META_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.shards.to_le_bytes());
        b[16..24].copy_from_slice(&self.store_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_unix_ns.to_le_bytes());
        let crc = crc32c::crc32c(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(path: &Path, b: &[u8]) -> Result<Meta> {
        let bad = |what: &str| Error::Format {
            path: path.into(),
            what: what.into(),
        };
        if b.len() != META_BYTES {
            return Err(bad("corewal.meta is not 64 bytes"));
        }
        if b[0..4] != META_MAGIC.to_le_bytes() {
            return Err(bad("not a corewal.meta file (bad magic)"));
        }
        let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        if crc32c::crc32c(&b[8..]) != crc {
            return Err(bad("corewal.meta checksum mismatch"));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != META_VERSION {
            return Err(bad(&format!(
                "corewal.meta version {version} is not readable by this build"
            )));
        }
        let shards = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        if shards == 0 || shards as usize > crate::config::SHARDS_LIMIT {
            return Err(bad(&format!("corewal.meta records {shards} shards")));
        }
        Ok(Meta {
            shards,
            store_id: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            created_unix_ns: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        })
    }
}

/// The directory of shard `shard`.
pub fn shard_dir(dir: &Path, shard: u16) -> PathBuf {
    dir.join(format!("shard-{shard:03}"))
}

/// Reads `DIR/corewal.meta`, or `None` when the directory holds no store yet.
pub fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let path = dir.join(META_FILE);
    match read_bounded(&path, META_BYTES) {
        Ok(b) => Meta::decode(&path, &b).map(Some),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            // Shard directories holding files without a meta file mean the
            // meta was lost: refuse rather than start a second, unrelated
            // store over them. Empty ones are what a crash during `create`
            // leaves (the meta comes last, and no shard writes before it
            // exists): the store is created again over them.
            if shard_dirs_hold_files(dir)? {
                return Err(Error::Format {
                    path,
                    what: "missing, but shard directories exist; restore corewal.meta or move the directory away".into(),
                });
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether any `shard-NNN` directory in `dir` holds anything.
fn shard_dirs_hold_files(dir: &Path) -> Result<bool> {
    let listed = file::list_dir(dir, "list data directory")?.unwrap_or_default();
    for entry in listed {
        let is_shard = entry
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("shard-"));
        if !is_shard {
            continue;
        }
        if !entry.kind.is_dir() {
            return Ok(true);
        }
        let inside = file::list_dir(&entry.path, "list shard directory")?;
        if inside.is_some_and(|v| !v.is_empty()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads `path`, a regular file of at most `max` bytes: a larger file is
/// refused from its size alone, and never more than `max + 1` bytes are read
/// (the file may grow meanwhile).
fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>> {
    let f = DiskFile::open_read(path, Access::Buffered)?;
    f.read_bounded(max)?.ok_or_else(|| Error::Format {
        path: path.into(),
        what: format!("is larger than {max} bytes, the size of a corewal.meta file"),
    })
}

/// Creates a store with `shards` shards: the shard directories, then the
/// meta file (written, synced, renamed into place, directory synced), so that
/// a crash leaves either no store or a whole one.
pub fn create(fs: &Fs, dir: &Path, shards: u32, dir_mode: u32, file_mode: u32) -> Result<Meta> {
    let meta = Meta {
        shards,
        store_id: file::random_u64()?,
        created_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    for s in 0..shards {
        let d = shard_dir(dir, s as u16);
        file::create_dir(fs, &d, dir_mode)?;
    }
    let tmp = dir.join("corewal.meta.tmp");
    file::publish(fs, &tmp, &dir.join(META_FILE), &meta.encode(), file_mode)?;
    Ok(meta)
}

/// The shard that owns channel `name`: the name's CRC32C scaled onto
/// `0..shards` (multiply-shift). Stable across versions and machines.
pub fn route(name: &str, shards: usize) -> u16 {
    let h = crc32c::crc32c(name.as_bytes()) as u64;
    ((h * shards as u64) >> 32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_damage() {
        let m = Meta {
            shards: 3,
            store_id: 99,
            created_unix_ns: 5,
        };
        let b = m.encode();
        assert_eq!(Meta::decode(Path::new("x"), &b).unwrap(), m);
        for i in 0..META_BYTES {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(Meta::decode(Path::new("x"), &d).is_err(), "byte {i}");
        }
    }

    #[test]
    fn routing_is_stable_and_spread() {
        // Pinned values: changing the routing function would strand data.
        let pinned: Vec<u16> = ["dml_3_v0", "a", "orders", "channel-7"]
            .iter()
            .map(|n| route(n, 7))
            .collect();
        assert_eq!(pinned, [4, 5, 0, 0]);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[route(&format!("channel-{i}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(route("anything", 1), 0);
    }
}
