//! core_segment.rs — criterion benchmarks of driftdb-core's compacted event segments: the
//! history of a typical 5-column table, 100k rows x (1 insert + 10 updates) = 1.1M events
//! (each update carrying its old and new row image, as driftdb records them), sorted by key as
//! compaction reads them, cut into segments of 64 KiB raw payload by `SegmentBuilder`.
//! Prints once the compressed bytes per event (against the frame bytes and an estimated
//! PostgreSQL heap row), then measures encoding (`SegmentBuilder`, which validates every frame
//! by decoding it) and decoding (`decode_segment`, every entry with its frame rebuilt byte for
//! byte), throughput in raw (uncompressed) segment payload bytes, plus one key's lookup
//! (`decode_segment_key`, one decompression and a skip over the segment's other keys) and
//! `segment_info`. The timed encode/decode runs take the first 20k rows' events (220k events,
//! ~230 segments) per iteration; the byte figures are over all 1.1M events.
//! Run: cargo bench -p driftdb-core --bench core_segment [-- --quick]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use driftdb_core::{
    decode_segment, decode_segment_key, encode_frame, encode_key, segment_info, Event, Op, Row,
    SegmentBuilder, SegmentEntry, SegmentInfo, Value,
};

const ROWS: i64 = 100_000;
const UPDATES: i64 = 10;
const TIMED_ROWS: i64 = 20_000;
const TARGET: usize = 64 * 1024;
/// PostgreSQL heap bytes of one such row: 24-byte tuple header + 4-byte line pointer + data
/// (int4 4, text ~21, numeric ~10, timestamptz 8 aligned, bool 1, padding).
const HEAP_ROW_BYTES: f64 = 80.0;

/// (id int, name text ~20 chars, amount numeric, updated_at timestamptz, flag bool), as in
/// core_snapshot.rs.
fn row(id: i64, version: i64) -> Row {
    Row(vec![
        (1, Value::Int(id)),
        (2, Value::Text(format!("customer {id:07} v{version:02}"))),
        (
            3,
            Value::Numeric(format!(
                "{}.{:02}",
                10 + (id * 7919 + version) % 99_990,
                id % 100
            )),
        ),
        (
            4,
            Value::TimestampTz(820_000_000_000_000 + id * 1_000_003 + version * 86_400_000_000),
        ),
        (5, Value::Bool((id + version) % 3 == 0)),
    ])
}

/// The events.rows of ids `0..rows`, in (key, seq) order: round 0 inserted every row (seqs
/// 1..=ROWS), round r updated every row once, in id order. Keys are MessagePack `[id]`, whose
/// byte order is not id order; sorted as PostgreSQL's bytea btree would.
fn entries(rows: i64) -> Vec<SegmentEntry> {
    let mut ids: Vec<(Vec<u8>, i64)> = (0..rows)
        .map(|id| (encode_key(&[Value::Int(id)]), id))
        .collect();
    ids.sort();
    let mut out = Vec::with_capacity((rows * (UPDATES + 1)) as usize);
    for (key, id) in ids {
        for round in 0..=UPDATES {
            let seq = round * ROWS + id + 1;
            let at = 820_000_000_000_000 + seq * 1_000;
            let mut e = Event::new(seq as u64, at, 16_384, Op::Insert);
            e.key = Some(vec![Value::Int(id)]);
            if round > 0 {
                e.op = Op::Update;
                e.old = Some(row(id, round - 1));
            }
            e.new = Some(row(id, round));
            out.push(SegmentEntry {
                seq,
                ord: 0,
                op: if round == 0 { b'i' } else { b'u' },
                key: key.clone(),
                frame: encode_frame(&e),
            });
        }
    }
    out
}

fn encode_all(entries: &[SegmentEntry]) -> Vec<(Vec<u8>, SegmentInfo)> {
    let mut b = SegmentBuilder::new(TARGET);
    let mut segs: Vec<_> = entries.iter().filter_map(|e| b.push(e).unwrap()).collect();
    segs.extend(b.finish());
    segs
}

fn bench_segments(c: &mut Criterion) {
    {
        let all = entries(ROWS);
        let segs = encode_all(&all);
        let n = all.len() as f64;
        let frames: usize = all.iter().map(|e| e.frame.len()).sum();
        let raw: u64 = segs.iter().map(|s| s.1.raw_len as u64).sum();
        let stored: usize = segs.iter().map(|s| s.0.len()).sum();
        let per_event = stored as f64 / n;
        println!(
            "{} events ({ROWS} rows x (1 insert + {UPDATES} updates)): {} segments of {} KiB \
             raw target; frames {:.1} bytes/event, raw payload {:.1}, stored {per_event:.2} \
             (block headers included) = {:.3}x a ~{HEAP_ROW_BYTES} byte heap row",
            all.len(),
            segs.len(),
            TARGET / 1024,
            frames as f64 / n,
            raw as f64 / n,
            per_event / HEAP_ROW_BYTES,
        );
    }

    let timed = entries(TIMED_ROWS);
    let segs = encode_all(&timed);
    let blocks: Vec<Vec<u8>> = segs.iter().map(|s| s.0.clone()).collect();
    let raw: u64 = segs.iter().map(|s| s.1.raw_len as u64).sum();
    let back: Vec<SegmentEntry> = blocks
        .iter()
        .flat_map(|b| decode_segment(b).unwrap())
        .collect();
    assert!(back == timed);
    // one key from the middle of each segment
    let probes: Vec<(&Vec<u8>, Vec<u8>)> = blocks
        .iter()
        .map(|b| {
            let d = decode_segment(b).unwrap();
            let key = d[d.len() / 2].key.clone();
            (b, key)
        })
        .collect();
    let raw_per_seg = raw as f64 / blocks.len() as f64;
    println!(
        "timed set: {} events in {} segments, {raw} raw payload bytes ({raw_per_seg:.0} per \
         segment)",
        timed.len(),
        blocks.len()
    );

    let mut g = c.benchmark_group("segment_64k");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(raw));
    g.bench_function("encode", |b| b.iter(|| encode_all(black_box(&timed))));
    g.bench_function("decode", |b| {
        b.iter(|| {
            black_box(&blocks)
                .iter()
                .map(|blk| decode_segment(blk).unwrap().len())
                .sum::<usize>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("segment_64k_lookup");
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("decode_segment_key", |b| {
        b.iter(|| {
            probes
                .iter()
                .map(|(blk, key)| decode_segment_key(black_box(blk), key).unwrap().len())
                .sum::<usize>()
        })
    });
    g.bench_function("segment_info", |b| {
        b.iter(|| {
            probes
                .iter()
                .map(|(blk, _)| segment_info(black_box(blk)).unwrap().nevents)
                .sum::<u32>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_segments);
criterion_main!(benches);
