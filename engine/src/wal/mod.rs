//! The write-ahead log: format, segments, commit assembly.

pub mod commit;
pub mod format;
pub mod manifest;
pub mod preparer;
pub mod reader;
pub mod segment;
pub mod snapshot;
