//! Request parameters the way Bitrix reads them: query string ∪ body, PHP bracket syntax
//! (`filter[>ID]=5`, `select[]=ID`), JSON bodies, malformed JSON read as empty (`bitrix24-api.md` §1).

use serde_json::{Map, Value};

/// Parses an `application/x-www-form-urlencoded` string with PHP `parse_str` semantics.
pub fn parse_php_query(qs: &str) -> Map<String, Value> {
    let mut root = Map::new();
    for (k, v) in url::form_urlencoded::parse(qs.as_bytes()) {
        insert_php(&mut root, &k, Value::String(v.into_owned()));
    }
    root
}

/// Inserts `key` (e.g. `filter[>ID]`, `select[]`) into `root`.
fn insert_php(root: &mut Map<String, Value>, key: &str, value: Value) {
    let (base, rest) = match key.find('[') {
        Some(i) if key.ends_with(']') && i > 0 => (&key[..i], &key[i..]),
        _ => {
            root.insert(key.to_string(), value);
            return;
        }
    };
    let mut segs: Vec<&str> = Vec::new();
    let mut s = rest;
    while let Some(stripped) = s.strip_prefix('[') {
        match stripped.find(']') {
            Some(end) => {
                segs.push(&stripped[..end]);
                s = &stripped[end + 1..];
            }
            None => break,
        }
    }
    let mut cur = root.entry(base.to_string()).or_insert_with(|| Value::Object(Map::new()));
    for (i, seg) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("object");
        let k = if seg.is_empty() {
            let next = obj.keys().filter_map(|k| k.parse::<i64>().ok()).max().map(|m| m + 1).unwrap_or(0);
            next.to_string()
        } else {
            seg.to_string()
        };
        if i + 1 == segs.len() {
            obj.insert(k, value);
            return;
        }
        cur = obj.entry(k).or_insert_with(|| Value::Object(Map::new()));
    }
}

/// PHP arrays with keys 0..n are lists: turn such objects into JSON arrays, recursively.
pub fn normalize(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let sequential = !m.is_empty() && m.keys().enumerate().all(|(i, k)| k == &i.to_string());
            if sequential {
                Value::Array(m.into_iter().map(|(_, v)| normalize(v)).collect())
            } else {
                Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect())
            }
        }
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        other => other,
    }
}

/// Merges the query string and the body; body keys win. Invalid JSON silently becomes `{}`.
pub fn merge_request(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> Map<String, Value> {
    let mut params = query.map(parse_php_query).unwrap_or_default();
    if !body.is_empty() {
        let body_params = if content_type.is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json")) {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            }
        } else {
            parse_php_query(&String::from_utf8_lossy(body))
        };
        for (k, v) in body_params {
            params.insert(k, v);
        }
    }
    params
}

/// Case-insensitive lookup of a legacy CRM array parameter: `select|SELECT|Select|arSelect`.
pub fn param<'a>(params: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let ar = format!("ar{name}");
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name) || k.eq_ignore_ascii_case(&ar))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn php_brackets() {
        let m = parse_php_query("start=-1&order%5BID%5D=ASC&filter%5B%3EID%5D=5&select[]=ID&select[]=UF_*&filter[@STATUS_ID][]=NEW&filter[@STATUS_ID][]=JUNK");
        let v = normalize(Value::Object(m));
        assert_eq!(
            v,
            json!({"start":"-1","order":{"ID":"ASC"},"filter":{">ID":"5","@STATUS_ID":["NEW","JUNK"]},"select":["ID","UF_*"]})
        );
    }

    #[test]
    fn body_overrides_query_and_bad_json_is_empty() {
        let m = merge_request(Some("start=50&x=1"), Some("application/json"), br#"{"start":-1}"#);
        assert_eq!(m.get("start"), Some(&json!(-1)));
        assert_eq!(m.get("x"), Some(&json!("1")));
        let m = merge_request(None, Some("application/json"), b"{not json");
        assert!(m.is_empty());
        assert!(param(&m, "select").is_none());
        let m = merge_request(Some("arSelect[]=ID"), None, b"");
        assert_eq!(normalize(param(&m, "select").unwrap().clone()), json!(["ID"]));
    }
}
