//! Legacy `crm.lead.list` filters and orders, evaluated on the typed truth of a lead (`bitrix24-api.md` §2).

use std::cmp::Ordering;

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use serde_json::{Map, Value};

use super::data::{FType, FieldDef, Truth};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    NotEq,
    Gt,
    Ge,
    Lt,
    Le,
    In,
    NotIn,
    Like,        // %v%
    LikeOwn,     // =% / %= : caller's wildcards
    NotLike,     // !%
    NotLikeOwn,  // !=% / !%=
}

/// Splits `>=DATE_CREATE` into its operator and field name. Longest prefix first.
pub fn split_key(key: &str) -> (Op, &str) {
    const PREFIXES: &[(&str, Op)] = &[
        ("!=%", Op::NotLikeOwn),
        ("!%=", Op::NotLikeOwn),
        ("!@", Op::NotIn),
        ("!=", Op::NotEq),
        ("!%", Op::NotLike),
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("=%", Op::LikeOwn),
        ("%=", Op::LikeOwn),
        ("!", Op::NotEq),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("@", Op::In),
        ("%", Op::Like),
        ("=", Op::Eq),
    ];
    for (p, op) in PREFIXES {
        if let Some(rest) = key.strip_prefix(p) {
            return (*op, rest);
        }
    }
    (Op::Eq, key)
}

#[derive(Debug, Clone)]
pub struct Cond {
    pub op: Op,
    pub field_index: usize,
    pub def: &'static FieldDef,
    pub value: Value,
}

/// Parses a filter object. Unknown fields are silently dropped, as the portal does.
pub fn parse_filter(fields: &'static [FieldDef], filter: &Map<String, Value>) -> Vec<Cond> {
    let mut out = Vec::new();
    for (k, v) in filter {
        let (mut op, name) = split_key(k);
        let Some(field_index) = fields.iter().position(|f| f.name == name) else { continue };
        let def = &fields[field_index];
        if matches!(op, Op::Like | Op::LikeOwn) && matches!(def.ftype, FType::CrmStatus(_) | FType::CrmCompany | FType::CrmContact) {
            op = Op::Eq; // LIKE on crm_status/company/contact is rewritten to equality
        }
        out.push(Cond { op, field_index, def, value: v.clone() });
    }
    out
}

/// Lenient date parsing like PHP `strtotime` for the forms the docs show; no offset = portal time zone.
pub fn parse_instant(s: &str, offset_secs: i32) -> Option<i64> {
    let s = s.trim();
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp());
    }
    let off = FixedOffset::east_opt(offset_secs)?;
    for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            return off.from_local_datetime(&n).single().map(|d| d.timestamp());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return off.from_local_datetime(&d.and_hms_opt(0, 0, 0)?).single().map(|d| d.timestamp());
    }
    for fmt in ["%d.%m.%Y %H:%M:%S", "%d.%m.%Y"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            return off.from_local_datetime(&n).single().map(|d| d.timestamp());
        }
        if let Ok(d) = NaiveDate::parse_from_str(s, fmt) {
            return off.from_local_datetime(&d.and_hms_opt(0, 0, 0)?).single().map(|d| d.timestamp());
        }
    }
    None
}

/// A lead value reduced to something comparable.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum Key {
    Null,
    Num(f64),
    Text(String),
}

fn is_numeric(ft: FType) -> bool {
    use FType::*;
    matches!(ft, Integer | User | CrmCompany | CrmContact | CrmLead | CrmQuote | CrmCategory | Double | UfInteger | UfDouble | UfEmployee | UfEnumeration)
}

pub fn truth_key(t: &Truth) -> Key {
    match t {
        Truth::Null => Key::Null,
        Truth::Str(s) => Key::Text(s.clone()),
        Truth::Int(i) => Key::Num(*i as f64),
        Truth::Cents(c) => Key::Num(*c as f64 / 100.0),
        Truth::Float(x) => Key::Num(*x),
        Truth::Bool(b) => Key::Num(if *b { 1.0 } else { 0.0 }),
        Truth::DateTime(s) => Key::Num(*s as f64),
        Truth::Date(d) => Key::Num(*d as f64 * 86_400.0),
        Truth::Money { cents, currency } => Key::Text(format!("{}|{currency}", *cents as f64 / 100.0)),
        Truth::File { id } => Key::Num(*id as f64),
        Truth::Multi(_) | Truth::List(_) => Key::Null,
    }
}

