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
    List { item: DataType, offsets: Vec<i32>, child: Box<Builder> },
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
            Kind::List(inner) => Builder::List { item: inner.data_type(), offsets: vec![0], child: Box::new(Builder::new(inner, cap)) },
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
            Builder::List { offsets, child, .. } => {
                let n = match v {
                    None | Some(Value::Null) | Some(Value::Bool(false)) => 0,
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
            Builder::List { item, offsets, child } => {
                let values = child.finish();
                let field = Arc::new(Field::new("element", item.clone(), true));
                let offs = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(field, offs, values, None))
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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reject {
    pub lead_id: String,
    pub field: String,
    /// The raw JSON value, shortened and with secrets and `auth=` tokens masked.
    pub raw_value: String,
    pub reason: String,
}

/// Appends records one at a time and produces a batch; records need not be kept around.
///
/// Lenient (default): a bad value becomes NULL (an empty list for list columns) and a [`Reject`].
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
            return Err(BadValue { field: "(record)".into(), record_id: "?".into(), value: shown(Some(row)), expected: "a JSON object".into() }.into());
        };
        for (col, b) in self.cols.iter().zip(self.builders.iter_mut()) {
            let v = obj.get(&col.source);
            if let Err(why) = b.append(v) {
                let expected = format!("{} ({why})", col.kind.describe());
                if self.strict {
                    return Err(BadValue { field: col.source.clone(), record_id: record_id(row), value: shown(v), expected }.into());
                }
                b.append(None).expect("an empty value always appends");
                self.rejects.push(Reject { lead_id: record_id(row), field: col.source.clone(), raw_value: shown(v), reason: expected });
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

/// Converts a fetched page: raw JSON arrays of records, parsed one list call (≤ 50 records) at a time.
pub fn convert_page(
    chunks: &[Box<RawValue>],
    rows: usize,
    cols: &[Column],
    schema: &SchemaRef,
    strict: bool,
) -> Result<(RecordBatch, Vec<Reject>)> {
    let mut b = BatchBuilder::new(cols, schema, rows, strict);
    for chunk in chunks {
        let records: Vec<Value> = serde_json::from_str(chunk.get())
            .map_err(|e| Error::Internal(format!("a page that parsed while fetching did not parse again: {e}")))?;
        for r in &records {
            b.append(r)?;
        }
    }
    b.finish()
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
        assert_eq!((rejects[0].lead_id.as_str(), rejects[0].field.as_str(), rejects[0].raw_value.as_str()), ("7", "OPPORTUNITY", "\"12.345\""));
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
        assert_eq!(rejects.iter().map(|r| r.lead_id.as_str()).collect::<Vec<_>>(), ["3", "6"]);
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
}
