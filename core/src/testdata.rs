//! testdata.rs — values for the core's unit tests: one of every `Value` variant, with the edge
//! cases each encoding must carry exactly (NaN payloads, the sign of zero, extreme integers and
//! dates, empty and long texts, arrays and records), and a tiny deterministic PRNG for the
//! randomized tests. Compiled for tests only.

use crate::value::Value;

/// Every kind of value once or more; texts include one of `long_text` bytes.
pub(crate) fn every_value(long_text: usize) -> Vec<Value> {
    let scalars = vec![
        Value::Null,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(127),
        Value::Int(128),
        Value::Int(-33),
        Value::Int(300),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::Float(0.0),
        Value::Float(-0.0),
        Value::Float(1.25e-300),
        Value::Float(f64::NAN),
        Value::Float(f64::from_bits(0x7ff0_0000_dead_beef)), // NaN with a payload
        Value::Float(f64::INFINITY),
        Value::Float(f64::NEG_INFINITY),
        Value::Text(String::new()),
        Value::Text("héllo wörld ✓ 🎉".into()),
        Value::Text("x".repeat(long_text)),
        Value::Bytes(vec![]),
        Value::Bytes((0..=255).collect()),
        Value::Numeric("-123456789012345678901234567890.000100".into()),
        Value::Numeric("NaN".into()),
        Value::Date(-730_120),
        Value::Date(i32::MAX),
        Value::Time(86_399_999_999),
        Value::TimeTz(3_600_000_000, -19_800),
        Value::Timestamp(i64::MIN),
        Value::Timestamp(812_345_678_901_234),
        Value::TimestampTz(-1),
        Value::TimestampTz(812_345_678_901_234),
        Value::Interval { months: -14, days: 3, micros: -5_000_001 },
        Value::Uuid([0xab; 16]),
        Value::Other("{\"json\": [1, 2]}".into()),
    ];
    let mut all = scalars.clone();
    all.push(Value::Array { lower: vec![], dims: vec![], elems: vec![] });
    all.push(Value::Array {
        lower: vec![1, -2],
        dims: vec![2, 2],
        elems: vec![Value::Int(1), Value::Null, Value::Float(f64::NAN), Value::Int(4)],
    });
    all.push(Value::Record(vec![]));
    all.push(Value::Record(scalars));
    all
}

/// xorshift64: a tiny deterministic PRNG, so the randomized tests need no dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in 0..n.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}
