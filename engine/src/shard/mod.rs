//! Shards: one thread per selected core, each owning its channels, its inbox,
//! its ring and its segments. Nothing here is shared with another shard.

pub mod ack;
pub mod inbox;
pub mod metrics;
pub mod pin;
mod run;

use bytes::Bytes;

pub use run::{spawn_shard, ShardHandle, ShardSpec};

use crate::types::Offset;

/// A record read back from a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's offset in its channel.
    pub offset: Offset,
    /// The record's bytes.
    pub data: Bytes,
}
