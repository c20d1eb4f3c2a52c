//! Datum → portable `Value` (driftdb_core::Value) for one column, and tuple → `Row`.
//!
//! Values are encoded by *meaning*, never as raw datum images: integers, floats, booleans,
//! text (UTF-8), bytea, numeric (its text form), date/time types (PostgreSQL's integer
//! representations, independent of DateStyle/TimeZone), interval, uuid, arrays (recursively,
//! with bounds) and composites (recursively). Everything else — enums, json, inet, ranges,
//! user-defined types — is the type's text output. This keeps history readable after
//! pg_dump/restore into a cluster where type OIDs differ (decision record D4).
//!
//! Per-type decisions are cached per backend in `TYPE_CACHE` (type OID → `Kind`).
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::BuildHasherDefault;

use driftdb_core::net::FxHasher;
use driftdb_core::{Row, Value};
use pgrx::{pg_guard, pg_sys};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Char,
    Float4,
    Float8,
    Text,
    Name,
    Bytea,
    Numeric,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    Array { elem: pg_sys::Oid, elmlen: i16, elmbyval: bool, elmalign: std::ffi::c_char },
    Record,
    /// Text output through the type's output function.
    Output(pg_sys::Oid),
}

thread_local! {
    // looked up once per encoded datum (a bulk load's commit does it millions of times): a
    // cheap hash of the OID, and Kind is Copy
    static TYPE_CACHE: RefCell<HashMap<pg_sys::Oid, Kind, BuildHasherDefault<FxHasher>>> = RefCell::new(HashMap::default());
    static TYPE_CACHE_STALE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Kind {
    /// Can a value of this kind hold a float (itself, or in an element or field)?
    fn may_hold_float(self) -> bool {
        matches!(self, Kind::Float4 | Kind::Float8 | Kind::Array { .. } | Kind::Record)
    }
}

/// Forget every type's kind whenever pg_type changes (a type dropped and its OID reused would
/// otherwise keep the old type's kind). Registered once, from `_PG_init`.
pub fn register_type_invalidation() {
    // SAFETY: registering a process-lifetime syscache callback from _PG_init.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(pg_sys::SysCacheIdentifier::TYPEOID as i32, Some(type_changed), pg_sys::Datum::from(0usize));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn type_changed(_arg: pg_sys::Datum, _cacheid: i32, _hashvalue: u32) {
    // Invalidations are processed between lookups, not during a borrow of the cache (kind_of
    // borrows it only around its own get and insert); if one ever were, the cache is emptied
    // at the next lookup instead.
    TYPE_CACHE.with(|c| match c.try_borrow_mut() {
        Ok(mut m) => m.clear(),
        Err(_) => TYPE_CACHE_STALE.with(|s| s.set(true)),
    });
}

fn kind_of(typid: pg_sys::Oid) -> Kind {
    if TYPE_CACHE_STALE.with(|s| s.replace(false)) {
        TYPE_CACHE.with(|c| c.borrow_mut().clear());
    }
    if let Some(k) = TYPE_CACHE.with(|c| c.borrow().get(&typid).copied()) {
        return k;
    }
    let k = compute_kind(typid);
    TYPE_CACHE.with(|c| c.borrow_mut().insert(typid, k));
    k
}

fn compute_kind(typid: pg_sys::Oid) -> Kind {
    // SAFETY: plain syscache lookups on a valid type OID (it comes from a tuple descriptor).
    let base = unsafe { pg_sys::getBaseType(typid) };
    match base {
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::INT2OID => Kind::Int2,
        pg_sys::INT4OID => Kind::Int4,
        pg_sys::INT8OID => Kind::Int8,
        pg_sys::OIDOID | pg_sys::XIDOID | pg_sys::CIDOID | pg_sys::REGCLASSOID => Kind::Oid,
        pg_sys::CHAROID => Kind::Char,
        pg_sys::FLOAT4OID => Kind::Float4,
        pg_sys::FLOAT8OID => Kind::Float8,
        pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => Kind::Text,
        pg_sys::NAMEOID => Kind::Name,
        pg_sys::BYTEAOID => Kind::Bytea,
        pg_sys::NUMERICOID => Kind::Numeric,
        pg_sys::DATEOID => Kind::Date,
        pg_sys::TIMEOID => Kind::Time,
        pg_sys::TIMETZOID => Kind::TimeTz,
        pg_sys::TIMESTAMPOID => Kind::Timestamp,
        pg_sys::TIMESTAMPTZOID => Kind::TimestampTz,
        pg_sys::INTERVALOID => Kind::Interval,
        pg_sys::UUIDOID => Kind::Uuid,
        _ => unsafe {
            // SAFETY: syscache lookups on a valid type OID.
            let elem = pg_sys::get_element_type(base);
            if elem != pg_sys::InvalidOid {
                let (mut elmlen, mut elmbyval, mut elmalign) = (0i16, false, 0 as std::ffi::c_char);
                pg_sys::get_typlenbyvalalign(elem, &mut elmlen, &mut elmbyval, &mut elmalign);
                return Kind::Array { elem, elmlen, elmbyval, elmalign };
            }
            if pg_sys::get_typtype(base) as u8 == b'c' || base == pg_sys::RECORDOID {
                return Kind::Record;
            }
            let (mut out, mut varlena) = (pg_sys::InvalidOid, false);
            pg_sys::getTypeOutputInfo(base, &mut out, &mut varlena);
            Kind::Output(out)
        },
    }
}

/// Detoasted bytes of a varlena datum.
///
/// # Safety
/// `d` must be a non-null varlena datum; the result borrows memory that lives at least as long
/// as the current memory context.
#[inline]
unsafe fn varlena_bytes<'a>(d: pg_sys::Datum) -> &'a [u8] {
    let mut v = d.cast_mut_ptr::<pg_sys::varlena>();
    // what pg_detoast_datum_packed does, without the call for the usual inline value: only a
    // compressed or out-of-line value needs detoasting
    if pgrx::varlena::varatt_is_4b_c(v) || pgrx::varlena::varatt_is_1b_e(v) {
        v = pg_sys::pg_detoast_datum_packed(v);
    }
    let len = pgrx::varsize_any_exhdr(v);
    let data = pgrx::vardata_any(v) as *const u8;
    std::slice::from_raw_parts(data, len)
}

/// Server-encoded text bytes → UTF-8 String.
unsafe fn server_text(bytes: &[u8]) -> String {
    if pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 {
        // the server validated these bytes as UTF-8 on input
        String::from_utf8_unchecked(bytes.to_vec())
    } else {
        let p = pg_sys::pg_server_to_any(
            bytes.as_ptr() as *const std::ffi::c_char,
            bytes.len() as i32,
            pg_sys::pg_enc::PG_UTF8 as i32,
        );
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

unsafe fn cstring(p: *const std::ffi::c_char) -> String {
    CStr::from_ptr(p).to_string_lossy().into_owned()
}

/// Encode one non-null datum of type `typid`.
///
/// # Safety
/// `d` must be a valid datum of type `typid` (or of a domain over it).
pub unsafe fn datum_to_value(d: pg_sys::Datum, typid: pg_sys::Oid) -> Value {
    value_of_kind(d, kind_of(typid))
}

/// The Value of a pass-by-value datum whose kind needs no lookup or memory (None: another
/// kind). Inlined where a value is encoded at once, so that nothing is built or dropped.
#[inline(always)]
fn scalar_value(d: pg_sys::Datum, kind: Kind) -> Option<Value> {
    Some(match kind {
        Kind::Bool => Value::Bool(d.value() != 0),
        Kind::Int2 => Value::Int(d.value() as i16 as i64),
        Kind::Int4 => Value::Int(d.value() as i32 as i64),
        Kind::Int8 => Value::Int(d.value() as i64),
        Kind::Oid => Value::Int(d.value() as u32 as i64),
        Kind::Char => Value::Int(d.value() as u8 as i64),
        Kind::Float4 => Value::Float(f32::from_bits(d.value() as u32) as f64),
        Kind::Float8 => Value::Float(f64::from_bits(d.value() as u64)),
        Kind::Date => Value::Date(d.value() as i32),
        Kind::Time => Value::Time(d.value() as i64),
        Kind::Timestamp => Value::Timestamp(d.value() as i64),
        Kind::TimestampTz => Value::TimestampTz(d.value() as i64),
        _ => return None,
    })
}

/// `datum_to_value` with the type's kind already looked up.
unsafe fn value_of_kind(d: pg_sys::Datum, kind: Kind) -> Value {
    match kind {
        Kind::Text => Value::Text(server_text(varlena_bytes(d))),
        Kind::Name => Value::Text(server_text(CStr::from_ptr(d.cast_mut_ptr::<std::ffi::c_char>()).to_bytes())),
        Kind::Bytea => Value::Bytes(varlena_bytes(d).to_vec()),
        Kind::Numeric => match driftdb_core::numeric::numeric_text(varlena_bytes(d)) {
            Some(text) => Value::Numeric(text),
            None => {
                // not a form the core knows (none exists today): the server's own text
                let out = pgrx::direct_function_call_as_datum(pg_sys::numeric_out, &[Some(d)])
                    .expect("numeric_out returned NULL");
                Value::Numeric(cstring(out.cast_mut_ptr()))
            }
        },
        Kind::TimeTz => {
            let t = &*(d.cast_mut_ptr::<pg_sys::TimeTzADT>());
            Value::TimeTz(t.time, t.zone)
        }
        Kind::Interval => {
            let i = &*(d.cast_mut_ptr::<pg_sys::Interval>());
            Value::Interval { months: i.month, days: i.day, micros: i.time }
        }
        Kind::Uuid => {
            // pg_uuid_t is 16 bytes, pass by reference
            let mut u = [0u8; 16];
            u.copy_from_slice(std::slice::from_raw_parts(d.cast_mut_ptr::<u8>(), 16));
            Value::Uuid(u)
        }
        Kind::Array { elem, elmlen, elmbyval, elmalign } => array_value(d, elem, elmlen, elmbyval, elmalign),
        Kind::Record => record_value(d),
        Kind::Output(out) => Value::Other(cstring(pg_sys::OidOutputFunctionCall(out, d))),
        // every other kind is a scalar
        _ => scalar_value(d, kind).expect("a scalar kind"),
    }
}

unsafe fn array_value(
    d: pg_sys::Datum,
    elem: pg_sys::Oid,
    elmlen: i16,
    elmbyval: bool,
    elmalign: std::ffi::c_char,
) -> Value {
    let arr = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg_sys::ArrayType;
    let ndim = (*arr).ndim as usize;
    // The dimension and lower-bound arrays follow the fixed ArrayType header (ARR_DIMS,
    // ARR_LBOUND in array.h).
    let dims_ptr = (arr as *const u8).add(std::mem::size_of::<pg_sys::ArrayType>()) as *const i32;
    let dims = std::slice::from_raw_parts(dims_ptr, ndim).to_vec();
    let lower = std::slice::from_raw_parts(dims_ptr.add(ndim), ndim).to_vec();
    let mut values: *mut pg_sys::Datum = std::ptr::null_mut();
    let mut nulls: *mut bool = std::ptr::null_mut();
    let mut n: i32 = 0;
    pg_sys::deconstruct_array(arr, elem, elmlen as i32, elmbyval, elmalign, &mut values, &mut nulls, &mut n);
    let mut elems = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        if *nulls.add(i) {
            elems.push(Value::Null);
        } else {
            elems.push(datum_to_value(*values.add(i), elem));
        }
    }
    Value::Array { lower, dims, elems }
}

unsafe fn record_value(d: pg_sys::Datum) -> Value {
    let hdr = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
    let typid = pgrx::heap_tuple_header_get_type_id(hdr);
    let typmod = pgrx::heap_tuple_header_get_typmod(hdr);
    let tupdesc = pg_sys::lookup_rowtype_tupdesc(typid, typmod);
    let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
    tuple.t_len = pgrx::heap_tuple_header_get_datum_length(hdr) as u32;
    tuple.t_data = hdr;
    let natts = (*tupdesc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![false; natts];
    pg_sys::heap_deform_tuple(&mut tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
    let attrs = (*tupdesc).attrs.as_slice(natts);
    let mut fields = Vec::with_capacity(natts);
    for (i, a) in attrs.iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        fields.push(if nulls[i] { Value::Null } else { datum_to_value(values[i], a.atttypid) });
    }
    pg_sys::DecrTupleDescRefCount(tupdesc);
    Value::Record(fields)
}

/// Encode the non-dropped columns of a deformed tuple as a Row keyed by attnum.
///
/// # Safety
/// `values`/`nulls` must hold `natts` entries deformed with `tupdesc`.
pub unsafe fn row_from_deformed(tupdesc: pg_sys::TupleDesc, values: &[pg_sys::Datum], nulls: &[bool]) -> Row {
    let natts = (*tupdesc).natts as usize;
    let attrs = (*tupdesc).attrs.as_slice(natts);
    let mut cols = Vec::with_capacity(natts);
    for (i, a) in attrs.iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        let v = if nulls[i] { Value::Null } else { datum_to_value(values[i], a.atttypid) };
        cols.push(((i + 1) as u16, v));
    }
    Row(cols)
}

/// Encode a heap tuple of relation descriptor `tupdesc`.
///
/// # Safety
/// `tuple` must be a valid heap tuple of `tupdesc`, pinned for the duration of the call.
pub unsafe fn row_from_heap_tuple(tupdesc: pg_sys::TupleDesc, tuple: pg_sys::HeapTuple) -> Row {
    let natts = (*tupdesc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![false; natts];
    pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
    row_from_deformed(tupdesc, &values, &nulls)
}

/// Append the MessagePack of one non-null datum of a type of this kind: the bytes its
/// `datum_to_value`'s `write_msgpack` makes, without a Value for text and bytea (which would
/// copy them) or numeric (printed into `text`, a reused buffer); every other kind goes through
/// its Value. `utf8`: the database encoding is UTF-8.
///
/// # Safety
/// As `datum_to_value`, with `kind` the kind of its type.
unsafe fn write_datum(d: pg_sys::Datum, kind: Kind, utf8: bool, buf: &mut Vec<u8>, text: &mut Vec<u8>) {
    use rmp::encode as e;
    // writes into a Vec cannot fail
    match kind {
        Kind::Text if utf8 => {
            let bytes = varlena_bytes(d);
            e::write_str_len(buf, bytes.len() as u32).unwrap();
            buf.extend_from_slice(bytes);
        }
        Kind::Bytea => e::write_bin(buf, varlena_bytes(d)).unwrap(),
        Kind::Numeric => {
            text.clear();
            if driftdb_core::numeric::write_numeric_text(varlena_bytes(d), text) {
                driftdb_core::value::write_numeric_msgpack(buf, text);
            } else {
                value_of_kind(d, kind).write_msgpack(buf); // numeric_out's text
            }
        }
        _ => match scalar_value(d, kind) {
            Some(v) => {
                v.write_scalar_msgpack(buf);
                // a scalar owns no memory: skip the drop glue of the whole enum per value
                std::mem::forget(v);
            }
            None => value_of_kind(d, kind).write_msgpack(buf),
        },
    }
}

/// What `write_tuple` looks up about a descriptor: each column's kind (a dropped column's is
/// never used) and whether text is UTF-8 as stored. The commit keeps one per table shape
/// (`commit::Shape`), so that a small transaction does not look its columns up again.
#[derive(Clone, Debug, Default)]
pub struct ColumnKinds {
    kinds: Vec<Kind>,
    utf8: bool,
}

impl ColumnKinds {
    /// # Safety
    /// `tupdesc` must be a valid descriptor.
    pub unsafe fn of(tupdesc: pg_sys::TupleDesc) -> ColumnKinds {
        let attrs = (*tupdesc).attrs.as_slice((*tupdesc).natts as usize);
        ColumnKinds {
            // a dropped column's type is gone (atttypid 0); it is never written
            kinds: attrs.iter().map(|a| if a.attisdropped { Kind::Bool } else { kind_of(a.atttypid) }).collect(),
            utf8: pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32,
        }
    }

    /// Can a key over these columns be copied from `write_tuple`'s bytes as they are? Yes
    /// unless a float could be in it: keys encode every NaN as one bit pattern (`encode_key`),
    /// row images keep the pattern the row had.
    pub fn key_copyable(&self, attnums: &[u16]) -> bool {
        attnums.iter().all(|&a| {
            self.kinds
                .get((a as usize).wrapping_sub(1))
                .is_some_and(|kind| !kind.may_hold_float() && !matches!(kind, Kind::Output(_)))
        })
    }

    /// Are two rows equal exactly when `write_tuple` writes the same bytes for them? Yes unless
    /// a column can hold a float: `Value` equality takes every NaN as equal. (A dropped
    /// column counts as a boolean: it is never written.)
    pub fn rows_bytewise(&self) -> bool {
        self.kinds.iter().all(|k| !k.may_hold_float())
    }
}

/// Reusable buffers for `write_tuple`, and what it looked up about the descriptor.
#[derive(Default)]
pub struct TupleScratch {
    /// The descriptor `columns` were looked up for.
    desc: Option<pg_sys::TupleDesc>,
    columns: ColumnKinds,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    /// A numeric's text, printed before it is written.
    text: Vec<u8>,
    /// (attnum, start, end) of each column's value in the bytes `write_tuple` wrote, by attnum.
    pub cols: Vec<(u16, usize, usize)>,
}

/// Append a heap tuple's Row as MessagePack — the bytes of `row_from_heap_tuple(..)`'s
/// `write_msgpack` — and note where each column's value went (`scratch.cols`).
///
/// # Safety
/// As `row_from_heap_tuple`.
pub unsafe fn write_tuple(tupdesc: pg_sys::TupleDesc, tuple: pg_sys::HeapTuple, buf: &mut Vec<u8>, scratch: &mut TupleScratch) {
    let natts = (*tupdesc).natts as usize;
    let attrs = (*tupdesc).attrs.as_slice(natts);
    if scratch.desc != Some(tupdesc) {
        scratch.columns = ColumnKinds::of(tupdesc);
        scratch.desc = Some(tupdesc);
    }
    scratch.values.resize(natts, pg_sys::Datum::from(0usize));
    scratch.nulls.resize(natts, false);
    pg_sys::heap_deform_tuple(tuple, tupdesc, scratch.values.as_mut_ptr(), scratch.nulls.as_mut_ptr());
    let ncols = attrs.iter().filter(|a| !a.attisdropped).count();
    rmp::encode::write_map_len(buf, ncols as u32).unwrap();
    scratch.cols.clear();
    for (i, a) in attrs.iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        // the attnum: a positive fixint (one byte, as write_uint writes it) below 128
        if i + 1 < 128 {
            buf.push((i + 1) as u8);
        } else {
            rmp::encode::write_uint(buf, (i + 1) as u64).unwrap();
        }
        let start = buf.len();
        if scratch.nulls[i] {
            rmp::encode::write_nil(buf).unwrap();
        } else {
            write_datum(scratch.values[i], scratch.columns.kinds[i], scratch.columns.utf8, buf, &mut scratch.text);
        }
        scratch.cols.push(((i + 1) as u16, start, buf.len()));
    }
}

impl TupleScratch {
    /// Take `columns`, looked up for `tupdesc`, instead of looking them up on the first row.
    ///
    /// # Safety
    /// `columns` must be `ColumnKinds::of(tupdesc)` for the descriptor as it is now.
    pub unsafe fn prepare(&mut self, tupdesc: pg_sys::TupleDesc, columns: &ColumnKinds) {
        if columns.kinds.len() == (*tupdesc).natts as usize {
            self.columns.clone_from(columns);
            self.desc = Some(tupdesc);
        } else {
            self.desc = None; // not this descriptor's (cannot happen): looked up on the first row
        }
    }
}

/// Encode the row in a slot (all attributes are fetched).
///
/// # Safety
/// `slot` must be a valid, non-empty slot whose descriptor is `tupdesc`.
pub unsafe fn row_from_slot(tupdesc: pg_sys::TupleDesc, slot: *mut pg_sys::TupleTableSlot) -> Row {
    let natts = (*tupdesc).natts as usize;
    pg_sys::slot_getsomeattrs_int(slot, natts as i32);
    let values = std::slice::from_raw_parts((*slot).tts_values, natts);
    let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
    row_from_deformed(tupdesc, values, nulls)
}

/// The value a column added after a row was written reads as for that row: its "missing"
/// value (ALTER TABLE ADD COLUMN ... DEFAULT with a non-volatile default), else NULL.
///
/// # Safety
/// `tupdesc` must be a valid relation descriptor and `attnum` in range.
pub unsafe fn missing_value(tupdesc: pg_sys::TupleDesc, attnum: u16) -> Value {
    let mut isnull = false;
    let d = pg_sys::getmissingattr(tupdesc, attnum as i32, &mut isnull);
    if isnull {
        return Value::Null;
    }
    let a = (*tupdesc).attrs.as_slice((*tupdesc).natts as usize)[attnum as usize - 1];
    datum_to_value(d, a.atttypid)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use driftdb_core::Value;
    use pgrx::pg_sys;
    use pgrx::prelude::*;

    /// Encode the single column of `SELECT <expr>` through the codec.
    fn encode(expr: &str) -> Value {
        Spi::connect(|client| {
            let table = client.select(&format!("SELECT {expr}"), None, &[]).unwrap();
            let row = table.first();
            let typid = row.column_type_oid(1).unwrap().value();
            let d: Option<pg_sys::Datum> = row.get_datum_by_ordinal(1).unwrap();
            // SAFETY: the datum comes from SPI with its own type OID.
            unsafe { super::datum_to_value(d.expect("not null"), typid) }
        })
    }

    #[pg_test]
    fn type_kinds_are_forgotten_when_pg_type_changes() {
        let len = || super::TYPE_CACHE.with(|c| c.borrow().len());
        Spi::run("CREATE DOMAIN kind_probe AS int4").unwrap();
        let probe = Spi::get_one::<pg_sys::Oid>("SELECT 'kind_probe'::regtype::oid").unwrap().unwrap();
        assert!(matches!(super::kind_of(probe), super::Kind::Int4));
        assert!(len() > 0);
        // any pg_type change (here a new type) empties the cache at the next command
        Spi::run("CREATE TYPE kind_probe_2 AS (a int)").unwrap();
        assert_eq!(len(), 0);
        // a dropped type's OID is not trusted any more: a new lookup computes it afresh
        Spi::run("DROP DOMAIN kind_probe").unwrap();
        assert_eq!(len(), 0);
        assert!(matches!(super::kind_of(pg_sys::INT4OID), super::Kind::Int4));
        assert_eq!(len(), 1);
    }

    #[pg_test]
    fn scalars_encode_by_meaning() {
        assert_eq!(encode("true"), Value::Bool(true));
        assert_eq!(encode("42::int2"), Value::Int(42));
        assert_eq!(encode("-7::int4"), Value::Int(-7));
        assert_eq!(encode("9007199254740993::int8"), Value::Int(9007199254740993));
        assert_eq!(encode("1.5::float4"), Value::Float(1.5));
        assert_eq!(encode("'NaN'::float8"), Value::Float(f64::NAN));
        assert_eq!(encode("'héllo'::text"), Value::Text("héllo".into()));
        assert_eq!(encode("'ab '::char(4)"), Value::Text("ab  ".into()));
        assert_eq!(encode("'\\x00ff'::bytea"), Value::Bytes(vec![0, 255]));
        assert_eq!(encode("12.3400::numeric"), Value::Numeric("12.3400".into()));
        assert_eq!(encode("'2000-01-02'::date"), Value::Date(1));
        assert_eq!(encode("'2000-01-01 00:00:01'::timestamp"), Value::Timestamp(1_000_000));
        assert_eq!(encode("'1 mon 2 days 3 s'::interval"), Value::Interval { months: 1, days: 2, micros: 3_000_000 });
        let mut u = [0u8; 16];
        u[15] = 1;
        assert_eq!(encode("'00000000-0000-0000-0000-000000000001'::uuid"), Value::Uuid(u));
    }

    /// The codec prints numerics from their stored digits (driftdb_core::numeric): the text
    /// must be numeric_out's, for short and long stored forms, every scale and the specials.
    #[pg_test]
    fn numeric_text_is_numeric_out() {
        let q = "WITH v(x) AS (
                   SELECT unnest('{0,-0,1,-1,0.0001,-0.0001,10000,9999.9999,100000000,0.1,
                                   12.3400,-12.34,1e100,-1e-100,1e-1000,123456789012345678901234567890.123456789,
                                   NaN,Infinity,-Infinity}'::numeric[])
                   UNION ALL SELECT 12.5::numeric(10,4)
                   UNION ALL SELECT (2::numeric ^ 200)
                   UNION ALL SELECT round(((g * 7919) % 100003 - 50000) * 10::numeric ^ (g % 61 - 30), g % 70)
                     FROM generate_series(1, 5000) g
                   UNION ALL SELECT trunc(1 / g::numeric, g % 100) FROM generate_series(1, 500) g)
                 SELECT x, x::text FROM v";
        let n = Spi::connect(|client| {
            let mut n = 0;
            let mut table = client.select(q, None, &[]).unwrap();
            while table.next().is_some() {
                let d: pg_sys::Datum = table.get_datum_by_ordinal(1).unwrap().expect("not null");
                let text: String = table.get(2).unwrap().unwrap();
                // SAFETY: a numeric datum from SPI, alive for this row
                let bytes = unsafe { super::varlena_bytes(d) };
                assert_eq!(driftdb_core::numeric::numeric_text(bytes).as_deref(), Some(text.as_str()), "numeric {text}");
                n += 1;
            }
            n
        });
        assert_eq!(n, 5521);
    }

    #[pg_test]
    fn timestamptz_does_not_depend_on_timezone() {
        Spi::run("SET TimeZone = 'America/New_York'").unwrap();
        let a = encode("'2026-01-15 10:00:00+00'::timestamptz");
        Spi::run("SET TimeZone = 'Asia/Tokyo'").unwrap();
        let b = encode("'2026-01-15 10:00:00+00'::timestamptz");
        assert_eq!(a, b);
    }

    #[pg_test]
    fn arrays_records_enums_and_domains() {
        assert_eq!(
            encode("'[0:1]={1,NULL}'::int4[]"),
            Value::Array { lower: vec![0], dims: vec![2], elems: vec![Value::Int(1), Value::Null] }
        );
        Spi::run("CREATE TYPE mood AS ENUM ('sad', 'happy')").unwrap();
        assert_eq!(encode("'happy'::mood"), Value::Other("happy".into()));
        Spi::run("CREATE DOMAIN posint AS int CHECK (VALUE > 0)").unwrap();
        assert_eq!(encode("5::posint"), Value::Int(5));
        assert_eq!(encode("ROW(1, 'x'::text)"), Value::Record(vec![Value::Int(1), Value::Text("x".into())]));
        assert_eq!(encode("'{\"a\": 1}'::jsonb"), Value::Other("{\"a\": 1}".into()));
    }
}
