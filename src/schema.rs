//! Schema: field metadata from `crm.<entity>.fields` plus the declared mapping in `schemas/<entity>.json` → the
//! columns of the dataset and their Arrow types.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::entity::Entity;
use crate::error::{Error, Result};

/// How a Bitrix value becomes an Arrow value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `"123"` → Int64.
    Int64,
    /// `"12.5"` → Float64.
    Float64,
    /// `"15000.00"` → Decimal128(18,2), exact.
    Decimal,
    /// `Y`/`N`, `1`/`0`, `true`/`false` → Boolean.
    Bool,
    /// ISO 8601 with offset → Timestamp(µs, UTC); `""` → null.
    Timestamp,
    /// Midnight UTC written in the portal's offset → Date32 of the UTC date; `""` → null.
    Date,
    /// Text; numbers keep their JSON text; objects/arrays become JSON text.
    Utf8,
    /// `[{ID, VALUE_TYPE, VALUE, TYPE_ID}]` → List<Struct<id, value_type, value, type_id>>; absent → [].
    Multifield,
    /// UF money `"100.50|USD"` → Struct<amount Decimal128(18,2), currency Utf8>.
    Money,
    /// UF file `{id, showUrl, downloadUrl}` → Struct<id Int64, show_url Utf8> (the download URL carries an
    /// `auth=` token and is never written).
    File,
    /// A multiple field: `false`, `[]` and null → [].
    List(Box<Kind>),
}

pub const DECIMAL_PRECISION: u8 = 18;
pub const DECIMAL_SCALE: i8 = 2;

impl Kind {
    fn parse_declared(s: &str) -> Option<Kind> {
        Some(match s {
            "int64" => Kind::Int64,
            "float64" => Kind::Float64,
            "decimal(18,2)" => Kind::Decimal,
            "boolean" => Kind::Bool,
            "timestamp_utc" => Kind::Timestamp,
            "date32" => Kind::Date,
            "utf8" => Kind::Utf8,
            "multifield" => Kind::Multifield,
            "file" => Kind::File,
            "list<int64>" => Kind::List(Box::new(Kind::Int64)),
            _ => return None,
        })
    }

    pub fn data_type(&self) -> DataType {
        match self {
            Kind::Int64 => DataType::Int64,
            Kind::Float64 => DataType::Float64,
            Kind::Decimal => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
            Kind::Bool => DataType::Boolean,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Date => DataType::Date32,
            Kind::Utf8 => DataType::Utf8,
            Kind::Multifield => DataType::List(Arc::new(Field::new("element", DataType::Struct(multifield_fields()), false))),
            Kind::Money => DataType::Struct(money_fields()),
            Kind::File => DataType::Struct(file_fields()),
            Kind::List(inner) => DataType::List(Arc::new(Field::new("element", inner.data_type(), true))),
        }
    }

    /// Whether the column can hold nulls. A multi-field never does (a record without phones has no PHONE key:
    /// an empty list); a list is NULL when its key is absent or null (CONTACT_IDS, which no list method returns)
    /// and empty for `false`, `""` and `[]`.
    pub fn nullable(&self) -> bool {
        !matches!(self, Kind::Multifield)
    }

    /// The type DuckDB shows for this column (`DESCRIBE`).
    pub fn duckdb_type(&self) -> String {
        match self {
            Kind::Int64 => "BIGINT".into(),
            Kind::Float64 => "DOUBLE".into(),
            Kind::Decimal => format!("DECIMAL({DECIMAL_PRECISION},{DECIMAL_SCALE})"),
            Kind::Bool => "BOOLEAN".into(),
            Kind::Timestamp => "TIMESTAMP WITH TIME ZONE".into(),
            Kind::Date => "DATE".into(),
            Kind::Utf8 => "VARCHAR".into(),
            Kind::Multifield => r#"STRUCT(id BIGINT, value_type VARCHAR, "value" VARCHAR, type_id VARCHAR)[]"#.into(),
            Kind::Money => format!("STRUCT(amount DECIMAL({DECIMAL_PRECISION},{DECIMAL_SCALE}), currency VARCHAR)"),
            Kind::File => "STRUCT(id BIGINT, show_url VARCHAR)".into(),
            Kind::List(inner) => format!("{}[]", inner.duckdb_type()),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Int64 => "an integer",
            Kind::Float64 => "a number",
            Kind::Decimal => "a decimal with at most 2 fraction digits",
            Kind::Bool => "a Y/N flag",
            Kind::Timestamp => "an ISO 8601 date-time",
            Kind::Date => "an ISO 8601 date",
            Kind::Utf8 => "text",
            Kind::Multifield => "a list of multi-field values",
            Kind::Money => "money as \"amount|CURRENCY\"",
            Kind::File => "a file object",
            Kind::List(_) => "a list",
        }
    }
}

