//! driftdb-core — the pure-Rust storage core of driftdb (no PostgreSQL dependency).
//!
//! It defines what a committed change looks like and how it is stored and checked:
//! `value`/`row` (the portable value model, keyed by attnum), `event` (one change),
//! `frame` (the versioned, CRC-protected on-disk encoding, and canonical key bytes),
//! `replay` (rebuilding and verifying a table from its history), `versions` (every version
//! of every row, with the span of history it was current for), `snapshot` (the compressed,
//! CRC-protected block format of snapshots), `segment` (compacted event segments in that
//! block format, and the SHA-256 hash chain), `pack` (a bulk transaction's row events of one
//! table, key-sorted, in one value), `txbuf` (the per-transaction change buffer the
//! extension fills from its write callbacks), `net` (folding a transaction's changes to
//! one net change per row) and `numeric` (PostgreSQL numerics' stored form to text).

#![forbid(unsafe_code)]

pub mod event;
pub mod frame;
pub mod net;
pub mod numeric;
pub mod pack;
pub mod replay;
pub mod row;
pub mod segment;
pub mod snapshot;
#[cfg(test)]
mod testdata;
pub mod txbuf;
pub mod value;
pub mod versions;

pub use event::{ColumnDef, Event, Op, SchemaChange};
pub use frame::{
    check_frame, decode_frame, decode_key, decode_new_image, encode_frame, encode_key, int_key_ranges, split_frame, FrameError, FrameParts, FORMAT_VERSION,
    HEADER_LEN, MAGIC,
};
pub use pack::{BuiltPack, NewEntry, Pack, PackBuilder, PackEntry, PackError, PACK_FORMAT_V1, PACK_FORMAT_VERSION, PACK_MAGIC};
pub use replay::{multiset_diff, ImageReplay, ReplayError, State};
pub use row::Row;
pub use segment::{
    chain_hash, decode_segment, decode_segment_key, encode_segment, segment_info, sha256,
    Hash, SegmentBuilder, SegmentEntry, SegmentError, SegmentInfo, CHAIN_DOMAIN, GENESIS,
    SEGMENT_FORMAT_VERSION,
};
pub use snapshot::{
    check_block, decode_snapshot_block, encode_snapshot_block, encode_snapshot_block_with,
    split_into_blocks, BlockError, SnapshotCursor, BlockInfo, BlockKind, BlockSplitter, Codec,
    BLOCK_FORMAT_VERSION, BLOCK_HEADER_LEN, BLOCK_MAGIC,
};
pub use txbuf::{Endpoint, TableChanges, TxBuf, TxBufError};
pub use value::Value;
pub use versions::{Version, VersionBuilder};
