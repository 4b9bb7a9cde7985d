//! PHP `http_build_query`-style encoding of parameters, as `batch` commands need them
//! (`filter[>ID]=5&select[0]=ID`, `bitrix24-api.md` §1 and §6).

use serde_json::Value;

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn push(out: &mut Vec<String>, key: &str, v: &Value) {
    match v {
        Value::Null => out.push(format!("{}=", enc(key))),
        Value::Bool(b) => out.push(format!("{}={}", enc(key), if *b { "1" } else { "0" })),
        Value::Number(n) => out.push(format!("{}={}", enc(key), enc(&n.to_string()))),
        Value::String(s) => out.push(format!("{}={}", enc(key), enc(s))),
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                push(out, &format!("{key}[{i}]"), item);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                push(out, &format!("{key}[{k}]"), item);
            }
        }
    }
}

/// Encodes a parameter object as a query string.
pub fn encode(params: &serde_json::Map<String, Value>) -> String {
    let mut out = Vec::new();
    for (k, v) in params {
        push(&mut out, k, v);
    }
    out.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn brackets_and_escaping() {
        let p = json!({"start": -1, "order": {"ID": "ASC"}, "filter": {">ID": 5, "%TITLE": "a&b c", "@STATUS_ID": ["NEW", "JUNK"]}, "select": ["*", "UF_*"]});
        let q = encode(p.as_object().unwrap());
        assert_eq!(
            q,
            "start=-1&order%5BID%5D=ASC&filter%5B%3EID%5D=5&filter%5B%25TITLE%5D=a%26b+c&filter%5B%40STATUS_ID%5D%5B0%5D=NEW&filter%5B%40STATUS_ID%5D%5B1%5D=JUNK&select%5B0%5D=*&select%5B1%5D=UF_*"
        );
        // and the simulated portal reads it back to the same structure
        let back = crate::sim::params::normalize(Value::Object(crate::sim::params::parse_php_query(&q)));
        assert_eq!(back["filter"]["%TITLE"], json!("a&b c"));
        assert_eq!(back["filter"]["@STATUS_ID"], json!(["NEW", "JUNK"]));
        assert_eq!(back["select"], json!(["*", "UF_*"]));
    }
}
