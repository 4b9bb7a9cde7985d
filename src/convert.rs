//! Conversion: pages of Bitrix JSON records → Arrow `RecordBatch`es typed by [`crate::schema`].
//!
//! A value that does not fit its column fails the conversion with a [`BadValue`] naming the field, the lead ID
//! and the value; nothing is silently turned into NULL.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer};
use arrow_schema::{DataType, Field, SchemaRef};
use chrono::{DateTime, NaiveDate};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{BadValue, Error, Result};
use crate::schema::{file_fields, money_fields, multifield_fields, Column, Kind, DECIMAL_PRECISION, DECIMAL_SCALE};

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Why one value did not convert (the caller adds field and record).
type Why = String;

fn text_of(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        _ => None,
    }
}

fn is_empty(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null)) || matches!(v, Some(Value::String(s)) if s.is_empty())
}

pub fn parse_i64(v: Option<&Value>) -> Result<Option<i64>, Why> {
    if is_empty(v) {
        return Ok(None);
    }
    let v = v.expect("not empty");
    if let Value::Number(n) = v {
        return n.as_i64().map(Some).ok_or_else(|| "not a whole number".into());
    }
    let t = text_of(v).ok_or("not a number")?;
    t.trim().parse::<i64>().map(Some).map_err(|_| "not a whole number".into())
}

pub fn parse_f64(v: Option<&Value>) -> Result<Option<f64>, Why> {
    if is_empty(v) {
        return Ok(None);
    }
    let v = v.expect("not empty");
    if let Value::Number(n) = v {
        return n.as_f64().map(Some).ok_or_else(|| "not a number".into());
    }
    let t = text_of(v).ok_or("not a number")?;
    t.trim().parse::<f64>().ok().filter(|x| x.is_finite()).map(Some).ok_or_else(|| "not a number".into())
}

/// Exact decimal text → hundredths. Refuses more than 2 significant fraction digits and more than 18 digits.
pub fn parse_decimal_text(s: &str) -> Result<i128, Why> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a decimal number".into());
    }
    let (keep, rest) = frac.split_at(frac.len().min(DECIMAL_SCALE as usize));
    if rest.bytes().any(|b| b != b'0') {
        return Err(format!("more than {DECIMAL_SCALE} fraction digits would be rounded"));
    }
    let int = int.trim_start_matches('0');
    if int.len() > (DECIMAL_PRECISION as usize - DECIMAL_SCALE as usize) {
        return Err(format!("more than {} integer digits", DECIMAL_PRECISION as i8 - DECIMAL_SCALE));
    }
    let mut units: i128 = if int.is_empty() { 0 } else { int.parse::<i128>().map_err(|_| "not a decimal number")? };
    let mut f = keep.to_string();
    while f.len() < DECIMAL_SCALE as usize {
        f.push('0');
    }
    units = units * 100 + f.parse::<i128>().unwrap_or(0);
    Ok(if neg { -units } else { units })
}

pub fn parse_decimal(v: Option<&Value>) -> Result<Option<i128>, Why> {
    if is_empty(v) {
        return Ok(None);
    }
    let t = text_of(v.expect("not empty")).ok_or("not a number")?;
    parse_decimal_text(&t).map(Some)
}

pub fn parse_bool(v: Option<&Value>) -> Result<Option<bool>, Why> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(1) => Ok(Some(true)),
            Some(0) => Ok(Some(false)),
            _ => Err("not a flag".into()),
        },
        Some(Value::String(s)) => match s.as_str() {
            "" => Ok(None),
            "Y" | "y" | "1" | "true" => Ok(Some(true)),
            "N" | "n" | "0" | "false" => Ok(Some(false)),
            _ => Err("not a flag".into()),
        },
        Some(_) => Err("not a flag".into()),
    }
}

/// ISO 8601 with offset → microseconds since the epoch, UTC.
pub fn parse_timestamp(v: Option<&Value>) -> Result<Option<i64>, Why> {
    if is_empty(v) {
        return Ok(None);
    }
    let Some(Value::String(s)) = v else { return Err("not a date-time string".into()) };
    DateTime::parse_from_rfc3339(s.trim())
        .map(|d| Some(d.timestamp_micros()))
        .map_err(|_| "not an ISO 8601 date-time with offset".into())
}

/// A date field: the portal writes midnight UTC in its own offset (`2000-01-01T02:00:00+02:00`); the UTC date
/// is the value. The instant is rounded to the nearest UTC midnight, because the portal shifts by *today's*
/// offset, which can differ from the date's own by a daylight-saving hour (`…T23:00:00Z` means the next day).
/// A plain `YYYY-MM-DD` is taken as is.
pub fn parse_date(v: Option<&Value>) -> Result<Option<i32>, Why> {
    if is_empty(v) {
        return Ok(None);
    }
    let Some(Value::String(s)) = v else { return Err("not a date string".into()) };
    let s = s.trim();
    let date = match DateTime::parse_from_rfc3339(s) {
        Ok(d) => {
            let secs = d.timestamp() + 12 * 3600;
            return Ok(Some(secs.div_euclid(86_400) as i32));
        }
        Err(_) => NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| "not an ISO 8601 date")?,
    };
    Ok(Some(chrono::Datelike::num_days_from_ce(&date) - UNIX_EPOCH_DAYS_FROM_CE))
}

pub fn parse_text(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// One column under construction.
enum Builder {
    Int64(Int64Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    Utf8(StringBuilder),
    Multifield { offsets: Vec<i32>, id: Int64Builder, value_type: StringBuilder, value: StringBuilder, type_id: StringBuilder },
    Money { amount: Decimal128Builder, currency: StringBuilder, valid: NullBufferBuilder },
    File { id: Int64Builder, show_url: StringBuilder, valid: NullBufferBuilder },
    List { item: DataType, offsets: Vec<i32>, child: Box<Builder>, valid: NullBufferBuilder },
}

fn decimal_builder(cap: usize) -> Decimal128Builder {
    Decimal128Builder::with_capacity(cap).with_data_type(DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE))
}

impl Builder {
    fn new(kind: &Kind, cap: usize) -> Builder {
        match kind {
            Kind::Int64 => Builder::Int64(Int64Builder::with_capacity(cap)),
            Kind::Float64 => Builder::Float64(Float64Builder::with_capacity(cap)),
            Kind::Decimal => Builder::Decimal(decimal_builder(cap)),
            Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(cap)),
            Kind::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::with_capacity(cap).with_timezone("UTC")),
            Kind::Date => Builder::Date(Date32Builder::with_capacity(cap)),
            Kind::Utf8 => Builder::Utf8(StringBuilder::with_capacity(cap, cap * 8)),
            Kind::Multifield => Builder::Multifield {
                offsets: vec![0],
                id: Int64Builder::new(),
                value_type: StringBuilder::new(),
                value: StringBuilder::new(),
                type_id: StringBuilder::new(),
            },
            Kind::Money => Builder::Money { amount: decimal_builder(cap), currency: StringBuilder::new(), valid: NullBufferBuilder::new(cap) },
            Kind::File => Builder::File { id: Int64Builder::new(), show_url: StringBuilder::new(), valid: NullBufferBuilder::new(cap) },
            Kind::List(inner) => {
                Builder::List { item: inner.data_type(), offsets: vec![0], child: Box::new(Builder::new(inner, cap)), valid: NullBufferBuilder::new(cap) }
            }
        }
    }

    fn append(&mut self, v: Option<&Value>) -> Result<(), Why> {
        match self {
            Builder::Int64(b) => b.append_option(parse_i64(v)?),
            Builder::Float64(b) => b.append_option(parse_f64(v)?),
            Builder::Decimal(b) => b.append_option(parse_decimal(v)?),
            Builder::Bool(b) => b.append_option(parse_bool(v)?),
            Builder::Ts(b) => b.append_option(parse_timestamp(v)?),
            Builder::Date(b) => b.append_option(parse_date(v)?),
            Builder::Utf8(b) => b.append_option(parse_text(v)),
            Builder::Multifield { offsets, id, value_type, value, type_id } => {
                let items: &[Value] = match v {
                    None | Some(Value::Null) | Some(Value::Bool(false)) => &[],
                    Some(Value::Array(a)) => a,
                    Some(_) => return Err("not a list of multi-field values".into()),
                };
                // parse every element before appending any, so a bad element leaves the builder untouched
                let mut parsed = Vec::with_capacity(items.len());
                for it in items {
                    let Value::Object(o) = it else { return Err("a multi-field element is not an object".into()) };
                    parsed.push((parse_i64(o.get("ID"))?, o));
                }
                for (i, o) in parsed {
                    id.append_option(i);
                    value_type.append_option(parse_text(o.get("VALUE_TYPE")));
                    value.append_option(parse_text(o.get("VALUE")));
                    type_id.append_option(parse_text(o.get("TYPE_ID")));
                }
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last + items.len() as i32);
            }
            Builder::Money { amount, currency, valid } => match v {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {
                    amount.append_null();
                    currency.append_null();
                    valid.append_null();
                }
                Some(Value::String(s)) if s.is_empty() => {
                    amount.append_null();
                    currency.append_null();
                    valid.append_null();
                }
                Some(Value::String(s)) => {
                    let (a, c) = s.split_once('|').unwrap_or((s.as_str(), ""));
                    amount.append_value(parse_decimal_text(a)?);
                    currency.append_option((!c.is_empty()).then_some(c));
                    valid.append_non_null();
                }
                Some(_) => return Err("not money text".into()),
            },
            Builder::File { id, show_url, valid } => match v {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {
                    id.append_null();
                    show_url.append_null();
                    valid.append_null();
                }
                Some(Value::Object(o)) => {
                    id.append_option(parse_i64(o.get("id"))?);
                    // showUrl is a component path without a token; downloadUrl carries auth= and is dropped
                    show_url.append_option(parse_text(o.get("showUrl")).filter(|u| !u.contains("auth=")));
                    valid.append_non_null();
                }
                Some(Value::String(s)) if s.is_empty() => {
                    id.append_null();
                    show_url.append_null();
                    valid.append_null();
                }
                Some(_) => return Err("not a file object".into()),
            },
            Builder::List { offsets, child, valid, .. } => {
                let n = match v {
                    // absent or null: the portal did not say (CONTACT_IDS is never listed); false, "" and []: no values
                    None | Some(Value::Null) => {
                        offsets.push(last_offset(offsets));
                        valid.append_null();
                        return Ok(());
                    }
                    Some(Value::Bool(false)) => 0,
                    Some(Value::String(s)) if s.is_empty() => 0,
                    Some(Value::Array(a)) => {
                        // check every element before appending any, so a bad element leaves the builder untouched
                        for it in a {
                            child.check(it)?;
                        }
                        for it in a {
                            child.append(Some(it))?;
                        }
                        a.len()
                    }
                    Some(_) => return Err("a single value where a list is due".into()),
                };
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last + n as i32);
                valid.append_non_null();
            }
        }
        Ok(())
    }

    /// Whether `v` would append without error (for the elements of a list, which are checked before any is
    /// appended).
    fn check(&self, v: &Value) -> Result<(), Why> {
        let v = Some(v);
        match self {
            Builder::Int64(_) => parse_i64(v).map(drop),
            Builder::Float64(_) => parse_f64(v).map(drop),
            Builder::Decimal(_) => parse_decimal(v).map(drop),
            Builder::Bool(_) => parse_bool(v).map(drop),
            Builder::Ts(_) => parse_timestamp(v).map(drop),
            Builder::Date(_) => parse_date(v).map(drop),
            Builder::Utf8(_) => Ok(()),
            Builder::Money { .. } => match v {
                Some(Value::String(s)) if !s.is_empty() => parse_decimal_text(s.split_once('|').map_or(s.as_str(), |p| p.0)).map(drop),
                Some(Value::String(_) | Value::Null | Value::Bool(false)) => Ok(()),
                _ => Err("not money text".into()),
            },
            Builder::File { .. } => match v {
                Some(Value::Object(o)) => parse_i64(o.get("id")).map(drop),
                Some(Value::Null | Value::Bool(false)) => Ok(()),
                Some(Value::String(s)) if s.is_empty() => Ok(()),
                _ => Err("not a file object".into()),
            },
            Builder::Multifield { .. } | Builder::List { .. } => Err("a list inside a list".into()),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Decimal(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Utf8(b) => Arc::new(b.finish()),
            Builder::Multifield { offsets, id, value_type, value, type_id } => {
                let children: Vec<ArrayRef> =
                    vec![Arc::new(id.finish()), Arc::new(value_type.finish()), Arc::new(value.finish()), Arc::new(type_id.finish())];
                let st = StructArray::new(multifield_fields(), children, None);
                let field = Arc::new(Field::new("element", DataType::Struct(multifield_fields()), false));
                let offs = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(field, offs, Arc::new(st), None))
            }
            Builder::Money { amount, currency, valid } => Arc::new(StructArray::new(
                money_fields(),
                vec![Arc::new(amount.finish()), Arc::new(currency.finish())],
                valid.finish(),
            )),
            Builder::File { id, show_url, valid } => Arc::new(StructArray::new(
                file_fields(),
                vec![Arc::new(id.finish()), Arc::new(show_url.finish())],
                valid.finish(),
            )),
            Builder::List { item, offsets, child, valid } => {
                let values = child.finish();
                let field = Arc::new(Field::new("element", item.clone(), true));
                let offs = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(field, offs, values, valid.finish()))
            }
        }
    }
}

