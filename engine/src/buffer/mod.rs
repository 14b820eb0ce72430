//! Buffer tables: per shard, each channel's records since its last checkpoint.

pub mod channels;
