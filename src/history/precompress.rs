//! Pack values compressed ahead of PostgreSQL's TOAST: the lz4 varlena PostgreSQL would store,
//! built by driftdb (decision record D17 in docs/architecture.md).
//!
//! `driftdb.packs.data` is an lz4-compressed column. Left to PostgreSQL, each pack row's value
//! is copied into a bytea, then compressed by TOAST with `LZ4_compress_default`. A bulk load's
//! commit spends about a sixth of its time there. Here the pack is compressed straight from the
//! writer's buffer into the inline compressed varlena (`varattrib_4b.va_compressed`: a 4-byte
//! header with the compressed-inline tag, a 4-byte word holding the raw size and the method
//! id, then an lz4 block). TOAST leaves a value that is already compressed as it is, and every
//! reader (`pg_detoast_datum`, `pg_column_compression`, pg_dump) sees exactly what PostgreSQL
//! would have written, only with a faster lz4 setting: [`ACCELERATION`].
//!
//! Only used when the column's compression is lz4 (`attcompression = 'l'`), which
//! sql/bootstrap.sql sets where the server was built with lz4. Elsewhere, and for a value lz4
//! does not shrink, the plain bytea goes to PostgreSQL as before.
use pgrx::pg_sys;

/// lz4's acceleration (1 is `LZ4_compress_default`, PostgreSQL's setting): the compressor
/// skips ahead faster through input that does not match. On the COPY benchmark's packs (11 kB
/// of MessagePack each, 21.6 MB in all), one core: 1 compressed 1.615× at 1020 MB/s, 2 1.571×
/// at 1350 MB/s, 3 1.551× at 1560 MB/s, 4 1.542× at 1650 MB/s, 8 1.398× at 2090 MB/s. At 3,
/// a packed COPY's commit costs 12% fewer instructions than with TOAST compressing (700 of
/// 5800 added per row, `benches/sql/instructions.sh`), for 3.5% more bytes stored; 6 saved
/// nothing more there.
pub const ACCELERATION: i32 = 3;

/// `attcompression` of a column compressed with lz4 (toast_compression.h: TOAST_LZ4_COMPRESSION).
pub const ATT_LZ4: u8 = b'l';

/// The method id of lz4 in a compressed varlena's size word (toast_compression.h:
/// TOAST_LZ4_COMPRESSION_ID), above its VARLENA_EXTSIZE_BITS bits of raw size.
const LZ4_METHOD_ID: u32 = 1;

/// Bytes before the compressed data: va_header and va_tcinfo (postgres.h: VARHDRSZ_COMPRESSED).
const HEADER: usize = 8;

/// Whether column `attnum` (from 1) of `rel` is lz4-compressed.
///
/// # Safety
/// `rel` must be an open relation with at least `attnum` columns.
pub unsafe fn column_is_lz4(rel: pg_sys::Relation, attnum: usize) -> bool {
    let desc = (*rel).rd_att;
    let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
    attrs.get(attnum - 1).is_some_and(|a| a.attcompression as u8 == ATT_LZ4)
}

/// `raw` as an inline lz4-compressed varlena, palloc'd in the current memory context, or None
/// when lz4 does not shrink it the way TOAST requires (PostgreSQL then gets the plain value
/// and decides as it always does).
///
/// # Safety
/// Allocates in the current memory context (the datum lives as long as it).
pub unsafe fn lz4_varlena(raw: &[u8]) -> Option<pg_sys::Datum> {
    // the header's layout is the little-endian one (postgres.h, SET_VARSIZE_COMPRESSED);
    // elsewhere PostgreSQL compresses, as before
    if cfg!(target_endian = "big") || raw.len() >= (1 << pg_sys::VARLENA_EXTSIZE_BITS) || raw.len() < 32 {
        return None;
    }
    let n = raw.len() as i32;
    let bound = lz4_sys::LZ4_compressBound(n);
    if bound <= 0 {
        return None;
    }
    let buf = pg_sys::palloc(HEADER + bound as usize) as *mut u8;
    // SAFETY: `raw` is n readable bytes; `buf + HEADER` has `bound` writable bytes, what lz4
    // may write at most (LZ4_compressBound); lz4 reads and writes nothing else.
    let len = lz4_sys::LZ4_compress_fast(raw.as_ptr().cast(), buf.add(HEADER).cast(), n, bound, ACCELERATION);
    let total = HEADER + len.max(0) as usize;
    // toast_compress_datum keeps a compressed value only if it saves more than 2 bytes
    if len <= 0 || total >= raw.len() - 2 {
        pg_sys::pfree(buf.cast());
        return None;
    }
    // SAFETY: buf has HEADER bytes before the data; unaligned writes, palloc aligns anyway.
    // va_header: the total size shifted past the two tag bits, tag 0b10 (4-byte, compressed).
    std::ptr::write_unaligned(buf as *mut u32, ((total as u32) << 2) | 0x02);
    // va_tcinfo: the raw size and the method id
    std::ptr::write_unaligned(buf.add(4) as *mut u32, raw.len() as u32 | (LZ4_METHOD_ID << pg_sys::VARLENA_EXTSIZE_BITS));
    Some(pg_sys::Datum::from(buf))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::pg_sys;
    use pgrx::prelude::*;

    /// Bytes back from a varlena datum the way every reader gets them (`pg_detoast_datum`).
    unsafe fn detoasted(d: pg_sys::Datum) -> Vec<u8> {
        let v = pg_sys::pg_detoast_datum(d.cast_mut_ptr());
        std::slice::from_raw_parts(pgrx::vardata_any(v) as *const u8, pgrx::varsize_any_exhdr(v)).to_vec()
    }

    #[pg_test]
    fn lz4_varlena_is_what_postgres_reads_back() {
        // compressible: MessagePack-like runs with some variety
        let raw: Vec<u8> = (0..11_000u32).flat_map(|i| [0x92, (i % 7) as u8, b'a' + (i % 26) as u8, 0xcd]).collect();
        unsafe {
            let d = super::lz4_varlena(&raw).expect("compressible input is compressed");
            let p = d.cast_mut_ptr::<u8>();
            // inline, 4-byte header, compressed (postgres.h: VARATT_IS_4B_C), smaller than raw
            assert_eq!(*p & 0x03, 0x02);
            assert!(pgrx::varsize_any(p.cast()) < raw.len());
            assert_eq!(detoasted(d), raw);
            // the method in the size word is lz4's (postgres.h: VARDATA_COMPRESSED_GET_COMPRESS_METHOD)
            assert_eq!(std::ptr::read_unaligned(p.add(4) as *const u32) >> pg_sys::VARLENA_EXTSIZE_BITS, 1);
        }
    }

    #[pg_test]
    fn lz4_varlena_leaves_incompressible_and_small_values_to_postgres() {
        // xorshift noise does not compress
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        unsafe {
            assert!(super::lz4_varlena(&noise).is_none());
            assert!(super::lz4_varlena(b"short").is_none());
        }
    }
}