fn value_key(ft: FType, v: &Value, offset_secs: i32) -> Key {
    use FType::*;
    let text = match v {
        Value::Null => return Key::Null,
        Value::Bool(b) => return Key::Num(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => return Key::Num(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match ft {
        Date | DateTime | UfDate | UfDateTime => {
            if text.is_empty() {
                Key::Null
            } else {
                parse_instant(&text, offset_secs).map(|s| Key::Num(s as f64)).unwrap_or(Key::Null)
            }
        }
        Char | UfBoolean => Key::Num(match text.as_str() {
            "Y" | "1" | "true" => 1.0,
            _ => 0.0,
        }),
        ft if is_numeric(ft) => {
            if text.is_empty() {
                Key::Null
            } else {
                Key::Num(text.trim().parse::<f64>().unwrap_or(0.0))
            }
        }
        _ => {
            if text.is_empty() {
                Key::Null
            } else {
                Key::Text(text)
            }
        }
    }
}

/// SQL LIKE with `%` and `_`, case-insensitive (MySQL's default collation).
fn like(hay: &str, pattern: &str) -> bool {
    fn go(h: &[char], p: &[char]) -> bool {
        match p.first() {
            None => h.is_empty(),
            Some('%') => (0..=h.len()).any(|i| go(&h[i..], &p[1..])),
            Some('_') => !h.is_empty() && go(&h[1..], &p[1..]),
            Some(c) => h.first() == Some(c) && go(&h[1..], &p[1..]),
        }
    }
    let h: Vec<char> = hay.to_lowercase().chars().collect();
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    go(&h, &p)
}

fn texts(t: &Truth) -> Vec<String> {
    match t {
        Truth::Multi(ms) => ms.iter().map(|m| m.value.clone()).collect(),
        Truth::List(items) => items.iter().filter_map(|i| match truth_key(i) {
            Key::Text(s) => Some(s),
            Key::Num(n) => Some(n.to_string()),
            Key::Null => None,
        }).collect(),
        other => match truth_key(other) {
            Key::Text(s) => vec![s],
            Key::Num(n) if matches!(other, Truth::Int(_)) => vec![(n as i64).to_string()],
            Key::Num(n) => vec![n.to_string()],
            Key::Null => vec![],
        },
    }
}

fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(m) => m.values().cloned().collect(),
        other => vec![other.clone()],
    }
}

/// Does the lead (its truth, in FIELDS order) satisfy one condition?
pub fn matches(cond: &Cond, truth: &[Truth], offset_secs: i32) -> bool {
    let t = &truth[cond.field_index];
    let ft = cond.def.ftype;
    if ft == FType::Multifield || matches!(t, Truth::List(_)) {
        let vals = texts(t);
        let needles: Vec<String> = as_list(&cond.value).iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
        let hit = vals.iter().any(|h| needles.iter().any(|n| if ft == FType::Multifield { like(h, &format!("%{n}%")) } else { h == n }));
        return match cond.op {
            Op::NotEq | Op::NotIn | Op::NotLike | Op::NotLikeOwn => !hit,
            _ => hit,
        };
    }
    let lead = truth_key(t);
    let one = |v: &Value| value_key(ft, v, offset_secs);
    let cmp = |v: &Value| -> Option<Ordering> {
        match (&lead, one(v)) {
            (Key::Null, _) | (_, Key::Null) => None,
            (a, b) => a.partial_cmp(&b),
        }
    };
    let eq = |v: &Value| match (&lead, one(v)) {
        (Key::Null, Key::Null) => true,
        (Key::Num(a), Key::Num(b)) => a == &b,
        (Key::Text(a), Key::Text(b)) => a.eq_ignore_ascii_case(&b),
        _ => false,
    };
    let lead_text = || match &lead {
        Key::Text(s) => s.clone(),
        Key::Num(n) => n.to_string(),
        Key::Null => String::new(),
    };
    let pat = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    match cond.op {
        Op::Eq | Op::In => as_list(&cond.value).iter().any(eq),
        Op::NotEq | Op::NotIn => !as_list(&cond.value).iter().any(eq),
        Op::Gt => cmp(&cond.value) == Some(Ordering::Greater),
        Op::Ge => matches!(cmp(&cond.value), Some(Ordering::Greater | Ordering::Equal)),
        Op::Lt => cmp(&cond.value) == Some(Ordering::Less),
        Op::Le => matches!(cmp(&cond.value), Some(Ordering::Less | Ordering::Equal)),
        Op::Like => lead != Key::Null && like(&lead_text(), &format!("%{}%", pat(&cond.value))),
        Op::LikeOwn => lead != Key::Null && like(&lead_text(), &pat(&cond.value)),
        Op::NotLike => !(lead != Key::Null && like(&lead_text(), &format!("%{}%", pat(&cond.value)))),
        Op::NotLikeOwn => !(lead != Key::Null && like(&lead_text(), &pat(&cond.value))),
    }
}

/// The inclusive ID bounds implied by the ID conditions of a filter (a fast path over the sorted ID list).
pub fn id_bounds(conds: &[Cond]) -> (i64, i64) {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for c in conds.iter().filter(|c| c.def.name == "ID") {
        let n = match value_key(FType::Integer, &c.value, 0) {
            Key::Num(n) => n as i64,
            _ => continue,
        };
        match c.op {
            Op::Gt => lo = lo.max(n.saturating_add(1)),
            Op::Ge => lo = lo.max(n),
            Op::Lt => hi = hi.min(n.saturating_sub(1)),
            Op::Le => hi = hi.min(n),
            Op::Eq if !c.value.is_array() && !c.value.is_object() => {
                lo = lo.max(n);
                hi = hi.min(n);
            }
            _ => {}
        }
    }
    (lo, hi)
}

/// A parsed `order` object: (field index, ascending). Anything but `ASC` is `DESC`; unknown fields ignored.
pub fn parse_order(fields: &[FieldDef], order: &Map<String, Value>) -> Vec<(usize, bool)> {
    order
        .iter()
        .filter_map(|(k, v)| {
            let idx = fields.iter().position(|f| f.name.eq_ignore_ascii_case(k))?;
            let asc = v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("ASC"));
            Some((idx, asc))
        })
        .collect()
}

