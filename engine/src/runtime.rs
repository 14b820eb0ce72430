//! The engine's machinery as a whole: the directory, the lock, the shards.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::io::buffer::round_up;
use crate::io::file::{self, Access, DirLock, DiskFile};
use crate::io::fs::Fs;
use crate::metrics::ShardMetricsSnapshot;
use crate::shard::{spawn_shard, ShardHandle, ShardSpec};
use crate::store;
use crate::types::ShardId;

/// A running set of shards over one data directory.
pub struct Runtime {
    config: Arc<Config>,
    block: usize,
    shards: Vec<ShardHandle>,
    cores: Vec<usize>,
    _lock: DirLock,
}

impl Runtime {
    /// Opens (or creates) the directory and starts one thread per shard.
    /// Returns as soon as the threads started; each recovers on its own.
    pub fn start(config: Config) -> Result<Runtime> {
        config.validate()?;
        if config.backend.uses_io_uring() {
            crate::io::probe_io_uring()?;
        }
        let cores = chosen_cores(&config)?;
        if file::exists(&config.dir) {
            file::check_dir_mode(&config.dir, config.dir_mode)?;
        } else {
            file::create_dir(&Fs::of(&config.backend), &config.dir, config.dir_mode)?;
        }
        let lock = DirLock::acquire(&config.dir, config.file_mode, config.lock_wait)?;
        let meta = open_store(&config, cores.len())?;
        let block = block_bytes(&config)?;
        config.validate_with_block(block)?;
        let config = Arc::new(config);
        let mut shards = Vec::with_capacity(meta.shards as usize);
        for s in 0..meta.shards as u16 {
            let spec = ShardSpec {
                id: ShardId(s),
                core: Some(cores[s as usize % cores.len()]),
                dir: store::shard_dir(&config.dir, s),
                store_id: meta.store_id,
                block,
                cache_budget: config.buffer_bytes_per_shard(meta.shards as usize),
                config: config.clone(),
            };
            match spawn_shard(spec) {
                Ok(h) => shards.push(h),
                Err(e) => {
                    for h in &shards {
                        let _ = h.close();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Runtime {
            config,
            block,
            shards,
            cores,
            _lock: lock,
        })
    }

    /// Blocks until every shard has recovered; the first failure is returned.
    pub fn wait_ready(&self) -> Result<()> {
        let mut first = Ok(());
        for s in &self.shards {
            if let Err(e) = s.wait_ready() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// The shard that owns channel `name`.
    pub fn shard_for(&self, name: &str) -> &ShardHandle {
        &self.shards[store::route(name, self.shards.len()) as usize]
    }

    /// Every shard.
    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The block size commits are aligned to.
    pub fn block_bytes(&self) -> usize {
        self.block
    }

    /// The cores shards are pinned to.
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// Sum of every shard's counters.
    pub fn metrics(&self) -> ShardMetricsSnapshot {
        self.shards
            .iter()
            .map(|s| s.metrics.snapshot())
            .fold(ShardMetricsSnapshot::default(), |a, b| a + b)
    }

    /// Finishes what is queued and in flight, and stops every shard; a
    /// shard still recovering stops its replay.
    ///
    /// # Errors
    /// The first shard's failure (`ShardFailed`), if any shard had failed;
    /// every shard is stopped either way.
    pub fn close(&self) -> Result<()> {
        // Every shard is told first, so that recoveries stop side by side.
        for s in &self.shards {
            s.request_stop();
        }
        let mut first = Ok(());
        for s in &self.shards {
            if let Err(e) = s.close() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The cores the shards are pinned to: `config.cores`, each of which must be
/// in the process's affinity mask, or the whole mask.
fn chosen_cores(config: &Config) -> Result<Vec<usize>> {
    let allowed = crate::cores::allowed_cores()?;
    Ok(match &config.cores {
        None => allowed.clone(),
        Some(cores) => {
            if let Some(c) = cores.iter().find(|c| !allowed.contains(c)) {
                return Err(Error::InvalidConfig {
                    field: "cores",
                    reason: format!("core {c} is not in the process's affinity mask {allowed:?}"),
                });
            }
            cores.clone()
        }
    })
}

/// The store's meta file, read (checked against `config.shards`, and its
/// directory synced) or created with `config.shards`, else one shard per
/// core of `cores`.
fn open_store(config: &Config, cores: usize) -> Result<store::Meta> {
    Ok(match store::read_meta(&config.dir)? {
        Some(meta) => {
            if let Some(requested) = config.shards {
                if requested != meta.shards as usize {
                    return Err(Error::ShardCountMismatch {
                        path: config.dir.clone(),
                        recorded: meta.shards as usize,
                        requested,
                    });
                }
            }
            // An earlier process may have died before syncing this
            // directory: the meta file's and the shard directories'
            // names are made durable before anything is built on them.
            file::sync_dir(&Fs::of(&config.backend), &config.dir)?;
            meta
        }
        None => {
            // The data directory itself may be new and its name not yet
            // durable (made by a process that died before syncing its
            // parent, or by the caller): synced before the store is built
            // in it.
            file::sync_dir(&Fs::of(&config.backend), file::parent_dir(&config.dir))?;
            let shards = config
                .shards
                .unwrap_or(cores)
                .clamp(1, crate::config::SHARDS_LIMIT);
            store::create(
                &Fs::of(&config.backend),
                &config.dir,
                shards as u32,
                config.dir_mode,
                config.file_mode,
            )?
        }
    })
}

/// The commit block size: the configured one, or the larger of the direct-I/O
/// offset alignment of a file in `dir` and 4096.
fn block_bytes(config: &Config) -> Result<usize> {
    let probe_path = config.dir.join("LOCK");
    let f = DiskFile::open_read(&probe_path, Access::Buffered)?;
    let dio = f.dio_offset_align().unwrap_or(4096);
    let block = match config.block_bytes {
        Some(b) => {
            if b < dio {
                return Err(Error::InvalidConfig {
                    field: "block_bytes",
                    reason: format!("is {b}, below the filesystem's direct-I/O alignment {dio}"),
                });
            }
            b
        }
        None => round_up(dio.max(4096), 4096),
    };
    if config.backend.uses_io_uring() {
        check_direct_io(&config.dir, config.file_mode)?;
    }
    Ok(block)
}

/// Refuses early, with the way out, when the filesystem will not do `O_DIRECT`.
fn check_direct_io(dir: &Path, mode: u32) -> Result<()> {
    let path = dir.join(".corewal-direct-io-probe");
    file::remove_leftover(&Fs::Real, &path);
    let r = DiskFile::create_new(&Fs::Real, &path, Access::Direct, mode);
    file::remove_leftover(&Fs::Real, &path);
    r.map(drop)
}
