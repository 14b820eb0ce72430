//! Buffer tables: per shard, each channel's records since its last
//! checkpoint, and what each segment of the log holds that is still needed.

pub mod cache;
pub mod channel;
pub mod channels;
mod image;
pub mod pins;
mod replay;
pub mod slots;
