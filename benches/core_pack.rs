//! core_pack.rs — criterion benchmarks of driftdb-core's event packs (`core/src/pack.rs`): a
//! bulk load's history, 100k inserted rows of the 5-column table of core_segment.rs, as the
//! commit packs it (frame tails in key order, cut at 11220 bytes, the size `driftdb.packs`'
//! toast_tuple_target of 8160 gives). Measures building the packs (`PackBuilder`, throughput in
//! the bytes of the frames they stand for), checking one pack (`Pack::parse`: header, CRC and
//! every entry's bounds and order — what a key lookup pays per pack it reads), finding one key
//! in a checked pack (`Pack::find`, a binary search) and rebuilding its frame (`PackEntry::frame`).
//! Run: cargo bench -p driftdb-core --bench core_pack [-- --quick]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use driftdb_core::frame::encode_event_tail;
use driftdb_core::{encode_frame, encode_key, Event, NewEntry, Op, Pack, PackBuilder, Row, Value};

const ROWS: i64 = 100_000;
const PACK_BYTES: usize = 11220;
const SEQ: u64 = 1;
const AT: i64 = 820_000_000_000_000;
const TABLE: u32 = 16_384;

fn row(id: i64) -> Row {
    Row(vec![
        (1, Value::Int(id)),
        (2, Value::Text(format!("customer {id:07} v00"))),
        (3, Value::Numeric(format!("{}.{:02}", 10 + (id * 7919) % 99_990, id % 100))),
        (4, Value::TimestampTz(820_000_000_000_000 + id * 1_000_003)),
        (5, Value::Bool(id % 3 == 0)),
    ])
}

/// (key, frame tail, frame length) of every inserted row, in key order (as the commit numbers
/// them).
fn entries() -> Vec<(Vec<u8>, Vec<u8>, usize)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>, usize)> = (0..ROWS)
        .map(|id| {
            let mut e = Event::new(SEQ, AT, TABLE, Op::Insert);
            e.key = Some(vec![Value::Int(id)]);
            e.new = Some(row(id));
            let mut tail = Vec::new();
            encode_event_tail(&e, &mut tail);
            (encode_key(&[Value::Int(id)]), tail, encode_frame(&e).len())
        })
        .collect();
    out.sort();
    out
}

fn build(es: &[(Vec<u8>, Vec<u8>, usize)]) -> Vec<Vec<u8>> {
    let mut b = PackBuilder::new(PACK_BYTES);
    b.start(SEQ, AT, TABLE);
    let mut packs = Vec::new();
    for (i, (k, t, _)) in es.iter().enumerate() {
        packs.extend(b.push(NewEntry { ord: 2 * i as i32, op: b'i', key: k, tail: t }).unwrap().map(|p| p.data));
    }
    packs.extend(b.finish().map(|p| p.data));
    packs
}

fn bench(c: &mut Criterion) {
    let es = entries();
    let frame_bytes: usize = es.iter().map(|e| e.2).sum();
    let packs = build(&es);
    println!(
        "{} events, {:.0} frame bytes each, in {} packs ({:.1} events per pack, {:.0} bytes per pack)",
        es.len(),
        frame_bytes as f64 / es.len() as f64,
        packs.len(),
        es.len() as f64 / packs.len() as f64,
        packs.iter().map(Vec::len).sum::<usize>() as f64 / packs.len() as f64
    );
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(frame_bytes as u64));
    g.bench_function("build 100k events", |b| b.iter(|| black_box(build(black_box(&es)))));
    g.finish();
    let mut g = c.benchmark_group("pack lookup");
    let one = &packs[packs.len() / 2];
    let key = Pack::parse(one).unwrap().entry(7).unwrap().key.to_vec();
    g.bench_function("parse one pack", |b| b.iter(|| black_box(Pack::parse(black_box(one)).unwrap().len())));
    let p = Pack::parse(one).unwrap();
    g.bench_function("find one key", |b| b.iter(|| black_box(p.find(black_box(&key)).count())));
    g.bench_function("find one key and rebuild its frame", |b| b.iter(|| black_box(p.find(black_box(&key)).map(|e| e.frame().len()).sum::<usize>())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