/// A raw value for messages and rejects: shortened, secrets redacted, `auth=` tokens masked.
fn shown(v: Option<&Value>) -> String {
    let s = match v {
        None => "(absent)".to_string(),
        Some(v) => v.to_string(),
    };
    // hide first, then shorten: a secret cut in half would no longer be recognised
    let s = mask_auth_tokens(&crate::secret::redact(&s));
    if s.chars().count() > 120 { s.chars().take(120).collect::<String>() + "…" } else { s }
}

/// `…?auth=abc123&x=1` → `…?auth=***&x=1`, also `AUTH=` and the URL-encoded `auth%3D`.
pub fn mask_auth_tokens(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some((i, marker)) = ["auth=", "auth%3d"].iter().filter_map(|m| lower[pos..].find(m).map(|i| (pos + i, m.len()))).min() {
        out.push_str(&s[pos..i + marker]);
        out.push_str("***");
        let rest = &s[i + marker..];
        let end = rest.find(|c: char| c == '&' || c == '"' || c == '\'' || c == '%' || c.is_whitespace()).unwrap_or(rest.len());
        pos = i + marker + end;
    }
    out.push_str(&s[pos..]);
    out
}

fn record_id(row: &Value) -> String {
    match row.get("ID") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "(no ID)".into(),
    }
}

/// A value that did not fit its column and was replaced by NULL (or an empty list).
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The ID of the record (written under the entity's key, e.g. `lead_id`, in the rejects file).
    pub record_id: String,
    pub field: String,
    /// The raw JSON value, shortened and with secrets and `auth=` tokens masked.
    pub raw_value: String,
    pub reason: String,
}

/// Appends records one at a time and produces a batch; records need not be kept around.
///
/// Lenient (default): a bad value becomes NULL (an empty list for the multi-fields) and a [`Reject`].
/// Strict: the first bad value is an error naming the field, the lead and the value.
pub struct BatchBuilder<'a> {
    cols: &'a [Column],
    schema: SchemaRef,
    builders: Vec<Builder>,
    strict: bool,
    rejects: Vec<Reject>,
}

impl<'a> BatchBuilder<'a> {
    pub fn new(cols: &'a [Column], schema: &SchemaRef, capacity: usize, strict: bool) -> Self {
        BatchBuilder {
            cols,
            schema: schema.clone(),
            builders: cols.iter().map(|c| Builder::new(&c.kind, capacity)).collect(),
            strict,
            rejects: Vec::new(),
        }
    }

    /// Appends one record (a JSON object).
    pub fn append(&mut self, row: &Value) -> Result<()> {
        let Value::Object(obj) = row else {
            return Err(BadValue { record: "lead", field: "(record)".into(), record_id: "?".into(), value: shown(Some(row)), expected: "a JSON object".into() }.into());
        };
        for (col, b) in self.cols.iter().zip(self.builders.iter_mut()) {
            let v = obj.get(&col.source);
            if let Err(why) = b.append(v) {
                let expected = format!("{} ({why})", col.kind.describe());
                if self.strict {
                    return Err(BadValue { record: "lead", field: col.source.clone(), record_id: record_id(row), value: shown(v), expected }.into());
                }
                b.append(None).expect("an empty value always appends");
                self.rejects.push(Reject { record_id: record_id(row), field: col.source.clone(), raw_value: shown(v), reason: expected });
            }
        }
        Ok(())
    }

    /// The batch and the values rejected while building it.
    pub fn finish(mut self) -> Result<(RecordBatch, Vec<Reject>)> {
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        Ok((RecordBatch::try_new(self.schema.clone(), arrays)?, self.rejects))
    }
}

/// Converts records (JSON objects) into a batch with `schema` (built from `cols` by [`crate::schema::arrow_schema`]).
pub fn convert_rows(rows: &[Value], cols: &[Column], schema: &SchemaRef, strict: bool) -> Result<(RecordBatch, Vec<Reject>)> {
    let mut b = BatchBuilder::new(cols, schema, rows.len(), strict);
    for row in rows {
        b.append(row)?;
    }
    b.finish()
}

/// The reference conversion of a fetched page: every chunk is parsed into a `serde_json::Value` tree and its
/// records appended through [`BatchBuilder`]. [`convert_page`] must give the same batch, rejects and errors;
/// tests and `benches/decode.rs` compare the two.
#[doc(hidden)]
pub fn convert_page_values(
    chunks: &[Box<RawValue>],
    rows: usize,
    cols: &[Column],
    schema: &SchemaRef,
    strict: bool,
) -> Result<(RecordBatch, Vec<Reject>)> {
    let mut b = BatchBuilder::new(cols, schema, rows, strict);
    for chunk in chunks {
        let records: Vec<Value> = serde_json::from_str(chunk.get())
            .map_err(|e| Error::Internal(format!("{NOT_JSON}: {e}")))?;
        for r in &records {
            b.append(r)?;
        }
    }
    b.finish()
}

// ---------------------------------------------------------------------------------------------------------------
// The fast path: page text → columns, without a `Value` tree.
//
// Each chunk is walked once with serde's visitor API over the JSON text. A record's keys are looked up among the
// columns (the portal writes every record's keys in the same order, so a key is usually found by comparing it
// with the key at the same position in the previous record), and each value goes straight into its column: the
// common shapes (strings, nulls, arrays of strings, multi-field arrays of objects, file objects) are decoded in
// place from borrowed text. Anything else becomes a `Value` and takes [`Col::append_value`], which follows
// [`Builder::append`] rule for rule. When even that is not enough — a bad element inside a list, a duplicate key,
// a record that is not an object — the chunk (≤ 50 records) is rolled back and converted from `Value`s. The
// columns are plain vectors so that a value, a record or a chunk can be rolled back by truncating them.

use arrow_array::types::{Date32Type, Decimal128Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{BooleanArray, PrimitiveArray, StringArray};
use arrow_buffer::{ArrowNativeType, BooleanBufferBuilder, Buffer, NullBuffer, ScalarBuffer};
use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as _;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

fn nulls_of(n: &mut NullBufferBuilder) -> Option<NullBuffer> {
    n.finish().filter(|b| b.null_count() > 0)
}

/// Values of a primitive column and their validity.
struct Prim<T: ArrowNativeType> {
    v: Vec<T>,
    n: NullBufferBuilder,
}

impl<T: ArrowNativeType> Prim<T> {
    fn new(cap: usize) -> Self {
        Prim { v: Vec::with_capacity(cap), n: NullBufferBuilder::new(cap) }
    }
    #[inline]
    fn push(&mut self, x: T) {
        self.v.push(x);
        self.n.append_non_null();
    }
    #[inline]
    fn push_null(&mut self) {
        self.v.push(T::default());
        self.n.append_null();
    }
    #[inline]
    fn push_opt(&mut self, x: Option<T>) {
        match x {
            Some(x) => self.push(x),
            None => self.push_null(),
        }
    }
    fn truncate(&mut self, len: usize) {
        self.v.truncate(len);
        self.n.truncate(len);
    }
    fn finish<P: arrow_array::ArrowPrimitiveType<Native = T>>(&mut self) -> PrimitiveArray<P> {
        PrimitiveArray::new(ScalarBuffer::from(std::mem::take(&mut self.v)), nulls_of(&mut self.n))
    }
}

/// A UTF-8 column: offsets, bytes and validity.
struct Strs {
    offsets: Vec<i32>,
    bytes: Vec<u8>,
    n: NullBufferBuilder,
}

impl Strs {
    fn new(cap: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(cap + 1);
        offsets.push(0);
        Strs { offsets, bytes: Vec::with_capacity(bytes), n: NullBufferBuilder::new(cap) }
    }
    #[inline]
    fn end(&mut self) {
        let end = i32::try_from(self.bytes.len()).expect("byte array offset overflow");
        self.offsets.push(end);
    }
    #[inline]
    fn push(&mut self, s: &str) {
        self.bytes.extend_from_slice(s.as_bytes());
        self.end();
        self.n.append_non_null();
    }
    #[inline]
    fn push_null(&mut self) {
        self.end();
        self.n.append_null();
    }
    #[inline]
    fn push_opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.push(s),
            None => self.push_null(),
        }
    }
    fn len(&self) -> usize {
        self.offsets.len() - 1
    }
    fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.bytes.truncate(self.offsets[len] as usize);
            self.offsets.truncate(len + 1);
            self.n.truncate(len);
        }
    }
    fn finish(&mut self) -> StringArray {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let bytes = std::mem::take(&mut self.bytes);
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        // SAFETY: the bytes are whole `&str`s one after another and the offsets are their ends (`push`), cut
        // back only to such an end (`truncate`): valid UTF-8, split at character boundaries.
        unsafe { StringArray::new_unchecked(offsets, Buffer::from_vec(bytes), nulls_of(&mut self.n)) }
    }
}

struct Bools {
    v: BooleanBufferBuilder,
    n: NullBufferBuilder,
}

impl Bools {
    #[inline]
    fn push_opt(&mut self, x: Option<bool>) {
        match x {
            Some(b) => {
                self.v.append(b);
                self.n.append_non_null();
            }
            None => {
                self.v.append(false);
                self.n.append_null();
            }
        }
    }
}

fn last_offset(offsets: &[i32]) -> i32 {
    *offsets.last().expect("offsets start with 0")
}