pub fn multifield_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("value_type", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
        Field::new("type_id", DataType::Utf8, true),
    ])
}

pub fn money_fields() -> Fields {
    Fields::from(vec![
        Field::new("amount", DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE), true),
        Field::new("currency", DataType::Utf8, true),
    ])
}

pub fn file_fields() -> Fields {
    Fields::from(vec![Field::new("id", DataType::Int64, true), Field::new("show_url", DataType::Utf8, true)])
}

/// One output column.
#[derive(Debug, Clone)]
pub struct Column {
    /// The portal's field name, e.g. `DATE_CREATE`.
    pub source: String,
    /// The column name, e.g. `date_create`.
    pub name: String,
    pub kind: Kind,
    /// The portal's field type, e.g. `datetime`.
    pub bitrix_type: String,
    /// What people call it: the UF's list label, else the field's title.
    pub label: String,
    pub multiple: bool,
    /// The status dictionary of a `crm_status` field (`STATUS`, `SOURCE`, …).
    pub status_type: Option<String>,
    /// Enumeration items: (item id, value).
    pub items: Vec<(i64, String)>,
}

impl Column {
    /// A column of a given kind with no portal metadata (for tests and derived tables).
    pub fn plain(source: &str, kind: Kind) -> Column {
        Column {
            source: source.into(),
            name: column_name(source),
            kind,
            bitrix_type: String::new(),
            label: source.into(),
            multiple: false,
            status_type: None,
            items: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct DeclaredField {
    name: String,
    arrow: String,
}

#[derive(Debug, Deserialize)]
struct Declared {
    fields: Vec<DeclaredField>,
}

fn declared_kind(mapping: &Declared, name: &str) -> Option<Kind> {
    mapping.fields.iter().find(|f| f.name == name).and_then(|f| Kind::parse_declared(&f.arrow))
}

/// The type of a field the mapping does not declare, from its Bitrix type.
pub fn kind_for_type(bitrix_type: &str, multiple: bool, user_field: bool) -> Kind {
    let scalar = match bitrix_type {
        "integer" | "user" | "crm_company" | "crm_contact" | "crm_lead" | "crm_deal" | "crm_quote" | "crm_category" | "employee"
        | "enumeration" => Kind::Int64,
        "double" => Kind::Float64,
        "char" | "boolean" => Kind::Bool,
        "datetime" => Kind::Timestamp,
        "date" => Kind::Date,
        "crm_multifield" => return Kind::Multifield,
        "money" if user_field => Kind::Money,
        "file" => Kind::File,
        _ => Kind::Utf8,
    };
    if multiple {
        Kind::List(Box::new(scalar))
    } else {
        scalar
    }
}

/// Lower snake case of a Bitrix field name (`UF_CRM_1704817278` → `uf_crm_1704817278`).
pub fn column_name(field: &str) -> String {
    field.to_ascii_lowercase()
}

/// Builds the columns from the portal's field metadata (the `result` of `crm.<entity>.fields`), in the portal's
/// order. `select`: the fields the user asked for (`None` = all); ID is always kept.
pub fn build_columns(entity: Entity, meta: &Value, select: Option<&[String]>, required: &[&str]) -> Result<Vec<Column>> {
    let mapping: Declared =
        serde_json::from_str(entity.mapping()).map_err(|e| Error::Internal(format!("schemas/{}.json: {e}", entity.name())))?;
    let Value::Object(fields) = meta else {
        return Err(Error::Internal(format!("{} did not return an object", entity.fields_method())));
    };
    if let Some(sel) = select {
        let unknown: Vec<&String> = sel.iter().filter(|s| !fields.keys().any(|k| k.eq_ignore_ascii_case(s))).collect();
        if !unknown.is_empty() {
            return Err(Error::Usage(format!(
                "--select names fields the portal's {}s do not have: {}; see `b24-export schema --entity {}` for the field names",
                entity.name(),
                unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                entity.name()
            )));
        }
    }
    let wanted = |name: &str| match select {
        None => true,
        Some(sel) => name == "ID" || required.contains(&name) || sel.iter().any(|s| s.eq_ignore_ascii_case(name)),
    };
    let mut cols = Vec::new();
    for (name, info) in fields {
        if !wanted(name) {
            continue;
        }
        let info: &Map<String, Value> = match info {
            Value::Object(m) => m,
            _ => continue,
        };
        let bitrix_type = info.get("type").and_then(Value::as_str).unwrap_or("string").to_string();
        let multiple = info.get("isMultiple").and_then(Value::as_bool).unwrap_or(false);
        let user_field = name.starts_with("UF_");
        let kind = if user_field {
            kind_for_type(&bitrix_type, multiple, true)
        } else {
            declared_kind(&mapping, name).unwrap_or_else(|| kind_for_type(&bitrix_type, multiple, false))
        };
        let text = |k: &str| info.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let label = text("listLabel").or_else(|| text("formLabel")).or_else(|| text("title")).unwrap_or_else(|| name.clone());
        let items = match info.get("items") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|it| {
                    let id = match it.get("ID")? {
                        Value::String(s) => s.trim().parse().ok()?,
                        Value::Number(n) => n.as_i64()?,
                        _ => return None,
                    };
                    Some((id, it.get("VALUE").and_then(Value::as_str).unwrap_or("").to_string()))
                })
                .collect(),
            _ => Vec::new(),
        };
        cols.push(Column {
            source: name.clone(),
            name: column_name(name),
            kind,
            bitrix_type,
            label,
            multiple,
            status_type: text("statusType"),
            items,
        });
    }
    if !cols.iter().any(|c| c.source == "ID") {
        return Err(Error::Internal(format!("{} does not list ID", entity.fields_method())));
    }
    Ok(cols)
}

/// The `select` to send: masks for "everything", explicit names otherwise (multi-fields are returned only
/// when named explicitly).
pub fn request_select(cols: &[Column], all: bool) -> Vec<String> {
    if all {
        let mut s = vec!["*".to_string(), "UF_*".to_string()];
        s.extend(cols.iter().filter(|c| c.kind == Kind::Multifield).map(|c| c.source.clone()));
        s
    } else {
        cols.iter().map(|c| c.source.clone()).collect()
    }
}

/// The Arrow schema of the dataset. Its metadata records the run's columns (`b24_export.columns`, JSON) and a
/// fingerprint of them (`b24_export.schema_fingerprint`), which the Parquet writer stores in every file.
pub fn arrow_schema(cols: &[Column]) -> SchemaRef {
    let described: Vec<Value> = cols
        .iter()
        .map(|c| serde_json::json!({"column": c.name, "field": c.source, "bitrix_type": c.bitrix_type, "arrow_type": c.kind.data_type().to_string()}))
        .collect();
    let text = Value::Array(described).to_string();
    let metadata = std::collections::HashMap::from([
        ("b24_export.schema_fingerprint".to_string(), format!("{:016x}", fnv1a(text.as_bytes()))),
        ("b24_export.columns".to_string(), text),
    ]);
    Arc::new(Schema::new_with_metadata(
        cols.iter().map(|c| Field::new(&c.name, c.kind.data_type(), c.kind.nullable())).collect::<Vec<_>>(),
        metadata,
    ))
}

/// FNV-1a, 64 bit: a fingerprint that is stable across builds and platforms.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_parses_and_covers_types() {
        for entity in Entity::ALL {
            let d: Declared = serde_json::from_str(entity.mapping()).unwrap();
            assert!(d.fields.len() > 25, "{entity}");
            for f in &d.fields {
                assert!(Kind::parse_declared(&f.arrow).is_some(), "{entity}: {}: {}", f.name, f.arrow);
            }
            assert_eq!(declared_kind(&d, "ID"), Some(Kind::Int64));
        }
        let lead: Declared = serde_json::from_str(Entity::Lead.mapping()).unwrap();
        assert_eq!(declared_kind(&lead, "OPPORTUNITY"), Some(Kind::Decimal));
        let company: Declared = serde_json::from_str(Entity::Company.mapping()).unwrap();
        assert_eq!(declared_kind(&company, "REVENUE"), Some(Kind::Decimal));
        assert_eq!(declared_kind(&company, "LOGO"), Some(Kind::File));
    }

    #[test]
    fn columns_from_simulated_metadata() {
        let meta = crate::sim::data::fields_metadata();
        let cols = build_columns(Entity::Lead, &meta, None, &[]).unwrap();
        let k = |n: &str| cols.iter().find(|c| c.source == n).unwrap().kind.clone();
        assert_eq!(k("ID"), Kind::Int64);
        assert_eq!(k("DATE_CREATE"), Kind::Timestamp);
        assert_eq!(k("UF_CRM_1710000000005"), Kind::Money);
        assert_eq!(k("UF_CRM_1710000000010"), Kind::List(Box::new(Kind::Int64)));
        assert_eq!(k("PHONE"), Kind::Multifield);
        let sel = vec!["title".to_string()];
        let cols = build_columns(Entity::Lead, &meta, Some(&sel), &["DATE_CREATE"]).unwrap();
        assert_eq!(cols.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "title", "date_create"]);
        let bad = vec!["NOPE".to_string()];
        assert!(matches!(build_columns(Entity::Lead, &meta, Some(&bad), &[]), Err(Error::Usage(_))));
    }
}

