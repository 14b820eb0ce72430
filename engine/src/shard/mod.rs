//! Shards: one thread per selected core, each owning its channels, its inbox,
//! its ring and its segments. Nothing here is shared with another shard.
//!
//! `thread` starts the shard and answers for it; `run` holds the `Shard` and
//! its event loop; `admission` turns requests into entries of the commit being
//! built; `group_commit` takes commits to the device and acknowledges them;
//! `durability` is its clock (acknowledged, durable, sync due);
//! `active_segment` rolls and syncs the segment being written; `reclaim`
//! lets the oldest segments go once nothing needs them; `tails` keeps the
//! subscriptions that follow channels; `waiters` is what
//! the shard owes its callers.

pub mod ack;
mod active_segment;
mod admission;
mod durability;
mod group_commit;
pub mod inbox;
mod reads;
pub use reads::READS_IN_FLIGHT_MAX;
mod reclaim;
mod run;
mod snapshot;
mod tails;
mod thread;
pub mod usage;
mod waiters;

pub use thread::{spawn_shard, ShardHandle, ShardSpec};