/// One column under construction by the fast path (the counterpart of [`Builder`]).
enum Col {
    Int64(Prim<i64>),
    Float64(Prim<f64>),
    Decimal(Prim<i128>),
    Bool(Bools),
    Ts(Prim<i64>),
    Date(Prim<i32>),
    Utf8(Strs),
    Multifield { offsets: Vec<i32>, id: Prim<i64>, value_type: Strs, value: Strs, type_id: Strs },
    Money { valid: NullBufferBuilder, amount: Prim<i128>, currency: Strs },
    File { valid: NullBufferBuilder, id: Prim<i64>, show_url: Strs },
    List { item: DataType, offsets: Vec<i32>, child: Box<Col>, valid: NullBufferBuilder },
}

impl Col {
    fn new(kind: &Kind, cap: usize) -> Col {
        match kind {
            Kind::Int64 => Col::Int64(Prim::new(cap)),
            Kind::Float64 => Col::Float64(Prim::new(cap)),
            Kind::Decimal => Col::Decimal(Prim::new(cap)),
            Kind::Bool => Col::Bool(Bools { v: BooleanBufferBuilder::new(cap), n: NullBufferBuilder::new(cap) }),
            Kind::Timestamp => Col::Ts(Prim::new(cap)),
            Kind::Date => Col::Date(Prim::new(cap)),
            Kind::Utf8 => Col::Utf8(Strs::new(cap, cap * 8)),
            Kind::Multifield => Col::Multifield {
                offsets: Vec::from([0]),
                id: Prim::new(cap),
                value_type: Strs::new(cap, cap * 4),
                value: Strs::new(cap, cap * 16),
                type_id: Strs::new(cap, cap * 4),
            },
            Kind::Money => Col::Money { valid: NullBufferBuilder::new(cap), amount: Prim::new(cap), currency: Strs::new(cap, cap * 3) },
            Kind::File => Col::File { valid: NullBufferBuilder::new(cap), id: Prim::new(cap), show_url: Strs::new(cap, cap * 32) },
            Kind::List(inner) => {
                Col::List { item: inner.data_type(), offsets: Vec::from([0]), child: Box::new(Col::new(inner, cap)), valid: NullBufferBuilder::new(cap) }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Col::Int64(p) | Col::Ts(p) => p.v.len(),
            Col::Float64(p) => p.v.len(),
            Col::Decimal(p) => p.v.len(),
            Col::Date(p) => p.v.len(),
            Col::Bool(b) => b.n.len(),
            Col::Utf8(s) => s.len(),
            Col::Multifield { offsets, .. } | Col::List { offsets, .. } => offsets.len() - 1,
            Col::Money { valid, .. } | Col::File { valid, .. } => valid.len(),
        }
    }

    /// Drops everything after the first `len` rows.
    fn truncate(&mut self, len: usize) {
        match self {
            Col::Int64(p) | Col::Ts(p) => p.truncate(len),
            Col::Float64(p) => p.truncate(len),
            Col::Decimal(p) => p.truncate(len),
            Col::Date(p) => p.truncate(len),
            Col::Bool(b) => {
                if len < b.n.len() {
                    b.v.truncate(len);
                    b.n.truncate(len);
                }
            }
            Col::Utf8(s) => s.truncate(len),
            // `len < offsets.len()`, not `len + 1 <`: a list cut short by a bad element has pushed elements but
            // no offset yet, and they must go too, or the next list would start with them
            Col::Multifield { offsets, id, value_type, value, type_id } => {
                if len < offsets.len() {
                    let items = offsets[len] as usize;
                    offsets.truncate(len + 1);
                    id.truncate(items);
                    value_type.truncate(items);
                    value.truncate(items);
                    type_id.truncate(items);
                }
            }
            Col::Money { valid, amount, currency } => {
                valid.truncate(len);
                amount.truncate(len);
                currency.truncate(len);
            }
            Col::File { valid, id, show_url } => {
                valid.truncate(len);
                id.truncate(len);
                show_url.truncate(len);
            }
            Col::List { offsets, child, valid, .. } => {
                if len < offsets.len() {
                    let items = offsets[len] as usize;
                    offsets.truncate(len + 1);
                    child.truncate(items);
                    valid.truncate(len);
                }
            }
        }
    }

    /// What `Builder::append(None)` appends: NULL, or an empty list.
    #[inline]
    fn append_empty(&mut self) {
        match self {
            Col::Int64(p) | Col::Ts(p) => p.push_null(),
            Col::Float64(p) => p.push_null(),
            Col::Decimal(p) => p.push_null(),
            Col::Date(p) => p.push_null(),
            Col::Bool(b) => b.push_opt(None),
            Col::Utf8(s) => s.push_null(),
            Col::Multifield { offsets, .. } => offsets.push(last_offset(offsets)),
            Col::List { offsets, valid, .. } => {
                offsets.push(last_offset(offsets));
                valid.append_null();
            }
            Col::Money { valid, amount, currency } => {
                amount.push_null();
                currency.push_null();
                valid.append_null();
            }
            Col::File { valid, id, show_url } => {
                id.push_null();
                show_url.push_null();
                valid.append_null();
            }
        }
    }

    /// Appends a JSON string value if it is one of the common, valid shapes. Returns false, having appended
    /// nothing, when the value needs [`Col::append_value`] (because it is bad, or just unusual).
    #[inline]
    fn push_str_fast(&mut self, s: &str) -> bool {
        match self {
            Col::Utf8(x) => x.push(s),
            Col::Int64(p) => {
                if s.is_empty() {
                    p.push_null();
                } else {
                    match int_fast(s) {
                        Some(x) => p.push(x),
                        None => return false,
                    }
                }
            }
            Col::Ts(p) => {
                if s.is_empty() {
                    p.push_null();
                } else {
                    match timestamp_text(s) {
                        Some(x) => p.push(x),
                        None => return false,
                    }
                }
            }
            Col::Date(p) => {
                if s.is_empty() {
                    p.push_null();
                } else {
                    match date_text(s) {
                        Some(x) => p.push(x),
                        None => return false,
                    }
                }
            }
            Col::Bool(b) => match s {
                "" => b.push_opt(None),
                "Y" | "y" | "1" | "true" => b.push_opt(Some(true)),
                "N" | "n" | "0" | "false" => b.push_opt(Some(false)),
                _ => return false,
            },
            Col::Decimal(p) => {
                if s.is_empty() {
                    p.push_null();
                } else {
                    match decimal_text(s) {
                        Some(x) => p.push(x),
                        None => return false,
                    }
                }
            }
            Col::Float64(p) => {
                if s.is_empty() {
                    p.push_null();
                } else {
                    match s.trim().parse::<f64>() {
                        Ok(x) if x.is_finite() => p.push(x),
                        _ => return false,
                    }
                }
            }
            Col::Money { valid, amount, currency } => {
                if s.is_empty() {
                    amount.push_null();
                    currency.push_null();
                    valid.append_null();
                } else {
                    let (a, c) = s.split_once('|').unwrap_or((s, ""));
                    let Some(x) = decimal_text(a) else { return false };
                    amount.push(x);
                    currency.push_opt((!c.is_empty()).then_some(c));
                    valid.append_non_null();
                }
            }
            Col::File { valid, id, show_url } => {
                if !s.is_empty() {
                    return false;
                }
                id.push_null();
                show_url.push_null();
                valid.append_null();
            }
            Col::List { offsets, valid, .. } => {
                if !s.is_empty() {
                    return false;
                }
                offsets.push(last_offset(offsets));
                valid.append_non_null();
            }
            Col::Multifield { .. } => return false,
        }
        true
    }

    /// Appends one value of a record (`None`: the key is absent) by the rules of [`Builder::append`]. On an
    /// error the column may hold part of the value: the caller truncates it.
    fn append_value(&mut self, v: Option<&Value>) -> Result<(), Why> {
        match self {
            Col::Int64(p) => p.push_opt(parse_i64(v)?),
            Col::Float64(p) => p.push_opt(parse_f64(v)?),
            Col::Decimal(p) => p.push_opt(parse_decimal(v)?),
            Col::Bool(b) => b.push_opt(parse_bool(v)?),
            Col::Ts(p) => p.push_opt(parse_timestamp(v)?),
            Col::Date(p) => p.push_opt(parse_date(v)?),
            Col::Utf8(s) => s.push_opt(parse_text(v).as_deref()),
            Col::Multifield { offsets, id, value_type, value, type_id } => {
                let items: &[Value] = match v {
                    None | Some(Value::Null) | Some(Value::Bool(false)) => &[],
                    Some(Value::Array(a)) => a,
                    Some(_) => return Err("not a list of multi-field values".into()),
                };
                for it in items {
                    let Value::Object(o) = it else { return Err("a multi-field element is not an object".into()) };
                    id.push_opt(parse_i64(o.get("ID"))?);
                    value_type.push_opt(parse_text(o.get("VALUE_TYPE")).as_deref());
                    value.push_opt(parse_text(o.get("VALUE")).as_deref());
                    type_id.push_opt(parse_text(o.get("TYPE_ID")).as_deref());
                }
                offsets.push(last_offset(offsets) + items.len() as i32);
            }
            Col::Money { valid, amount, currency } => match v {
                None | Some(Value::Null) | Some(Value::Bool(false)) => self.append_empty(),
                Some(Value::String(s)) if s.is_empty() => self.append_empty(),
                Some(Value::String(s)) => {
                    let (a, c) = s.split_once('|').unwrap_or((s.as_str(), ""));
                    amount.push(parse_decimal_text(a)?);
                    currency.push_opt((!c.is_empty()).then_some(c));
                    valid.append_non_null();
                }
                Some(_) => return Err("not money text".into()),
            },
            Col::File { valid, id, show_url } => match v {
                None | Some(Value::Null) | Some(Value::Bool(false)) => self.append_empty(),
                Some(Value::Object(o)) => {
                    id.push_opt(parse_i64(o.get("id"))?);
                    show_url.push_opt(parse_text(o.get("showUrl")).filter(|u| !u.contains("auth=")).as_deref());
                    valid.append_non_null();
                }
                Some(Value::String(s)) if s.is_empty() => self.append_empty(),
                Some(_) => return Err("not a file object".into()),
            },
            Col::List { offsets, child, valid, .. } => {
                let n = match v {
                    None | Some(Value::Null) => {
                        offsets.push(last_offset(offsets));
                        valid.append_null();
                        return Ok(());
                    }
                    Some(Value::Bool(false)) => 0,
                    Some(Value::String(s)) if s.is_empty() => 0,
                    Some(Value::Array(a)) => {
                        // Builder::check then Builder::append: the first bad element decides, as here
                        for it in a {
                            if matches!(**child, Col::Multifield { .. } | Col::List { .. }) {
                                return Err("a list inside a list".into());
                            }
                            child.append_value(Some(it))?;
                        }
                        a.len()
                    }
                    Some(_) => return Err("a single value where a list is due".into()),
                };
                offsets.push(last_offset(offsets) + n as i32);
                valid.append_non_null();
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::Int64(p) => Arc::new(p.finish::<Int64Type>()),
            Col::Float64(p) => Arc::new(p.finish::<Float64Type>()),
            Col::Decimal(p) => Arc::new(
                p.finish::<Decimal128Type>().with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE).expect("valid decimal type"),
            ),
            Col::Bool(b) => Arc::new(BooleanArray::new(b.v.finish(), nulls_of(&mut b.n))),
            Col::Ts(p) => Arc::new(p.finish::<TimestampMicrosecondType>().with_timezone("UTC")),
            Col::Date(p) => Arc::new(p.finish::<Date32Type>()),
            Col::Utf8(s) => Arc::new(s.finish()),
            Col::Multifield { offsets, id, value_type, value, type_id } => {
                let children: Vec<ArrayRef> = vec![
                    Arc::new(id.finish::<Int64Type>()),
                    Arc::new(value_type.finish()),
                    Arc::new(value.finish()),
                    Arc::new(type_id.finish()),
                ];
                let st = StructArray::new(multifield_fields(), children, None);
                let field = Arc::new(Field::new("element", DataType::Struct(multifield_fields()), false));
                let offs = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(field, offs, Arc::new(st), None))
            }
            Col::Money { valid, amount, currency } => {
                let amount = amount.finish::<Decimal128Type>().with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE).expect("valid decimal type");
                Arc::new(StructArray::new(money_fields(), vec![Arc::new(amount), Arc::new(currency.finish())], nulls_of(valid)))
            }
            Col::File { valid, id, show_url } => Arc::new(StructArray::new(
                file_fields(),
                vec![Arc::new(id.finish::<Int64Type>()), Arc::new(show_url.finish())],
                nulls_of(valid),
            )),
            Col::List { item, offsets, child, valid } => {
                let values = child.finish();
                let field = Arc::new(Field::new("element", item.clone(), true));
                let offs = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(field, offs, values, nulls_of(valid)))
            }
        }
    }
}

