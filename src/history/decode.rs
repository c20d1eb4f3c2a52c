//! Portable `Value` → datum of a column's type: the inverse of [`super::codec`], used to turn
//! historical row images back into tuples of the table's *current* shape.
//!
//! Every variant the codec writes decodes to the same datum it was made from (integers,
//! floats, text, bytea, date/time types and uuid bit-exactly; numeric through `numeric_in` with
//! the column's typmod; arrays and composites recursively; `Other` through the type's input
//! function). Domain constraints are not re-checked: the value passed them when it was
//! written. A value whose variant does not fit the column's type (impossible while ALTER COLUMN
//! TYPE is refused, but history is data from disk) is an error naming the column, never a
//! reinterpretation.
//!
//! Datums are allocated in the current memory context.
use std::ffi::CString;

use driftdb_core::{Row, Value};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::DriftError;

fn mismatch(typid: pg_sys::Oid, v: &Value) -> ! {
    // SAFETY: format_type_be only reads the syscache.
    let tname = unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typid)).to_string_lossy().into_owned() };
    DriftError::new(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!("driftdb history holds a value that does not fit type {tname}"),
    )
    .detail(format!("stored value: {v:?}"))
    .hint("Run SELECT * FROM driftdb.verify(...) on the table to check its history.")
    .raise()
}

/// Text → a `text`-like varlena in the server encoding.
unsafe fn text_datum(s: &str) -> pg_sys::Datum {
    let p = if pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 {
        pg_sys::cstring_to_text_with_len(s.as_ptr() as *const std::ffi::c_char, s.len() as i32)
    } else {
        let conv = pg_sys::pg_any_to_server(s.as_ptr() as *const std::ffi::c_char, s.len() as i32, pg_sys::pg_enc::PG_UTF8 as i32);
        pg_sys::cstring_to_text(conv)
    };
    pg_sys::Datum::from(p)
}

unsafe fn cstring_in_server(s: &str) -> CString {
    let c = CString::new(s.replace('\0', "")).unwrap();
    if pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 {
        c
    } else {
        let conv = pg_sys::pg_any_to_server(c.as_ptr(), s.len() as i32, pg_sys::pg_enc::PG_UTF8 as i32);
        std::ffi::CStr::from_ptr(conv).to_owned()
    }
}

unsafe fn palloc_copy<T>(v: T) -> pg_sys::Datum {
    let p = pg_sys::palloc(std::mem::size_of::<T>()) as *mut T;
    p.write(v);
    pg_sys::Datum::from(p)
}

/// Input function call for `typid` (as the codec's `Output` variant was written).
unsafe fn via_input(s: &str, typid: pg_sys::Oid, typmod: i32) -> pg_sys::Datum {
    let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
    pg_sys::getTypeInputInfo(typid, &mut input, &mut ioparam);
    let c = cstring_in_server(s);
    pg_sys::OidInputFunctionCall(input, c.as_ptr() as *mut _, ioparam, typmod)
}

/// Decode one value for a column of type `typid` / `typmod`; None for SQL NULL.
///
/// # Safety
/// Must run inside a transaction (syscache lookups, palloc).
pub unsafe fn value_to_datum(v: &Value, typid: pg_sys::Oid, typmod: i32) -> Option<pg_sys::Datum> {
    if matches!(v, Value::Null) {
        return None;
    }
    Some(with_base(v, typid, pg_sys::getBaseType(typid), typmod))
}