/// Status dictionary SORT, used when ordering by STATUS_ID (§2).
pub fn status_sort(status: &str) -> i64 {
    match status {
        "NEW" => 10,
        "IN_PROCESS" => 20,
        "PROCESSED" => 30,
        "CONVERTED" => 40,
        "JUNK" => 50,
        _ => 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefixes() {
        assert_eq!(split_key(">=DATE_CREATE"), (Op::Ge, "DATE_CREATE"));
        assert_eq!(split_key("!STATUS_ID"), (Op::NotEq, "STATUS_ID"));
        assert_eq!(split_key("!@STATUS_ID"), (Op::NotIn, "STATUS_ID"));
        assert_eq!(split_key("%TITLE"), (Op::Like, "TITLE"));
        assert_eq!(split_key("TITLE"), (Op::Eq, "TITLE"));
    }

    #[test]
    fn unknown_fields_are_dropped_and_id_bounds_found() {
        let f = json!({">ID": 10, "<ID": "20", "NO_SUCH": 1});
        let conds = parse_filter(super::super::data::FIELDS, f.as_object().unwrap());
        assert_eq!(conds.len(), 2);
        assert_eq!(id_bounds(&conds), (11, 19));
    }

    #[test]
    fn dates_lenient() {
        assert_eq!(parse_instant("2024-01-01", 7200), Some(1_704_060_000));
        assert_eq!(parse_instant("2024-01-01T00:00:00+00:00", 7200), Some(1_704_067_200));
        assert!(like("Website order #5", "%ORDER%"));
        assert!(!like("abc", "%x%"));
    }
}