// --- text parsers of the fast path: each gives the same answer as the `parse_*` function it stands for, or
// `None` to leave the value to that function ---

/// Two ASCII digits at `i`.
#[inline]
fn d2(b: &[u8], i: usize) -> Option<u32> {
    let (x, y) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
    (x < 10 && y < 10).then_some(x as u32 * 10 + y as u32)
}

/// Days since 1970-01-01 of a valid proleptic Gregorian date (years 1..=9999).
#[inline]
fn ymd_days(b: &[u8]) -> Option<i64> {
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = (d2(b, 0)? * 100 + d2(b, 2)?) as i64;
    let (m, d) = (d2(b, 5)?, d2(b, 8)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let dim = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if y == 0 || d == 0 || d > dim {
        return None;
    }
    // days from civil (H. Hinnant)
    let (m, d) = (m as i64, d as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `YYYY-MM-DDTHH:MM:SS+HH:MM` or `…Z` (the portal's form) → seconds since the epoch; other RFC 3339 spellings
/// (fractions, lower-case letters, `-00:00`, leap seconds) are left to chrono.
#[inline]
fn rfc3339_secs(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let offset = match b.len() {
        25 => {
            let sign = match b[19] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (d2(b, 20)?, d2(b, 23)?);
            if b[22] != b':' || oh > 23 || om > 59 || (sign < 0 && oh == 0 && om == 0) {
                return None;
            }
            sign * (oh as i64 * 3600 + om as i64 * 60)
        }
        20 if b[19] == b'Z' => 0,
        _ => return None,
    };
    if b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = ymd_days(b)?;
    let (h, mi, s) = (d2(b, 11)?, d2(b, 14)?, d2(b, 17)?);
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    Some(days * 86_400 + (h * 3600 + mi * 60 + s) as i64 - offset)
}

/// [`parse_timestamp`] of a non-empty string: microseconds, or `None` for a bad value.
#[inline]
fn timestamp_text(s: &str) -> Option<i64> {
    let t = s.trim();
    match rfc3339_secs(t) {
        Some(secs) => Some(secs * 1_000_000),
        None => DateTime::parse_from_rfc3339(t).ok().map(|d| d.timestamp_micros()),
    }
}

/// [`parse_date`] of a non-empty string: days, or `None` for a bad value.
#[inline]
fn date_text(s: &str) -> Option<i32> {
    let t = s.trim();
    if let Some(secs) = rfc3339_secs(t) {
        return Some((secs + 12 * 3600).div_euclid(86_400) as i32);
    }
    if t.len() == 10 {
        if let Some(days) = ymd_days(t.as_bytes()) {
            return Some(days as i32);
        }
    }
    parse_date(Some(&Value::String(s.to_string()))).ok().flatten()
}

/// [`parse_i64`] of a non-empty string, or `None` for a bad value.
#[inline]
fn int_fast(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if !b.is_empty() && b.len() <= 18 && b.iter().all(u8::is_ascii_digit) {
        return Some(b.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64));
    }
    s.trim().parse::<i64>().ok()
}

/// [`parse_decimal_text`] of a non-empty string in hundredths, or `None` for a bad value.
#[inline]
fn decimal_text(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let (neg, body) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    let (int, frac) = match body.iter().position(|&c| c == b'.') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &body[..0]),
    };
    if int.is_empty() || int.len() > 16 || frac.len() > 2 || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return parse_decimal_text(s).ok();
    }
    let whole = int.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64);
    let cents = frac.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64) * if frac.len() == 1 { 10 } else { 1 };
    let units = whole as i128 * 100 + cents as i128;
    Some(if neg { -units } else { units })
}

// --- serde plumbing ---

/// Makes a `Value` of a non-string scalar exactly as `serde_json::Value`'s own visitor would.
fn value_of<'de, D: serde::Deserializer<'de, Error = serde::de::value::Error>>(d: D) -> Value {
    Value::deserialize(d).unwrap_or(Value::Null)
}

/// One value of a multi-field element, a file object or the record's ID, kept as borrowed text where possible.
enum Scalar<'de> {
    Absent,
    Null,
    Str(Cow<'de, str>),
    Other(Value),
}

impl<'de> serde::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_string())))
    }
    fn visit_string<E>(self, s: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other(value_of(serde::de::value::BoolDeserializer::new(b))))
    }
    fn visit_i64<E>(self, x: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other(value_of(serde::de::value::I64Deserializer::new(x))))
    }
    fn visit_u64<E>(self, x: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other(value_of(serde::de::value::U64Deserializer::new(x))))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other(value_of(serde::de::value::F64Deserializer::new(x))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
        Ok(Scalar::Other(Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
        Ok(Scalar::Other(Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?))
    }
}

impl Scalar<'_> {
    /// `parse_i64` of this value; `Err` for a bad one.
    fn int(&self) -> Result<Option<i64>, ()> {
        match self {
            Scalar::Absent | Scalar::Null => Ok(None),
            Scalar::Str(s) if s.is_empty() => Ok(None),
            Scalar::Str(s) => int_fast(s).map(Some).ok_or(()),
            Scalar::Other(v) => parse_i64(Some(v)).map_err(drop),
        }
    }

    /// `parse_text` of this value.
    fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Scalar::Absent | Scalar::Null => None,
            Scalar::Str(s) => Some(Cow::Borrowed(s)),
            Scalar::Other(v) => Some(Cow::Owned(v.to_string())),
        }
    }

    /// The value as `record_id` shows it.
    fn record_id(this: Option<&Self>) -> String {
        match this {
            None | Some(Scalar::Absent) => "(no ID)".into(),
            Some(Scalar::Null) => Value::Null.to_string(),
            Some(Scalar::Str(s)) => s.to_string(),
            Some(Scalar::Other(v)) => v.to_string(),
        }
    }

    fn to_value(&self) -> Option<Value> {
        match self {
            Scalar::Absent => None,
            Scalar::Null => Some(Value::Null),
            Scalar::Str(s) => Some(Value::String(s.to_string())),
            Scalar::Other(v) => Some(v.clone()),
        }
    }
}

/// The error that makes the chunk go the `Value` way (its text is never shown).
fn redo<E: serde::de::Error>() -> E {
    E::custom("convert this chunk through Value")
}

/// Decodes one value into its column. `Ok(None)`: appended; `Ok(Some(v))`: the value is `v` and it needs
/// [`Col::append_value`] (boxed, so that the common answer stays two words); `Err`: the chunk must be redone.
struct ColSeed<'c> {
    col: &'c mut Col,
}

