//! Hive partitioning: which directory a row goes to (`date_create_month=2024-05`), with escaped values.

use std::str::FromStr;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch};
use chrono::DateTime;

use crate::error::{Error, Result};

/// The value DuckDB, Spark and Hive read as NULL.
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    Year,
    Month,
    Day,
}

/// `--partition-by none|date_create:year|date_create:month|date_create:day|status_id|stage_id|type_id|company_type|source_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSpec {
    None,
    /// Derived from DATE_CREATE in UTC; the derived column (`date_create_month`) lives only in the path.
    DateCreate(Grain),
    /// A code column (`status_id` of leads, `stage_id` of deals, `type_id`, `company_type`, `source_id`); the column
    /// moves from the files into the path.
    Code(&'static str),
}

impl Default for PartitionSpec {
    fn default() -> Self {
        PartitionSpec::DateCreate(Grain::Month)
    }
}

pub const PARTITION_CHOICES: &str =
    "none, date_create:year, date_create:month, date_create:day, status_id, stage_id, type_id, company_type, source_id";

/// The code columns a dataset can be partitioned by, as (column, portal field).
const CODES: &[(&str, &str)] = &[
    ("status_id", "STATUS_ID"),
    ("stage_id", "STAGE_ID"),
    ("type_id", "TYPE_ID"),
    ("company_type", "COMPANY_TYPE"),
    ("source_id", "SOURCE_ID"),
];

impl FromStr for PartitionSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "none" => PartitionSpec::None,
            "date_create:year" => PartitionSpec::DateCreate(Grain::Year),
            "date_create:month" | "date_create" => PartitionSpec::DateCreate(Grain::Month),
            "date_create:day" => PartitionSpec::DateCreate(Grain::Day),
            other if CODES.iter().any(|(c, _)| *c == other) => {
                PartitionSpec::Code(CODES.iter().find(|(c, _)| *c == other).expect("listed").0)
            }
            other => {
                return Err(Error::Usage(format!("unknown --partition-by {other:?}; choose one of: {PARTITION_CHOICES}")))
            }
        })
    }
}

impl PartitionSpec {
    /// The spec as `--partition-by` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            PartitionSpec::None => "none",
            PartitionSpec::DateCreate(Grain::Year) => "date_create:year",
            PartitionSpec::DateCreate(Grain::Month) => "date_create:month",
            PartitionSpec::DateCreate(Grain::Day) => "date_create:day",
            PartitionSpec::Code(c) => c,
        }
    }

    /// The portal field the partition is computed from.
    pub fn source_field(&self) -> Option<&'static str> {
        match self {
            PartitionSpec::None => None,
            PartitionSpec::DateCreate(_) => Some("DATE_CREATE"),
            PartitionSpec::Code(c) => CODES.iter().find(|(col, _)| col == c).map(|(_, f)| *f),
        }
    }

    /// The partition column name as readers see it.
    pub fn key_name(&self) -> Option<&'static str> {
        match self {
            PartitionSpec::None => None,
            PartitionSpec::DateCreate(Grain::Year) => Some("date_create_year"),
            PartitionSpec::DateCreate(Grain::Month) => Some("date_create_month"),
            PartitionSpec::DateCreate(Grain::Day) => Some("date_create_day"),
            PartitionSpec::Code(c) => Some(c),
        }
    }

    /// A column that moves from the files into the path (never repeated inside files).
    pub fn moved_column(&self) -> Option<&'static str> {
        match self {
            PartitionSpec::Code(c) => Some(c),
            _ => None,
        }
    }

    /// The partition directory (`key=value`) of every row; `None` when not partitioned.
    pub fn row_dirs(&self, batch: &RecordBatch) -> Result<Option<Vec<String>>> {
        let Some(key) = self.key_name() else { return Ok(None) };
        let col_name = self.source_field().expect("partitioned").to_ascii_lowercase();
        let col = batch
            .column_by_name(&col_name)
            .ok_or_else(|| Error::Internal(format!("partition column {col_name} is not in the batch")))?;
        let mut out = Vec::with_capacity(batch.num_rows());
        match self {
            PartitionSpec::DateCreate(grain) => {
                let ts = col.as_primitive_opt::<TimestampMicrosecondType>()
                    .ok_or_else(|| Error::Internal("date_create is not a timestamp".into()))?;
                let fmt = match grain {
                    Grain::Year => "%Y",
                    Grain::Month => "%Y-%m",
                    Grain::Day => "%Y-%m-%d",
                };
                for i in 0..ts.len() {
                    let v = if ts.is_null(i) {
                        HIVE_NULL.to_string()
                    } else {
                        DateTime::from_timestamp_micros(ts.value(i)).map(|d| d.format(fmt).to_string()).unwrap_or_else(|| HIVE_NULL.into())
                    };
                    out.push(format!("{key}={v}"));
                }
            }
            PartitionSpec::Code(c) => {
                let s = col.as_string_opt::<i32>().ok_or_else(|| Error::Internal(format!("{c} is not text")))?;
                for i in 0..s.len() {
                    let v = if s.is_null(i) || s.value(i).is_empty() { HIVE_NULL.to_string() } else { escape_value(s.value(i)) };
                    out.push(format!("{key}={v}"));
                }
            }
            PartitionSpec::None => unreachable!(),
        }
        Ok(Some(out))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so that any value is one safe path segment
/// that DuckDB decodes back.
pub fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out == "." || out == ".." {
        return out.replace('.', "%2E");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_escape() {
        assert_eq!("date_create:month".parse::<PartitionSpec>().unwrap(), PartitionSpec::DateCreate(Grain::Month));
        assert!(matches!("title".parse::<PartitionSpec>(), Err(Error::Usage(_))));
        let stage: PartitionSpec = "Stage_ID".parse().unwrap();
        assert_eq!((stage.name(), stage.source_field(), stage.moved_column()), ("stage_id", Some("STAGE_ID"), Some("stage_id")));
        assert_eq!(escape_value("C2:NEW/x y%"), "C2%3ANEW%2Fx%20y%25");
        assert_eq!(escape_value("Новый"), "%D0%9D%D0%BE%D0%B2%D1%8B%D0%B9");
        assert_eq!(escape_value(".."), "%2E%2E");
    }
}