/// `value_to_datum` of a non-NULL value, the base type (of a domain) already known.
unsafe fn with_base(v: &Value, typid: pg_sys::Oid, base: pg_sys::Oid, typmod: i32) -> pg_sys::Datum {
    match (base, v) {
        (pg_sys::BOOLOID, Value::Bool(b)) => pg_sys::Datum::from(*b),
        (pg_sys::INT2OID, Value::Int(i)) => pg_sys::Datum::from(*i as i16),
        (pg_sys::INT4OID, Value::Int(i)) => pg_sys::Datum::from(*i as i32),
        (pg_sys::INT8OID, Value::Int(i)) => pg_sys::Datum::from(*i),
        (pg_sys::OIDOID | pg_sys::XIDOID | pg_sys::CIDOID | pg_sys::REGCLASSOID, Value::Int(i)) => pg_sys::Datum::from(*i as u32),
        (pg_sys::CHAROID, Value::Int(i)) => pg_sys::Datum::from(*i as u8),
        (pg_sys::FLOAT4OID, Value::Float(f)) => pg_sys::Datum::from((*f as f32).to_bits()),
        (pg_sys::FLOAT8OID, Value::Float(f)) => pg_sys::Datum::from(f.to_bits()),
        (pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID, Value::Text(s)) => text_datum(s),
        (pg_sys::NAMEOID, Value::Text(s)) => {
            let c = cstring_in_server(s);
            pgrx::direct_function_call_as_datum(pg_sys::namein, &[Some(pg_sys::Datum::from(c.as_ptr()))]).unwrap()
        }
        (pg_sys::BYTEAOID, Value::Bytes(b)) => {
            let total = b.len() + pg_sys::VARHDRSZ;
            let p = pg_sys::palloc(total) as *mut u8;
            pgrx::set_varsize_4b(p as *mut pg_sys::varlena, total as i32);
            std::ptr::copy_nonoverlapping(b.as_ptr(), p.add(pg_sys::VARHDRSZ), b.len());
            pg_sys::Datum::from(p)
        }
        (pg_sys::NUMERICOID, Value::Numeric(s)) => via_input(s, pg_sys::NUMERICOID, typmod),
        (pg_sys::DATEOID, Value::Date(d)) => pg_sys::Datum::from(*d),
        (pg_sys::TIMEOID, Value::Time(t)) => pg_sys::Datum::from(*t),
        (pg_sys::TIMETZOID, Value::TimeTz(t, z)) => palloc_copy(pg_sys::TimeTzADT { time: *t, zone: *z }),
        (pg_sys::TIMESTAMPOID, Value::Timestamp(t)) => pg_sys::Datum::from(*t),
        (pg_sys::TIMESTAMPTZOID, Value::TimestampTz(t)) => pg_sys::Datum::from(*t),
        (pg_sys::INTERVALOID, Value::Interval { months, days, micros }) => {
            palloc_copy(pg_sys::Interval { time: *micros, day: *days, month: *months })
        }
        (pg_sys::UUIDOID, Value::Uuid(u)) => palloc_copy(*u),
        (_, Value::Array { lower, dims, elems }) => array_datum(base, typmod, lower, dims, elems),
        (_, Value::Record(fields)) => record_datum(base, fields),
        (_, Value::Other(s)) => via_input(s, base, typmod),
        _ => mismatch(typid, v),
    }
}

unsafe fn array_datum(arrtype: pg_sys::Oid, _typmod: i32, lower: &[i32], dims: &[i32], elems: &[Value]) -> pg_sys::Datum {
    let elem = pg_sys::get_element_type(arrtype);
    if elem == pg_sys::InvalidOid {
        mismatch(arrtype, &Value::Array { lower: lower.to_vec(), dims: dims.to_vec(), elems: Vec::new() });
    }
    let (mut elmlen, mut elmbyval, mut elmalign) = (0i16, false, 0 as std::ffi::c_char);
    pg_sys::get_typlenbyvalalign(elem, &mut elmlen, &mut elmbyval, &mut elmalign);
    if dims.is_empty() {
        return pg_sys::Datum::from(pg_sys::construct_empty_array(elem));
    }
    let mut values = Vec::with_capacity(elems.len());
    let mut nulls = Vec::with_capacity(elems.len());
    for e in elems {
        match value_to_datum(e, elem, -1) {
            Some(d) => {
                values.push(d);
                nulls.push(false);
            }
            None => {
                values.push(pg_sys::Datum::from(0usize));
                nulls.push(true);
            }
        }
    }
    let mut dims = dims.to_vec();
    let mut lbs = lower.to_vec();
    let arr = pg_sys::construct_md_array(
        values.as_mut_ptr(),
        nulls.as_mut_ptr(),
        dims.len() as i32,
        dims.as_mut_ptr(),
        lbs.as_mut_ptr(),
        elem,
        elmlen as i32,
        elmbyval,
        elmalign,
    );
    pg_sys::Datum::from(arr)
}

