//! Shards: one thread per selected core, each owning its channels, its inbox,
//! its ring and its segments. Nothing here is shared with another shard.

pub mod ack;
pub mod inbox;
mod run;

pub use run::{spawn_shard, ShardHandle, ShardSpec};