/// Splits a `crm.lead.list` filter key into its operator prefix and field (`>=DATE_CREATE` → `>=`, `DATE_CREATE`).
pub fn split_filter_key(key: &str) -> (&str, &str) {
    const PREFIXES: &[&str] = &["!=%", "!%=", "!@", "!=", "!%", ">=", "<=", "=%", "%=", "!", ">", "<", "@", "%", "="];
    PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p).map(|rest| (&key[..p.len()], rest)))
        .unwrap_or(("", key))
}

/// The portal silently ignores filter keys it does not know — which would export everything. Refuses unknown
/// fields and rewrites known ones to the portal's spelling (`status_id` → `STATUS_ID`), since the portal
/// matches names exactly.
pub fn canonical_filter(filter: &Map<String, Value>, meta: &Value) -> Result<Map<String, Value>> {
    let Value::Object(fields) = meta else { return Ok(filter.clone()) };
    let mut out = Map::new();
    for (key, v) in filter {
        let (prefix, f) = split_filter_key(key);
        let Some(name) = fields.keys().find(|k| k.eq_ignore_ascii_case(f)) else {
            return Err(Error::Usage(format!(
                "--filter key {key:?}: the portal has no field {f:?} (the portal would silently ignore it and export everything)"
            )));
        };
        out.insert(format!("{prefix}{name}"), v.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filter_keys_are_checked_and_canonical() {
        let meta = crate::sim::data::fields_metadata();
        let f = json!({">=date_create": "2024-01-01", "!Status_Id": "JUNK", "@STATUS_ID": ["NEW"], "%title": "x"});
        let c = canonical_filter(f.as_object().unwrap(), &meta).unwrap();
        let keys: Vec<&str> = c.keys().map(String::as_str).collect();
        assert_eq!(keys, [">=DATE_CREATE", "!STATUS_ID", "@STATUS_ID", "%TITLE"]);
        let bad = json!({">OPORTUNITY": 1});
        assert!(matches!(canonical_filter(bad.as_object().unwrap(), &meta), Err(Error::Usage(_))));
    }
}