impl<'de> DeserializeSeed<'de> for ColSeed<'_> {
    type Value = Option<Box<Value>>;
    #[inline]
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Box<Value>>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ColSeed<'_> {
    type Value = Option<Box<Value>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field value")
    }
    #[inline]
    fn visit_str<E>(self, s: &str) -> Result<Option<Box<Value>>, E> {
        Ok(if self.col.push_str_fast(s) { None } else { Some(Box::new(Value::String(s.to_string()))) })
    }
    fn visit_unit<E>(self) -> Result<Option<Box<Value>>, E> {
        self.col.append_empty(); // null means what an absent key means, for every kind
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Option<Box<Value>>, E> {
        self.col.append_empty();
        Ok(None)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Option<Box<Value>>, E> {
        Ok(Some(Box::new(value_of(serde::de::value::BoolDeserializer::new(b)))))
    }
    fn visit_i64<E>(self, x: i64) -> Result<Option<Box<Value>>, E> {
        Ok(Some(Box::new(value_of(serde::de::value::I64Deserializer::new(x)))))
    }
    fn visit_u64<E>(self, x: u64) -> Result<Option<Box<Value>>, E> {
        Ok(Some(Box::new(value_of(serde::de::value::U64Deserializer::new(x)))))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Option<Box<Value>>, E> {
        Ok(Some(Box::new(value_of(serde::de::value::F64Deserializer::new(x)))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Box<Value>>, A::Error> {
        match self.col {
            Col::Multifield { offsets, id, value_type, value, type_id } => {
                let mut n = 0;
                while let Some(()) = seq.next_element_seed(MultiSeed { id, value_type, value, type_id })? {
                    n += 1;
                }
                offsets.push(last_offset(offsets) + n);
                Ok(None)
            }
            Col::List { offsets, child, valid, .. } => {
                let mut n = 0;
                while let Some(()) = seq.next_element_seed(ElemSeed { col: child })? {
                    n += 1;
                }
                offsets.push(last_offset(offsets) + n);
                valid.append_non_null();
                Ok(None)
            }
            _ => Ok(Some(Box::new(Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?))),
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Box<Value>>, A::Error> {
        match self.col {
            Col::File { valid, id, show_url } => {
                let (mut fid, mut url) = (Scalar::Absent, Scalar::Absent);
                while let Some(k) = map.next_key_seed(KeyIndex(&["id", "showUrl"]))? {
                    match k {
                        0 => fid = map.next_value()?,
                        1 => url = map.next_value()?,
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                id.push_opt(fid.int().map_err(|()| redo())?);
                show_url.push_opt(url.text().filter(|u| !u.contains("auth=")).as_deref());
                valid.append_non_null();
                Ok(None)
            }
            _ => Ok(Some(Box::new(Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?))),
        }
    }
}

/// One element of a list column, appended to the list's child column.
struct ElemSeed<'c> {
    col: &'c mut Col,
}

impl<'de> DeserializeSeed<'de> for ElemSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if matches!(self.col, Col::Multifield { .. } | Col::List { .. }) {
            return Err(redo()); // a list inside a list: only Value knows
        }
        let col = self.col;
        match d.deserialize_any(ColSeed { col: &mut *col })? {
            None => Ok(()),
            // an element is checked as the list's child (Builder::check ≡ Builder::append for scalars)
            Some(v) => col.append_value(Some(&v)).map_err(|_| redo()),
        }
    }
}

/// One `{ID, VALUE_TYPE, VALUE, TYPE_ID}` element of a multi-field.
struct MultiSeed<'c> {
    id: &'c mut Prim<i64>,
    value_type: &'c mut Strs,
    value: &'c mut Strs,
    type_id: &'c mut Strs,
}

impl<'de> DeserializeSeed<'de> for MultiSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MultiSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a multi-field element")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut slots = [Scalar::Absent, Scalar::Absent, Scalar::Absent, Scalar::Absent];
        while let Some(k) = map.next_key_seed(KeyIndex(&["ID", "VALUE_TYPE", "VALUE", "TYPE_ID"]))? {
            match slots.get_mut(k) {
                Some(slot) => *slot = map.next_value()?, // a repeated key: the last one counts, as in a Map
                None => drop(map.next_value::<IgnoredAny>()?),
            }
        }
        self.id.push_opt(slots[0].int().map_err(|()| redo())?);
        self.value_type.push_opt(slots[1].text().as_deref());
        self.value.push_opt(slots[2].text().as_deref());
        self.type_id.push_opt(slots[3].text().as_deref());
        Ok(())
    }
}

/// A key → its index in a short list (the list's length when it is not there).
struct KeyIndex(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyIndex {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, k: &str) -> Result<usize, E> {
        Ok(self.0.iter().position(|x| *x == k).unwrap_or(self.0.len()))
    }
}

/// Where a record key goes: a column (or none) and whether it is the record's ID.
#[derive(Clone, Copy)]
struct Slot {
    col: Option<u32>,
    id: bool,
}

/// FNV-1a for the short field names (they come from the portal, one lookup per unexpected key).
#[derive(Default)]
struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// `a == b` for short names without a call to `memcmp`.
#[inline]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    match n {
        0..=7 => a.iter().zip(b).all(|(x, y)| x == y),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        17..=24 => word(a, 0) == word(b, 0) && word(a, 8) == word(b, 8) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// No key (the start of a record, or a key not learned).
const NO_KEY: u32 = u32::MAX;
/// Unknown keys learned at most (a portal has a few hundred fields).
const MAX_KEYS: usize = 4096;

/// Field name → slot. Every key seen gets a number, and each key remembers which key followed it last time:
/// the portal writes the keys of every record in the same order (some absent), so a key is nearly always
/// found by one comparison with the predicted one.
struct Keys {
    names: Vec<Box<str>>,
    slots: Vec<Slot>,
    map: HashMap<Box<str>, u32, std::hash::BuildHasherDefault<NameHasher>>,
    /// `next[k + 1]`: the key that followed key `k`; `next[0]`: the first key of a record.
    next: Vec<u32>,
}

impl Keys {
    fn new(cols: &[Column]) -> (Keys, bool) {
        let mut keys = Keys { names: Vec::new(), slots: Vec::new(), map: HashMap::default(), next: vec![NO_KEY] };
        let mut repeated = false;
        for (i, c) in cols.iter().enumerate() {
            repeated |= keys.map.contains_key(c.source.as_str());
            keys.learn(&c.source, Slot { col: Some(i as u32), id: c.source == "ID" });
        }
        if !keys.map.contains_key("ID") {
            keys.learn("ID", Slot { col: None, id: true });
        }
        (keys, repeated)
    }

    fn learn(&mut self, name: &str, slot: Slot) -> u32 {
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.slots.push(slot);
        self.next.push(NO_KEY);
        self.map.insert(name.into(), id);
        id
    }

    /// The key `k` that follows key `prev`: its number and slot.
    #[inline]
    fn resolve(&mut self, prev: u32, k: &str) -> (u32, Slot) {
        let at = prev.wrapping_add(1) as usize;
        let guess = self.next[at];
        if let Some(name) = self.names.get(guess as usize) {
            if same_name(name.as_bytes(), k.as_bytes()) {
                return (guess, self.slots[guess as usize]);
            }
        }
        let id = match self.map.get(k) {
            Some(&id) => id,
            None if self.names.len() < MAX_KEYS => self.learn(k, Slot { col: None, id: false }),
            None => return (NO_KEY, Slot { col: None, id: false }),
        };
        self.next[at] = id;
        (id, self.slots[id as usize])
    }
}

struct KeySeed<'k> {
    keys: &'k mut Keys,
    prev: u32,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = (u32, Slot);
    #[inline]
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(u32, Slot), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = (u32, Slot);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    #[inline]
    fn visit_str<E>(self, k: &str) -> Result<(u32, Slot), E> {
        Ok(self.keys.resolve(self.prev, k))
    }
}

/// Builds one batch from the text of a page's chunks (see the section comment above).
struct PageDecoder<'a> {
    cols: &'a [Column],
    schema: SchemaRef,
    columns: Vec<Col>,
    keys: Keys,
    /// Two columns read the same field: only the `Value` way gives each its value.
    values_only: bool,
    /// `seen[c] == stamp`: column `c` has a value in the current record.
    seen: Vec<u32>,
    stamp: u32,
    rows: usize,
    strict: bool,
    rejects: Vec<Reject>,
    /// Bad values of the current record: (column, value, why).
    pending: Vec<(usize, Value, Why)>,
    /// A strict-mode error raised inside the visitor.
    failure: Option<Error>,
}

impl<'a> PageDecoder<'a> {
    fn new(cols: &'a [Column], schema: &SchemaRef, capacity: usize, strict: bool) -> Self {
        let (keys, values_only) = Keys::new(cols);
        PageDecoder {
            cols,
            schema: schema.clone(),
            columns: cols.iter().map(|c| Col::new(&c.kind, capacity)).collect(),
            keys,
            values_only,
            seen: vec![0; cols.len()],
            stamp: 0,
            rows: 0,
            strict,
            rejects: Vec::new(),
            pending: Vec::new(),
            failure: None,
        }
    }

    fn add_chunk(&mut self, text: &str) -> Result<()> {
        let (rows, rejects) = (self.rows, self.rejects.len());
        if !self.values_only {
            let mut de = serde_json::Deserializer::from_str(text);
            let fast = (&mut de).deserialize_seq(ChunkVisitor { dec: self }).and_then(|()| de.end());
            if let Some(e) = self.failure.take() {
                return Err(e);
            }
            if fast.is_ok() {
                return Ok(());
            }
            for c in &mut self.columns {
                c.truncate(rows);
            }
            self.rejects.truncate(rejects);
            self.rows = rows;
        }
        let records: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| Error::Internal(format!("{NOT_JSON}: {e}")))?;
        for r in &records {
            self.append_record(r)?;
        }
        Ok(())
    }

    /// One record the `Value` way: [`BatchBuilder::append`] on these columns.
    fn append_record(&mut self, row: &Value) -> Result<()> {
        let Value::Object(obj) = row else {
            return Err(BadValue { record: "lead", field: "(record)".into(), record_id: "?".into(), value: shown(Some(row)), expected: "a JSON object".into() }.into());
        };
        let r = self.rows;
        for (col, b) in self.cols.iter().zip(self.columns.iter_mut()) {
            let v = obj.get(&col.source);
            if let Err(why) = b.append_value(v) {
                let expected = format!("{} ({why})", col.kind.describe());
                if self.strict {
                    return Err(BadValue { record: "lead", field: col.source.clone(), record_id: record_id(row), value: shown(v), expected }.into());
                }
                b.truncate(r);
                b.append_empty();
                self.rejects.push(Reject { record_id: record_id(row), field: col.source.clone(), raw_value: shown(v), reason: expected });
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The end of a record read the fast way: absent columns, then its bad values in column order.
    fn end_record(&mut self, id: Option<&Scalar<'_>>) -> Result<()> {
        for (c, col) in self.columns.iter_mut().enumerate() {
            if self.seen[c] != self.stamp {
                col.append_empty();
            }
        }
        if !self.pending.is_empty() {
            self.pending.sort_by_key(|p| p.0);
            let lead = Scalar::record_id(id);
            for (c, v, why) in self.pending.drain(..) {
                let col = &self.cols[c];
                let expected = format!("{} ({why})", col.kind.describe());
                if self.strict {
                    return Err(BadValue { record: "lead", field: col.source.clone(), record_id: lead, value: shown(Some(&v)), expected }.into());
                }
                self.rejects.push(Reject { record_id: lead.clone(), field: col.source.clone(), raw_value: shown(Some(&v)), reason: expected });
            }
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<(RecordBatch, Vec<Reject>)> {
        debug_assert!(self.columns.iter().all(|c| c.len() == self.rows), "every column has a value of every record");
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Col::finish).collect();
        Ok((RecordBatch::try_new(self.schema.clone(), arrays)?, self.rejects))
    }
}

struct ChunkVisitor<'d, 'a> {
    dec: &'d mut PageDecoder<'a>,
}

impl<'de> Visitor<'de> for ChunkVisitor<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(()) = seq.next_element_seed(RecordSeed { dec: &mut *self.dec })? {}
        Ok(())
    }
}

struct RecordSeed<'d, 'a> {
    dec: &'d mut PageDecoder<'a>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let dec = self.dec;
        let r = dec.rows;
        dec.stamp = dec.stamp.wrapping_add(1);
        if dec.stamp == 0 {
            dec.seen.fill(0);
            dec.stamp = 1;
        }
        let stamp = dec.stamp;
        dec.pending.clear();
        let mut id: Option<Scalar<'de>> = None;
        let mut prev = NO_KEY;
        while let Some((key, slot)) = map.next_key_seed(KeySeed { keys: &mut dec.keys, prev })? {
            prev = key;
            let Some(c) = slot.col else {
                if slot.id {
                    id = Some(map.next_value()?); // a repeated key: the last one counts
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
                continue;
            };
            let c = c as usize;
            if dec.seen[c] == stamp {
                return Err(redo()); // a repeated key: its last value counts, which Value knows how to do
            }
            dec.seen[c] = stamp;
            let col = &mut dec.columns[c];
            let slow = if slot.id {
                let v: Scalar<'de> = map.next_value()?;
                let slow = match &v {
                    Scalar::Str(s) if col.push_str_fast(s) => None,
                    Scalar::Null => {
                        col.append_empty();
                        None
                    }
                    other => other.to_value().map(Box::new),
                };
                id = Some(v);
                slow
            } else {
                map.next_value_seed(ColSeed { col: &mut *col })?
            };
            if let Some(v) = slow {
                col.truncate(r);
                if let Err(why) = col.append_value(Some(&v)) {
                    col.truncate(r);
                    col.append_empty();
                    dec.pending.push((c, *v, why));
                }
            }
        }
        if let Err(e) = dec.end_record(id.as_ref()) {
            dec.failure = Some(e);
            return Err(redo());
        }
        Ok(())
    }
}

/// How a list result that does not parse is reported (the raw zone's reader turns it into bad input).
pub const NOT_JSON: &str = "a list result is not a JSON array";

/// The JSON text of one list call's `result`: as fetched, or a line of the raw zone.
pub trait ChunkText {
    fn text(&self) -> &str;
}

impl ChunkText for Box<RawValue> {
    fn text(&self) -> &str {
        self.get()
    }
}

impl ChunkText for &str {
    fn text(&self) -> &str {
        self
    }
}

/// Converts a fetched page: raw JSON arrays of records (one list call, ≤ 50 records, each), decoded straight
/// into Arrow columns. Same batch, rejects and errors as [`convert_page_values`].
pub fn convert_page<C: ChunkText>(
    chunks: &[C],
    rows: usize,
    cols: &[Column],
    schema: &SchemaRef,
    strict: bool,
) -> Result<(RecordBatch, Vec<Reject>)> {
    let mut d = PageDecoder::new(cols, schema, rows, strict);
    for chunk in chunks {
        d.add_chunk(chunk.text())?;
    }
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal_text("15000.00"), Ok(1_500_000));
        assert_eq!(parse_decimal_text("0.1"), Ok(10));
        assert_eq!(parse_decimal_text("-3.5"), Ok(-350));
        assert_eq!(parse_decimal_text("12"), Ok(1200));
        assert_eq!(parse_decimal_text("1.230"), Ok(123));
        assert!(parse_decimal_text("1.234").is_err());
        assert!(parse_decimal_text("abc").is_err());
        assert!(parse_decimal_text("1e5").is_err());
        assert!(parse_decimal_text("12345678901234567.00").is_err());
        assert_eq!(parse_decimal_text("9999999999999999.99"), Ok(999_999_999_999_999_999));
    }

    #[test]
    fn dates_take_the_utc_date() {
        let d2000 = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
        let days = chrono::Datelike::num_days_from_ce(&d2000) - UNIX_EPOCH_DAYS_FROM_CE;
        assert_eq!(parse_date(Some(&json!("2000-01-01T02:00:00+02:00"))), Ok(Some(days)));
        assert_eq!(parse_date(Some(&json!("1999-12-31T19:00:00-05:00"))), Ok(Some(days)));
        assert_eq!(parse_date(Some(&json!("2000-01-01"))), Ok(Some(days)));
        // a daylight-saving hour between the date's offset and today's: still the same day
        assert_eq!(parse_date(Some(&json!("2000-01-01T01:00:00+02:00"))), Ok(Some(days)));
        assert_eq!(parse_date(Some(&json!("2000-01-01T03:00:00+02:00"))), Ok(Some(days)));
        assert_eq!(parse_date(Some(&json!("1969-12-31T22:00:00-02:00"))), Ok(Some(0)));
        assert_eq!(parse_date(Some(&json!("1960-06-15T00:00:00+00:00"))), Ok(Some(-3487)));
        assert_eq!(parse_date(Some(&json!(""))), Ok(None));
        assert_eq!(parse_timestamp(Some(&json!("2021-05-31T15:10:16+02:00"))), Ok(Some(1_622_466_616_000_000)));
        assert_eq!(parse_timestamp(Some(&json!(""))), Ok(None));
        assert!(parse_timestamp(Some(&json!("yesterday"))).is_err());
    }

    #[test]
    fn bad_value_names_field_record_and_value() {
        let cols = vec![Column::plain("ID", Kind::Int64), Column::plain("OPPORTUNITY", Kind::Decimal)];
        let schema = crate::schema::arrow_schema(&cols);
        let rows = vec![json!({"ID": "7", "OPPORTUNITY": "12.345"})];
        let e = convert_rows(&rows, &cols, &schema, true).unwrap_err().to_string();
        assert!(e.contains("OPPORTUNITY") && e.contains("lead 7") && e.contains("12.345"), "{e}");
        // lenient: the cell is NULL and the value is accounted for
        let (b, rejects) = convert_rows(&rows, &cols, &schema, false).unwrap();
        assert!(b.column(1).is_null(0));
        assert_eq!(rejects.len(), 1);
        assert_eq!((rejects[0].record_id.as_str(), rejects[0].field.as_str(), rejects[0].raw_value.as_str()), ("7", "OPPORTUNITY", "\"12.345\""));
    }

    #[test]
    fn lists_structs_and_files() {
        let cols = vec![
            Column::plain("PHONE", Kind::Multifield),
            Column::plain("F", Kind::File),
            Column::plain("M", Kind::Money),
            Column::plain("L", Kind::List(Box::new(Kind::Int64))),
        ];
        let schema = crate::schema::arrow_schema(&cols);
        let rows = vec![
            json!({"PHONE": [{"ID":"1","VALUE_TYPE":"WORK","VALUE":"+1","TYPE_ID":"PHONE"}], "F": {"id": 9, "showUrl": "/s?fileId=9", "downloadUrl": "/d?auth=tok"}, "M": "100.50|USD", "L": ["79","80"]}),
            json!({"L": false, "M": ""}),
        ];
        let (b, rejects) = convert_rows(&rows, &cols, &schema, true).unwrap();
        assert!(rejects.is_empty());
        let phone = b.column(0).as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!(phone.value_length(0), 1);
        assert_eq!(phone.value_length(1), 0);
        let l = b.column(3).as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!((l.value_length(0), l.value_length(1)), (2, 0));
        assert!(b.column(2).is_null(1) && b.column(1).is_null(1));
        let dbg = format!("{:?}", b.column(1));
        assert!(!dbg.contains("auth="));
    }

    use arrow_array::Array;

    fn one_column(kind: Kind, values: Vec<Value>) -> (RecordBatch, Vec<Reject>) {
        let cols = vec![Column::plain("ID", Kind::Int64), Column::plain("F", kind)];
        let schema = crate::schema::arrow_schema(&cols);
        let rows: Vec<Value> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| if v == json!("<absent>") { json!({"ID": i.to_string()}) } else { json!({"ID": i.to_string(), "F": v}) })
            .collect();
        convert_rows(&rows, &cols, &schema, false).unwrap()
    }

    #[test]
    fn uf_booleans_in_both_encodings() {
        for (v, want) in [
            (json!("1"), Some(true)), (json!("0"), Some(false)), (json!(true), Some(true)), (json!(false), Some(false)),
            (json!(1), Some(true)), (json!(0), Some(false)), (json!("Y"), Some(true)), (json!("N"), Some(false)),
            (json!(""), None), (Value::Null, None),
        ] {
            assert_eq!(parse_bool(Some(&v)), Ok(want), "{v}");
        }
        assert!(parse_bool(Some(&json!("maybe"))).is_err());
        assert!(parse_bool(Some(&json!(2))).is_err());
    }

    #[test]
    fn money_file_and_unknown_types() {
        use arrow_array::cast::AsArray;
        let (b, rejects) = one_column(Kind::Money, vec![json!("100.50|USD"), json!("100|RUB"), json!(""), Value::Null, json!("12.5.5|USD")]);
        let st = b.column(1).as_struct();
        let amount = st.column(0).as_primitive::<arrow_array::types::Decimal128Type>();
        assert_eq!((amount.value(0), amount.value(1)), (10_050, 10_000));
        assert_eq!(st.column(1).as_string::<i32>().value(0), "USD");
        assert!(st.is_null(2) && st.is_null(3) && st.is_null(4));
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].field, "F");

        let (b, rejects) = one_column(
            Kind::File,
            vec![json!({"id": 5, "showUrl": "/show?fileId=5", "downloadUrl": "/d?auth=SECRET1&fileId=5"}), json!("<absent>"), json!({"id": "6", "showUrl": "/x?auth=SECRET2"})],
        );
        assert!(rejects.is_empty());
        let st = b.column(1).as_struct();
        assert_eq!(st.column(0).as_primitive::<arrow_array::types::Int64Type>().value(1 - 1), 5);
        assert!(st.is_null(1));
        assert!(st.column(1).is_null(2), "a show URL with a token is not written");
        assert!(!format!("{b:?}").contains("SECRET"));

        // a type we do not know (an app's rest_* field) keeps its JSON text
        let (b, rejects) = one_column(Kind::Utf8, vec![json!({"a": 1}), json!(12), json!(true), Value::Null]);
        assert!(rejects.is_empty());
        let s = b.column(1).as_string::<i32>();
        assert_eq!((s.value(0), s.value(1), s.value(2)), (r#"{"a":1}"#, "12", "true"));
        assert!(s.is_null(3));
    }

    #[test]
    fn list_empties_and_a_bad_element_leave_the_list_consistent() {
        let kind = Kind::List(Box::new(Kind::Int64));
        let (b, rejects) =
            one_column(kind, vec![json!(false), json!([]), Value::Null, json!(["1", "x", "3"]), json!(["7", "8"]), json!("<absent>"), json!("oops")]);
        let l = b.column(1).as_any().downcast_ref::<ListArray>().unwrap();
        let lens: Vec<i32> = (0..l.len()).map(|i| l.value_length(i)).collect();
        assert_eq!(lens, [0, 0, 0, 0, 2, 0, 0]);
        // false and [] say "no values"; null, an absent key (CONTACT_IDS, which no list method returns) and a
        // rejected value say nothing: NULL
        let nulls: Vec<bool> = (0..l.len()).map(|i| l.is_null(i)).collect();
        assert_eq!(nulls, [false, false, true, true, false, true, true]);
        assert_eq!(rejects.iter().map(|r| r.record_id.as_str()).collect::<Vec<_>>(), ["3", "6"]);
        // the reference (`Value`) path agrees
        let rows: Vec<Value> = vec![json!({"ID": "0", "F": false}), json!({"ID": "1", "F": null}), json!({"ID": "2"})];
        let cols = vec![Column::plain("ID", Kind::Int64), Column::plain("F", Kind::List(Box::new(Kind::Int64)))];
        let schema = crate::schema::arrow_schema(&cols);
        let (b, _) = convert_rows(&rows, &cols, &schema, false).unwrap();
        let l = b.column(1).as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!((0..3).map(|i| l.is_null(i)).collect::<Vec<_>>(), [false, true, true]);
        let (_, rejects) = one_column(Kind::List(Box::new(Kind::Date)), vec![json!(""), json!(["2000-01-01T02:00:00+02:00"])]);
        assert!(rejects.is_empty(), "an empty multiple date UF is \"\"");
    }

    #[test]
    fn every_bad_value_kind_is_a_reject_not_a_panic() {
        let cases = [
            (Kind::Int64, json!("abc")),
            (Kind::Int64, json!("1.5")),
            (Kind::Timestamp, json!("2021-13-45T10:00:00+02:00")),
            (Kind::Timestamp, json!(17)),
            (Kind::Date, json!({"auth": "x"})),
            (Kind::Decimal, json!("12.345")),
            (Kind::Decimal, json!("1e5")),
            (Kind::Bool, json!("maybe")),
            (Kind::Float64, json!("NaN")),
            (Kind::Multifield, json!("+1555")),
            (Kind::Multifield, json!(["+1555"])),
            (Kind::List(Box::new(Kind::Utf8)), json!("a string where a list is due")),
        ];
        for (kind, v) in cases {
            let (b, rejects) = one_column(kind.clone(), vec![v.clone(), json!("<absent>")]);
            assert_eq!(rejects.len(), 1, "{kind:?} {v}");
            assert_eq!(rejects[0].raw_value, v.to_string());
            assert_eq!(b.num_rows(), 2);
            if kind.nullable() {
                assert!(b.column(1).is_null(0), "{kind:?}");
            }
        }
    }

    #[test]
    fn auth_tokens_are_masked() {
        assert_eq!(mask_auth_tokens("/d?auth=abc123&fileId=5"), "/d?auth=***&fileId=5");
        assert_eq!(mask_auth_tokens("x auth=zz y"), "x auth=*** y");
        assert_eq!(mask_auth_tokens("nothing"), "nothing");
        assert_eq!(mask_auth_tokens("/d?AUTH=Zz9&b"), "/d?AUTH=***&b");
        assert_eq!(mask_auth_tokens("u%3Fauth%3Dsecret%26x"), "u%3Fauth%3D***%26x");
    }

    // --- the direct decoder against the reference ---

    use crate::sim::data::{fields_metadata, generate_ids, lead_truth, render_lead, Encoding, IdLayout};

    fn all_columns() -> (Vec<Column>, SchemaRef) {
        let cols = crate::schema::build_columns(crate::entity::Entity::Lead, &fields_metadata(), None, &[]).unwrap();
        let schema = crate::schema::arrow_schema(&cols);
        (cols, schema)
    }

    /// `n` simulated leads as `crm.lead.list` renders them with every field selected, with the simulator's
    /// bad values (`first` is the position of the first lead among the portal's).
    fn sim_records(n: usize, first: usize, enc: &Encoding) -> Vec<Value> {
        let total = first + n;
        let ids = generate_ids(total, 7, IdLayout::Realistic);
        (first..total)
            .map(|pos| {
                let id = ids[pos];
                let mut m = render_lead(&lead_truth(7, id, pos, total), id, enc, |_| true);
                if let Some((field, raw)) = crate::sim::bad_value_at(pos) {
                    m.insert(field.to_string(), raw);
                }
                Value::Object(m)
            })
            .collect()
    }

    /// `/` as `\/` and everything beyond ASCII as `\uXXXX`, as PHP's `json_encode` writes by default.
    fn php_escaped(json: &str) -> String {
        let mut out = String::new();
        for c in json.chars() {
            match c {
                '/' => out.push_str("\\/"),
                c if c.is_ascii() => out.push(c),
                c => c.encode_utf16(&mut [0u16; 2]).iter().for_each(|u| out.push_str(&format!("\\u{u:04x}"))),
            }
        }
        out
    }

    fn chunked(records: &[Value], per_chunk: usize) -> Vec<Box<RawValue>> {
        records.chunks(per_chunk.max(1)).map(|c| RawValue::from_string(Value::Array(c.to_vec()).to_string()).unwrap()).collect()
    }

    fn raw(texts: &[&str]) -> Vec<Box<RawValue>> {
        texts.iter().map(|t| RawValue::from_string(t.to_string()).unwrap()).collect()
    }

    /// Rejects as they would be shown now: other tests register secrets (e.g. a webhook code `abc`) in the
    /// process-wide registry at any moment, so the two conversions may have seen different sets.
    fn redacted(rejects: &[Reject]) -> Vec<Reject> {
        rejects.iter().map(|r| Reject { raw_value: crate::secret::redact(&r.raw_value), ..r.clone() }).collect()
    }

    /// Both paths, lenient and strict: same batch and rejects, or the same error.
    fn assert_same(chunks: &[Box<RawValue>], rows: usize, cols: &[Column], schema: &SchemaRef) -> Option<(RecordBatch, Vec<Reject>)> {
        let mut lenient = None;
        for strict in [false, true] {
            let want = convert_page_values(chunks, rows, cols, schema, strict);
            let got = convert_page(chunks, rows, cols, schema, strict);
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    assert_eq!(redacted(&w.1), redacted(&g.1), "rejects (strict: {strict})");
                    assert_eq!(w.0.schema(), g.0.schema());
                    for (i, (a, b)) in w.0.columns().iter().zip(g.0.columns()).enumerate() {
                        assert_eq!(a, b, "column {} (strict: {strict})", cols[i].source);
                    }
                    assert_eq!(w.0, g.0);
                    if !strict {
                        lenient = Some(g);
                    }
                }
                (Err(w), Err(g)) => {
                    assert_eq!(crate::secret::redact(&w.to_string()), crate::secret::redact(&g.to_string()), "strict: {strict}")
                }
                (w, g) => panic!("strict: {strict}: reference {:?} vs direct {:?}", w.map(|r| r.1), g.map(|r| r.1)),
            }
        }
        lenient
    }

    #[test]
    fn direct_decoder_matches_reference_on_simulated_pages() {
        let (cols, schema) = all_columns();
        for (offset_secs, bool_uf_json) in [(2 * 3600, false), (2 * 3600, true), (-5 * 3600, false), (0, true)] {
            let enc = Encoding { offset_secs, bool_uf_json };
            let records = sim_records(1100, 0, &enc);
            let chunks = chunked(&records, 50);
            let (b, rejects) = assert_same(&chunks, records.len(), &cols, &schema).expect("lenient converts");
            assert_eq!(b.num_rows(), 1100);
            // the same text as PHP's json_encode writes it (`\/`, `\uXXXX`): the same batch
            let php: Vec<Box<RawValue>> = chunks.iter().map(|c| RawValue::from_string(php_escaped(c.get())).unwrap()).collect();
            assert_ne!(php[0].get(), chunks[0].get());
            let (b2, rejects2) = assert_same(&php, records.len(), &cols, &schema).unwrap();
            assert_eq!((b2, redacted(&rejects2)), (b.clone(), redacted(&rejects)));
            assert_eq!(rejects.len(), 14, "the simulator's bad values at positions 10..=70 and 1007..=1067: {rejects:?}");
        }
    }

    #[test]
    fn page_sizes_and_chunking_do_not_matter() {
        let (cols, schema) = all_columns();
        let enc = Encoding::default();
        let records = sim_records(160, 990, &enc); // positions 990..1150: bad values at 1007, 1017, …, 1067
        for n in [0usize, 1, 49, 50, 51, 160] {
            let recs = &records[..n];
            let whole = assert_same(&chunked(recs, 50), n, &cols, &schema).unwrap();
            assert_eq!(whole.0.num_rows(), n);
            for per_chunk in [1, 3, 50] {
                let split = assert_same(&chunked(recs, per_chunk), n, &cols, &schema).unwrap();
                assert_eq!(split.0, whole.0, "{n} leads, {per_chunk} per chunk");
                assert_eq!(redacted(&split.1), redacted(&whole.1));
            }
        }
        // no chunks at all
        assert_eq!(assert_same(&[], 0, &cols, &schema).unwrap().0.num_rows(), 0);
        // several chunks per page, of different sizes, and an empty one
        let mut chunks = chunked(&records[..7], 7);
        chunks.extend(raw(&["[]"]));
        chunks.extend(chunked(&records[7..], 50));
        let (b, _) = assert_same(&chunks, records.len(), &cols, &schema).unwrap();
        assert_eq!(b.num_rows(), 160);
    }

    #[test]
    fn a_subset_of_columns_skips_the_other_keys() {
        let meta = fields_metadata();
        let sel: Vec<String> = ["TITLE", "PHONE", "UF_CRM_1710000000009", "UF_CRM_1710000000016", "OPPORTUNITY"].map(String::from).into();
        let cols = crate::schema::build_columns(crate::entity::Entity::Lead, &meta, Some(&sel), &["DATE_CREATE"]).unwrap();
        let schema = crate::schema::arrow_schema(&cols);
        let records = sim_records(120, 0, &Encoding::default());
        assert_same(&chunked(&records, 50), 120, &cols, &schema).unwrap();
        // columns in another order than the keys
        let mut rev = cols.clone();
        rev.reverse();
        assert_same(&chunked(&records, 50), 120, &rev, &crate::schema::arrow_schema(&rev)).unwrap();
    }

    fn edge_columns() -> Vec<Column> {
        vec![
            Column::plain("ID", Kind::Int64),
            Column::plain("I", Kind::Int64),
            Column::plain("F", Kind::Float64),
            Column::plain("D", Kind::Decimal),
            Column::plain("B", Kind::Bool),
            Column::plain("T", Kind::Timestamp),
            Column::plain("DT", Kind::Date),
            Column::plain("S", Kind::Utf8),
            Column::plain("PHONE", Kind::Multifield),
            Column::plain("M", Kind::Money),
            Column::plain("FILE", Kind::File),
            Column::plain("LI", Kind::List(Box::new(Kind::Int64))),
            Column::plain("LD", Kind::List(Box::new(Kind::Date))),
            Column::plain("LB", Kind::List(Box::new(Kind::Bool))),
            Column::plain("LS", Kind::List(Box::new(Kind::Utf8))),
            Column::plain("LF", Kind::List(Box::new(Kind::File))),
            Column::plain("LM", Kind::List(Box::new(Kind::Money))),
            Column::plain("LL", Kind::List(Box::new(Kind::List(Box::new(Kind::Int64))))),
        ]
    }

    #[test]
    fn unusual_shapes_match_the_reference() {
        let cols = edge_columns();
        let schema = crate::schema::arrow_schema(&cols);
        let records = [
            // the common shapes
            r#"{"ID":"1","I":"12","F":"1.5","D":"15000.00","B":"Y","T":"2021-05-31T15:10:16+02:00","DT":"2000-01-01T02:00:00+02:00","S":"x","PHONE":[{"ID":"5","VALUE_TYPE":"WORK","VALUE":"+1","TYPE_ID":"PHONE"}],"M":"1.5|USD","FILE":{"id":9,"showUrl":"/s?fileId=9","downloadUrl":"/d?auth=tok"},"LI":["1","2"],"LD":["2000-01-01T02:00:00+02:00"],"LB":["1","0"],"LS":["a","b"],"LF":[{"id":"3","showUrl":"/s"}],"LM":["1|USD",""],"LL":[]}"#,
            // nulls, empties, false for lists, JSON numbers and booleans
            r#"{"ID":2,"I":12,"F":1.25,"D":12,"B":true,"T":"","DT":"","S":null,"PHONE":false,"M":"","FILE":"","LI":false,"LD":"","LB":[true,false,1,0,null],"LS":[1,true,null,{"a":[1]},[2]],"LF":false,"LM":null,"LL":false}"#,
            r#"{"ID":null,"I":null,"F":null,"D":null,"B":null,"T":null,"DT":null,"S":12.50,"PHONE":null,"M":null,"FILE":null,"LI":null,"LD":null,"LB":null,"LS":null,"LF":null,"LM":null,"LL":null}"#,
            // no keys at all, and only unknown keys with nested values
            r#"{}"#,
            r#"{"X":{"a":[1,{"b":null}]},"Y":[[],{}],"Z":"q","ID":"4"}"#,
            // text that needs unescaping, whitespace around everything
            " { \"ID\" : \"5\" , \"S\" : \"a\\\"b\\\\c\\/d\\u00fc\\ud83d\\ude00\\n\" , \"PHONE\" : [ { \"VALUE\" : \"\\u0031\", \"ID\" : \" 7 \" } ] , \"M\" : \"2.5\\u007cEUR\" } ",
            // spaces, signs and other spellings the parsers accept or refuse
            r#"{"ID":"6","I":" 42 ","F":" 2.5 ","D":"-0.5","T":" 2021-05-31T15:10:16Z ","DT":" 2000-01-01 ","M":"-3.10|"}"#,
            r#"{"ID":"7","I":"+42","D":"+1.5","T":"2021-05-31t15:10:16.123+02:00","DT":"1999-12-31T23:00:00Z","M":"5|"}"#,
            r#"{"ID":"8","T":"2021-05-31T15:10:16-00:00","DT":"2024-02-29T02:00:00+02:00","D":"5."}"#,
            r#"{"ID":"9","D":".5","I":"0000000000000000042","T":"2021-05-31 15:10:16+02:00","DT":"2000-01-01T02:00:00.5+02:00"}"#,
            // key order different from the previous record's
            r#"{"S":"late id","I":"1","ID":"10"}"#,
            r#"{"ID":"11","S":"\u0041"}"#,
        ];
        let text = format!("[{}]", records.join(","));
        assert_same(&raw(&[&text]), records.len(), &cols, &schema).unwrap();
        // and one record per chunk, so that a redone chunk cannot hide another's difference
        let one_each: Vec<String> = records.iter().map(|r| format!("[{r}]")).collect();
        let one_each: Vec<&str> = one_each.iter().map(String::as_str).collect();
        assert_same(&raw(&one_each), records.len(), &cols, &schema).unwrap();
    }

    #[test]
    fn bad_values_match_the_reference() {
        let cols = edge_columns();
        let schema = crate::schema::arrow_schema(&cols);
        let bad = [
            ("I", r#""abc""#), ("I", r#""1.5""#), ("I", "1.5"), ("I", "true"), ("I", "[1]"), ("I", r#"{"a":1}"#), ("I", r#"" ""#),
            ("I", r#""99999999999999999999""#), ("F", r#""NaN""#), ("F", r#""inf""#), ("F", "[]"), ("D", r#""12.345""#), ("D", r#""1e5""#),
            ("D", r#""12345678901234567.00""#), ("D", r#""-""#), ("D", "1.234"), ("B", r#""maybe""#), ("B", "2"), ("B", r#""YES""#),
            ("T", r#""2021-13-45T10:00:00+02:00""#), ("T", "17"), ("T", r#""2021-02-29T10:00:00+02:00""#), ("T", r#""2021-05-31T24:00:00+02:00""#),
            ("T", r#""2021-05-31T10:00:00+24:00""#), ("T", r#""yesterday""#), ("DT", r#"{"auth":"x"}"#), ("DT", r#""2001-02-29""#), ("DT", r#""  ""#),
            ("DT", r#""2000-1-1""#), ("S", r#"{"auth":"x?auth=SECRET&y"}"#), ("PHONE", r#""+1555""#), ("PHONE", r#"["+1555"]"#), ("PHONE", r#""""#),
            ("PHONE", r#"[{"ID":"1","VALUE":"a"},{"ID":"x","VALUE":"b"}]"#), ("PHONE", r#"[{"ID":"1"},7]"#), ("PHONE", r#"{"ID":"1"}"#), ("PHONE", "true"),
            ("M", r#""12.5.5|USD""#), ("M", "12"), ("M", "true"), ("M", r#""|USD""#), ("FILE", r#""/x""#), ("FILE", r#"{"id":"x"}"#), ("FILE", "[]"), ("FILE", "5"),
            ("LI", r#""not-a-list""#), ("LI", r#"["1","x","3"]"#), ("LI", r#"[1,[2]]"#), ("LI", r#"{"0":"1"}"#), ("LI", "true"), ("LD", r#"["2000-01-01T02:00:00+02:00","bad"]"#),
            ("LB", r#"["1","maybe"]"#), ("LF", r#"[{"id":1},{"id":"x"}]"#), ("LF", r#"["/file"]"#), ("LM", r#"["1|USD","x|EUR"]"#), ("LM", "[7]"), ("LL", r#"[["1"]]"#), ("LL", r#"[1]"#),
        ];
        for (field, v) in bad {
            // the bad value before the ID, between good values, and records with lists after it (a list cut short by
            // its bad element must leave nothing behind for them); first in its chunk and after another record
            let after = r#"{"ID":"78","I":"2","LI":["5","6"],"PHONE":[{"ID":"9","VALUE":"v"}]},{"ID":"79","LI":["7"]}"#;
            for before in ["", r#"{"ID":"76","LI":["4"],"PHONE":[{"ID":"8","VALUE":"u"}]},"#] {
                let text = format!(r#"[{before}{{"I":"1","{field}":{v},"S":"s","ID":"77"}},{after}]"#);
                let text = text.replacen(r#""I":"1","I":"#, r#""I":"#, 1); // a bad I replaces the good one
                let rows = if before.is_empty() { 3 } else { 4 };
                let got = assert_same(&raw(&[&text]), rows, &cols, &schema);
                if let Some((batch, rejects)) = got {
                    let mine: Vec<_> = rejects.iter().filter(|r| r.record_id == "77").collect();
                    assert!(mine.len() <= 1, "{field}: {v}: {rejects:?}");
                    let li = batch.column_by_name("li").unwrap().as_any().downcast_ref::<ListArray>().unwrap();
                    let last: Vec<i64> = li.value(rows - 1).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap().values().to_vec();
                    assert_eq!(last, [7], "{field}: {v}: the record after keeps its own list");
                }
            }
        }
        // two bad values in one record: both rejects, in column order; strict names the first column
        let text = r#"[{"T":"bad","I":"bad","ID":"5"}]"#;
        let (_, rejects) = assert_same(&raw(&[text]), 1, &cols, &schema).unwrap();
        assert_eq!(rejects.iter().map(|r| r.field.as_str()).collect::<Vec<_>>(), ["I", "T"]);
        assert!(rejects.iter().all(|r| r.record_id == "5"));
        let e = convert_page(&raw(&[text]), 1, &cols, &schema, true).unwrap_err().to_string();
        assert!(e.contains("field I of lead 5"), "{e}");
        // an auth token inside a rejected value is masked
        let text = r#"[{"ID":"6","DT":"https://x/?auth=SECRET1&a=1"}]"#;
        let (_, rejects) = assert_same(&raw(&[text]), 1, &cols, &schema).unwrap();
        assert!(!rejects[0].raw_value.contains("SECRET1"), "{:?}", rejects[0]);
    }

    #[test]
    fn repeated_keys_ids_and_broken_records_match_the_reference() {
        let cols = edge_columns();
        let schema = crate::schema::arrow_schema(&cols);
        for text in [
            // a repeated key: the last value counts, whether the first was good or bad
            r#"[{"ID":"1","I":"x","I":"2"},{"ID":"2","I":"3","I":"y"}]"#,
            r#"[{"ID":"1","PHONE":[{"ID":"1"}],"PHONE":[]},{"ID":"2","S":"a","S":null}]"#,
            r#"[{"ID":"1","ID":"9","I":"x"}]"#,
            r#"[{"ID":"1","PHONE":[{"ID":"1","VALUE":"a","VALUE":"b"}],"FILE":{"id":1,"id":"x"}}]"#,
            // the record's ID in other shapes
            r#"[{"I":"x"}]"#,
            r#"[{"ID":7,"I":"x"}]"#,
            r#"[{"ID":null,"I":"x"}]"#,
            r#"[{"ID":"abc","I":"x"}]"#,
            r#"[{"ID":{"a":1},"I":"x"}]"#,
            // records that are not objects, chunks that are not lists
            r#"[{"ID":"1"},"not a record",{"ID":"2"}]"#,
            r#"[{"ID":"1"},[]]"#,
            r#"{"ID":"1"}"#,
            r#""text""#,
            r#"null"#,
        ] {
            let rows = text.matches("\"ID\"").count();
            assert_same(&raw(&[r#"[{"ID":"0","I":"0"}]"#, text]), rows + 1, &cols, &schema);
        }
        // a column read twice (two columns of one field) takes the Value way, with the same result
        let twice = vec![Column::plain("ID", Kind::Int64), Column::plain("I", Kind::Int64), Column::plain("I", Kind::Utf8)];
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("i", DataType::Int64, true),
            Field::new("i2", DataType::Utf8, true),
        ]));
        assert_same(&raw(&[r#"[{"ID":"1","I":"5"},{"ID":"2","I":"x"}]"#]), 2, &twice, &schema).unwrap();
    }

    #[test]
    fn names_compare_like_strings() {
        let names = ["", "I", "ID", "TITLE_X", "ABCDEFGH", "UF_CRM_17", "UF_CRM_1704817278", "UF_CRM_1710000000005", "UF_CRM_1710000000005_LONGER_NAME"];
        for a in names {
            for b in names {
                assert_eq!(same_name(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
            }
            for i in 0..a.len() {
                let mut c = a.as_bytes().to_vec();
                c[i] ^= 1;
                assert!(!same_name(a.as_bytes(), &c), "{a} vs changed byte {i}");
            }
        }
    }

    #[test]
    fn fast_text_parsers_agree_with_the_reference_parsers() {
        let ts = |s: &str| parse_timestamp(Some(&Value::String(s.into())));
        let date = |s: &str| parse_date(Some(&Value::String(s.into())));
        // every day over four centuries, at a few times and offsets
        let start = NaiveDate::from_ymd_opt(1890, 1, 1).unwrap();
        for d in (0..(400 * 366)).step_by(7) {
            let day = start + chrono::Duration::days(d);
            for (time, off) in [("00:00:00", "+02:00"), ("23:59:59", "-05:30"), ("12:34:56", "Z"), ("01:00:00", "+14:00")] {
                let s = format!("{}T{time}{off}", day.format("%Y-%m-%d"));
                assert_eq!(timestamp_text(&s).ok_or(()), ts(&s).map(Option::unwrap).map_err(drop), "{s}");
                assert_eq!(date_text(&s).ok_or(()), date(&s).map(Option::unwrap).map_err(drop), "{s}");
            }
            let s = day.format("%Y-%m-%d").to_string();
            assert_eq!(date_text(&s).ok_or(()), date(&s).map(Option::unwrap).map_err(drop), "{s}");
        }
        for s in [
            "2021-02-29T10:00:00+02:00", "2020-02-29T10:00:00+02:00", "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "2021-04-31T00:00:00Z",
            "2021-00-10T00:00:00Z", "2021-13-10T00:00:00Z", "2021-01-00T00:00:00Z", "2021-01-01T24:00:00Z", "2021-01-01T23:60:00Z",
            "2021-12-31T23:59:60Z", "2021-01-01T00:00:00+23:59", "2021-01-01T00:00:00+24:00", "2021-01-01T00:00:00+02:60",
            "2021-01-01T00:00:00-00:00", "2021-01-01T00:00:00+0200", "2021-01-01T00:00:00z", "2021-01-01t00:00:00Z", "2021-01-01 00:00:00Z",
            "0000-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "-001-01-01T00:00:00Z", "2021-01-01T00:00:00.000Z",
            "2021-1-01T00:00:00Z", "2021-01-01T00:00:0aZ", "２０２１-01-01T00:00:00Z", " 2021-01-01T00:00:00Z", "2021-01-01T00:00:00Z ",
            "2021-01-01", "2021-02-29", "0000-01-01", "2021/01/01", "2021-01-1", "+2021-01-01", "20210101",
        ] {
            assert_eq!(timestamp_text(s).ok_or(()), ts(s).map(|x| x.unwrap()).map_err(drop), "{s}");
            assert_eq!(date_text(s).ok_or(()), date(s).map(|x| x.unwrap()).map_err(drop), "{s}");
        }
        for s in [
            "0", "1", "-1", "42", "007", " 5", "5 ", "+5", "1.5", "1e3", "abc", "999999999999999999", "9223372036854775807",
            "9223372036854775808", "-9223372036854775808", "00000000000000000001", "٣",
        ] {
            assert_eq!(int_fast(s), parse_i64(Some(&Value::String(s.into()))).ok().flatten(), "{s}");
        }
        for s in [
            "0", "0.0", "0.00", "0.000", "1.230", "1.234", "-0.5", "-.5", ".5", "5.", "-", ".", "+1.5", " 1.5", "1.5 ", "1e5", "1,5",
            "9999999999999999.99", "09999999999999999.99", "10000000000000000.00", "1234567890123456", "12345678901234567", "-9999999999999999.99",
        ] {
            assert_eq!(decimal_text(s), parse_decimal_text(s).ok(), "{s}");
        }
    }
}
