//! core_snapshot.rs — criterion benchmarks of driftdb-core's snapshot blocks and row
//! versions: encoding and decoding a 100k-row snapshot of a typical 5-column table into 1 MiB
//! blocks (throughput in raw, uncompressed payload bytes; decoding both into one vector and
//! block by block as a scan would; also one single 100k-row block, compressed and not, and
//! a plain clone of the rows as the floor set by allocating them), and building the versions of 1.1M events (100k inserts, then 10
//! updates of every row) with `VersionBuilder`, draining closed versions as a caller would.
//! Run: cargo bench -p driftdb-core --bench core_snapshot [-- --quick]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use driftdb_core::{
    check_block, decode_snapshot_block, encode_snapshot_block, encode_snapshot_block_with,
    BlockSplitter, Codec, Event, Op, Row, Value, VersionBuilder,
};

const ROWS: i64 = 100_000;
const BLOCK: usize = 1 << 20;

/// (id int, name text ~20 chars, amount numeric, updated_at timestamptz, flag bool).
fn snapshot_row(id: i64, version: i64) -> Row {
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

fn encode_blocks(rows: &[Row]) -> Vec<Vec<u8>> {
    let mut s = BlockSplitter::new(BLOCK);
    let mut blocks: Vec<Vec<u8>> = rows.iter().filter_map(|r| s.push(r)).collect();
    blocks.extend(s.finish());
    blocks
}

fn decode_blocks(blocks: &[Vec<u8>]) -> Vec<Row> {
    let mut rows = Vec::with_capacity(ROWS as usize);
    for b in blocks {
        rows.extend(decode_snapshot_block(b).unwrap());
    }
    rows
}

fn bench_snapshot(c: &mut Criterion) {
    let rows: Vec<Row> = (0..ROWS).map(|id| snapshot_row(id, 0)).collect();
    let blocks = encode_blocks(&rows);
    assert_eq!(decode_blocks(&blocks), rows);
    let raw: u64 = blocks
        .iter()
        .map(|b| check_block(b).unwrap().raw_len as u64)
        .sum();
    let stored: u64 = blocks.iter().map(|b| b.len() as u64).sum();
    println!(
        "snapshot of {ROWS} rows: {} blocks, {raw} raw payload bytes ({:.1} per row), \
         {stored} bytes stored (ratio {:.2})",
        blocks.len(),
        raw as f64 / ROWS as f64,
        raw as f64 / stored as f64
    );
    let one = encode_snapshot_block(&rows);
    let one_raw = encode_snapshot_block_with(&rows, Codec::Uncompressed);

    let mut g = c.benchmark_group("snapshot_100k");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(raw));
    g.bench_function("encode_1mib_blocks", |b| {
        b.iter(|| encode_blocks(black_box(&rows)))
    });
    g.bench_function("decode_1mib_blocks", |b| {
        b.iter(|| decode_blocks(black_box(&blocks)))
    });
    // as a scan returning tuples would: each block's rows dropped before the next is decoded
    g.bench_function("decode_1mib_blocks_streamed", |b| {
        b.iter(|| {
            black_box(&blocks)
                .iter()
                .map(|blk| decode_snapshot_block(blk).unwrap().len())
                .sum::<usize>()
        })
    });
    g.bench_function("encode_one_block", |b| {
        b.iter(|| encode_snapshot_block(black_box(&rows)))
    });
    g.bench_function("decode_one_block", |b| {
        b.iter(|| decode_snapshot_block(black_box(&one)).unwrap())
    });
    g.bench_function("decode_one_block_uncompressed", |b| {
        b.iter(|| decode_snapshot_block(black_box(&one_raw)).unwrap())
    });
    // reference point: allocating and filling the decoded rows' memory, no decoding at all
    g.bench_function("clone_rows", |b| b.iter(|| black_box(&rows).clone()));
    g.finish();
}

/// Events `from..to` of the history: inserts of ids 0..ROWS (seqs 1..=ROWS), then rounds
/// 1..=10 each updating every row once, in id order.
fn events(from: u64, to: u64) -> Vec<Event> {
    (from..to)
        .map(|i| {
            let seq = i + 1;
            let at = 820_000_000_000_000 + seq as i64 * 1_000;
            let id = (i % ROWS as u64) as i64;
            let round = (i / ROWS as u64) as i64;
            if round == 0 {
                let mut e = Event::new(seq, at, 16_384, Op::Insert);
                e.new = Some(snapshot_row(id, 0));
                e
            } else {
                let mut e = Event::new(seq, at, 16_384, Op::Update);
                e.old = Some(snapshot_row(id, round - 1));
                e.new = Some(snapshot_row(id, round));
                e
            }
        })
        .collect()
}

fn bench_versions(c: &mut Criterion) {
    const EVENTS: u64 = 11 * ROWS as u64;
    const CHUNK: u64 = 50_000;
    let mut g = c.benchmark_group("versions");
    g.sample_size(10);
    g.throughput(Throughput::Elements(EVENTS));
    // Events are generated in chunks outside the timed part: holding all 1.1M events (two
    // row images each) would take over a gigabyte.
    g.bench_function("build_1.1m_events", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut vb = VersionBuilder::new(Some(vec![1]));
                let mut n = 0usize;
                let mut from = 0;
                while from < EVENTS {
                    let chunk = events(from, (from + CHUNK).min(EVENTS));
                    from += CHUNK;
                    let t = Instant::now();
                    for e in &chunk {
                        vb.apply(e).unwrap();
                        n += vb.drain_closed().count();
                    }
                    total += t.elapsed();
                }
                let t = Instant::now();
                n += vb.finish().len();
                total += t.elapsed();
                assert_eq!(n, EVENTS as usize);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench_snapshot, bench_versions);
criterion_main!(benches);