unsafe fn record_datum(typid: pg_sys::Oid, fields: &[Value]) -> pg_sys::Datum {
    if typid == pg_sys::RECORDOID {
        // an anonymous record has no type to rebuild it with; its text form is not kept either
        mismatch(typid, &Value::Record(fields.to_vec()));
    }
    let tupdesc = pg_sys::lookup_rowtype_tupdesc(typid, -1);
    let natts = (*tupdesc).natts as usize;
    let attrs = (*tupdesc).attrs.as_slice(natts);
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![true; natts];
    // fields are the non-dropped attributes in order; a composite type altered since the value
    // was written reads missing trailing fields as NULL
    let mut it = fields.iter();
    for (i, a) in attrs.iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        if let Some(f) = it.next() {
            if let Some(d) = value_to_datum(f, a.atttypid, a.atttypmod) {
                values[i] = d;
                nulls[i] = false;
            }
        }
    }
    let tup = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::DecrTupleDescRefCount(tupdesc);
    pg_sys::Datum::from(pg_sys::HeapTupleHeaderGetDatum((*tup).t_data))
}

/// How one column decodes, worked out once per scan (type lookups are syscache probes, and
/// `OidInputFunctionCall` would redo the function lookup for every value).
struct ColPlan {
    attnum: u16,
    typid: pg_sys::Oid,
    base: pg_sys::Oid,
    typmod: i32,
    dropped: bool,
    /// input function of the base type (numeric and text-form types)
    input: Option<(Box<pg_sys::FmgrInfo>, pg_sys::Oid)>,
    /// scratch for NUL-terminated text forms
    buf: Vec<u8>,
}

/// Per-column decoding plan for one relation descriptor: type, typmod, and the value a column
/// absent from an old image reads as.
pub struct RowDecoder {
    cols: Vec<ColPlan>,
    /// Missing value per attnum (index attnum-1), for rows written before the column existed.
    missing: Vec<Value>,
}

