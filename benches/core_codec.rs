//! core_codec.rs — criterion benchmarks of driftdb-core's hot paths: encoding/decoding one
//! event frame of a typical 6-column row (throughput in bytes and in events), replaying
//! 100k events into a `State`, and buffering 1M inserted handles in a `TxBuf`.
//! Run: cargo bench --manifest-path core/Cargo.toml --bench core_codec

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use driftdb_core::{decode_frame, encode_frame, Event, Op, Row, State, TxBuf, Value};

/// A typical row: bigint id, int customer, ~60-byte text, numeric amount, timestamptz, int.
fn typical_row(id: i64) -> Row {
    Row::new(vec![
        (1, Value::Int(id)),
        (2, Value::Int(40_000 + id % 977)),
        (
            3,
            Value::Text(format!(
                "order {id:08} for customer; express delivery, fragile goods!"
            )),
        ),
        (
            4,
            Value::Numeric(format!("{}.{:02}", 1000 + id % 9000, id % 100)),
        ),
        (5, Value::TimestampTz(820_000_000_000_000 + id * 1_000_003)),
        (6, Value::Int(id % 5)),
    ])
}

fn insert_event(seq: u64, id: i64) -> Event {
    let mut e = Event::new(seq, 820_000_000_000_000 + seq as i64, 16_384, Op::Insert);
    e.key = Some(vec![Value::Int(id)]);
    e.new = Some(typical_row(id));
    e
}

fn bench_frame(c: &mut Criterion) {
    let event = insert_event(123_456, 98_765);
    let frame = encode_frame(&event);
    assert_eq!(decode_frame(&frame).unwrap(), event);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode_bytes", |b| {
        b.iter(|| encode_frame(black_box(&event)))
    });
    g.bench_function("decode_bytes", |b| {
        b.iter(|| decode_frame(black_box(&frame)).unwrap())
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_events", |b| {
        b.iter(|| encode_frame(black_box(&event)))
    });
    g.bench_function("decode_events", |b| {
        b.iter(|| decode_frame(black_box(&frame)).unwrap())
    });
    g.finish();
    println!("typical 6-column insert frame: {} bytes", frame.len());
}

/// 100k events over one table: 60k inserts, 30k updates (every 20th changes the key),
/// 10k deletes, interleaved.
fn history(n: u64) -> Vec<Event> {
    let mut events = Vec::with_capacity(n as usize);
    let mut live: Vec<i64> = Vec::new();
    let mut next_id = 0i64;
    let mut x = 0x1234_5678_9abc_def0u64;
    for seq in 1..=n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let roll = x % 10;
        if live.is_empty() || roll < 6 {
            next_id += 1;
            live.push(next_id);
            events.push(insert_event(seq, next_id));
        } else {
            let slot = (x >> 8) as usize % live.len();
            let id = live[slot];
            if roll < 9 {
                let mut e = Event::new(seq, seq as i64, 16_384, Op::Update);
                let mut new = typical_row(id);
                new.0[5].1 = Value::Int(seq as i64);
                if seq % 20 == 0 {
                    next_id += 1;
                    e.old_key = Some(vec![Value::Int(id)]);
                    live[slot] = next_id;
                    new.0[0].1 = Value::Int(next_id);
                }
                e.key = Some(vec![new.0[0].1.clone()]);
                e.new = Some(new);
                events.push(e);
            } else {
                live.swap_remove(slot);
                let mut e = Event::new(seq, seq as i64, 16_384, Op::Delete);
                e.key = Some(vec![Value::Int(id)]);
                events.push(e);
            }
        }
    }
    events
}

fn bench_replay(c: &mut Criterion) {
    let events = history(100_000);
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("state_100k_events", |b| {
        b.iter(|| {
            let mut s = State::new();
            for e in &events {
                s.apply(e).unwrap();
            }
            s.len()
        })
    });
    g.finish();
}

fn bench_txbuf(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let mut g = c.benchmark_group("txbuf");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("insert_1m_handles", |b| {
        b.iter_batched(
            TxBuf::new,
            |mut buf| {
                for i in 0..N {
                    // Heap-TID-like handles: block number << 16 | line pointer.
                    buf.insert(16_384, ((i / 120) << 16) | (i % 120 + 1))
                        .unwrap();
                }
                buf
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    let mut buf = TxBuf::new();
    for i in 0..N {
        buf.insert(16_384, ((i / 120) << 16) | (i % 120 + 1))
            .unwrap();
    }
    println!(
        "txbuf: {:.1} heap bytes per lineage at 1M inserts",
        buf.heap_bytes() as f64 / N as f64
    );
}

criterion_group!(benches, bench_frame, bench_replay, bench_txbuf);
criterion_main!(benches);