impl RowDecoder {
    /// # Safety
    /// `tupdesc` must be a valid descriptor. `missing` gives, per attnum, the value older rows
    /// read for a column added later (from the schema events; NULL when absent).
    pub unsafe fn new(tupdesc: pg_sys::TupleDesc, missing: &dyn Fn(u16) -> Value) -> RowDecoder {
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_slice(natts);
        let cols: Vec<ColPlan> = attrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let base = if a.attisdropped { pg_sys::InvalidOid } else { pg_sys::getBaseType(a.atttypid) };
                let input = if a.attisdropped || base == pg_sys::InvalidOid {
                    None
                } else {
                    let (mut f, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
                    pg_sys::getTypeInputInfo(base, &mut f, &mut ioparam);
                    let mut finfo: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
                    // the decoder may be cached for the session: keep the function's data there too
                    pg_sys::fmgr_info_cxt(f, finfo.as_mut(), pg_sys::TopMemoryContext);
                    Some((finfo, ioparam))
                };
                ColPlan { attnum: (i + 1) as u16, typid: a.atttypid, base, typmod: a.atttypmod, dropped: a.attisdropped, input, buf: Vec::new() }
            })
            .collect();
        let missing = cols.iter().map(|c| if c.dropped { Value::Null } else { missing(c.attnum) }).collect();
        RowDecoder { cols, missing }
    }

    /// One value of column `c`: text forms (numeric, enums, json, ...) through the input
    /// function looked up once, everything else as `value_to_datum` does.
    unsafe fn decode_col(c: &mut ColPlan, v: &Value) -> Option<pg_sys::Datum> {
        match (c.base, v) {
            (_, Value::Null) => None,
            (pg_sys::NUMERICOID, Value::Numeric(s)) | (_, Value::Other(s)) if c.input.is_some() => {
                let (finfo, ioparam) = c.input.as_mut().unwrap();
                if pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 && !s.contains('\0') {
                    // the text form, NUL-terminated in a buffer reused for every value
                    c.buf.clear();
                    c.buf.extend_from_slice(s.as_bytes());
                    c.buf.push(0);
                    Some(pg_sys::InputFunctionCall(finfo.as_mut(), c.buf.as_mut_ptr() as *mut _, *ioparam, c.typmod))
                } else {
                    let cs = cstring_in_server(s);
                    Some(pg_sys::InputFunctionCall(finfo.as_mut(), cs.as_ptr() as *mut _, *ioparam, c.typmod))
                }
            }
            _ => Some(with_base(v, c.typid, c.base, c.typmod)),
        }
    }

    pub fn natts(&self) -> usize {
        self.cols.len()
    }

    /// Fill `values`/`nulls` (natts entries each) from a row image.
    ///
    /// # Safety
    /// Inside a transaction; datums are allocated in the current memory context.
    pub unsafe fn decode_into(&mut self, row: &Row, values: &mut [pg_sys::Datum], nulls: &mut [bool]) {
        let mut src = row.0.iter().peekable();
        for (i, c) in self.cols.iter_mut().enumerate() {
            let attnum = c.attnum;
            while src.peek().is_some_and(|(a, _)| *a < attnum) {
                src.next();
            }
            let v = match src.peek() {
                Some((a, v)) if *a == attnum => v,
                _ => &self.missing[i],
            };
            let d = if c.dropped { None } else { Self::decode_col(c, v) };
            match d {
                Some(d) => {
                    values[i] = d;
                    nulls[i] = false;
                }
                None => {
                    values[i] = pg_sys::Datum::from(0usize);
                    nulls[i] = true;
                }
            }
        }
    }

    /// A heap tuple of the descriptor from a row image.
    ///
    /// # Safety
    /// `tupdesc` is the descriptor this decoder was made for.
    pub unsafe fn form_tuple(&mut self, tupdesc: pg_sys::TupleDesc, row: &Row) -> pg_sys::HeapTuple {
        let n = self.cols.len();
        let mut values = vec![pg_sys::Datum::from(0usize); n];
        let mut nulls = vec![true; n];
        self.decode_into(row, &mut values, &mut nulls);
        pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr())
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::pg_sys;
    use pgrx::prelude::*;

    /// Encode `SELECT <expr>` with the codec, decode it back, and compare what the type's
    /// output function prints for the original and the decoded datum.
    fn round_trip(expr: &str) {
        let (before, after): (String, String) = Spi::connect(|client| {
            let table = client.select(&format!("SELECT ({expr})"), None, &[]).unwrap();
            let row = table.first();
            let typid = row.column_type_oid(1).unwrap().value();
            let d: Option<pg_sys::Datum> = row.get_datum_by_ordinal(1).unwrap();
            // SAFETY: datum from SPI with its own type OID; printed by the type's output function.
            unsafe {
                let d = d.expect("not null");
                let (mut out, mut varlena) = (pg_sys::InvalidOid, false);
                pg_sys::getTypeOutputInfo(typid, &mut out, &mut varlena);
                let print = |d| std::ffi::CStr::from_ptr(pg_sys::OidOutputFunctionCall(out, d)).to_string_lossy().into_owned();
                let v = crate::history::codec::datum_to_value(d, typid);
                let back = super::value_to_datum(&v, typid, -1).expect("not null");
                (print(d), print(back))
            }
        });
        assert_eq!(before, after, "round trip of {expr}");
    }

    #[pg_test]
    fn values_round_trip_through_history() {
        for e in [
            "true",
            "42::int2",
            "-7::int4",
            "9007199254740993::int8",
            "1.5::float4",
            "'-0'::float8",
            "'NaN'::float8",
            "'héllo'::text",
            "'ab'::char(4)",
            "'x'::varchar(3)",
            "'pg_class'::name",
            "'\\x00ff'::bytea",
            "12.3400::numeric",
            "'2000-01-02'::date",
            "'infinity'::date",
            "'12:34:56.789'::time",
            "'12:34:56+05:30'::timetz",
            "'2000-01-01 00:00:01'::timestamp",
            "'2026-01-15 10:00:00+00'::timestamptz",
            "'-infinity'::timestamptz",
            "'1 mon 2 days 3 s'::interval",
            "'00000000-0000-0000-0000-000000000001'::uuid",
            "'[0:1]={1,NULL}'::int4[]",
            "'{{a,b},{c,NULL}}'::text[]",
            "'{}'::int[]",
            "'{\"a\": 1}'::jsonb",
            "'10.0.0.1/8'::inet",
            "'[1,5)'::int4range",
            "'a'::\"char\"",
        ] {
            round_trip(e);
        }
    }

    #[pg_test]
    fn composites_and_enums_round_trip() {
        Spi::run("CREATE TYPE mood2 AS ENUM ('sad', 'happy')").unwrap();
        Spi::run("CREATE TYPE pair AS (a int, b text)").unwrap();
        round_trip("'happy'::mood2");
        round_trip("ROW(1, 'x')::pair");
        round_trip("ARRAY[ROW(1, 'x')::pair, NULL]");
    }
}
