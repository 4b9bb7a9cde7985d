//! `crm.item.list` / `crm.item.fields` (the successor of `crm.lead.list`) turned into what the rest of the tool
//! knows: legacy field metadata and legacy-shaped records, so that `--api item` writes the same dataset as
//! `--api lead` — same column names, types and values. The name maps are declared in `schemas/<entity>_item.json`.
//!
//! Records are rewritten from the raw JSON text of each value: a number such as `"opportunity":999.9` becomes the
//! string `"999.9"` exactly as sent, and the converter parses that decimal text — never a binary float.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::entity::Entity;
use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
struct Declared {
    entity_type_id: i64,
    /// legacy → item, in file order
    fields: Map<String, Value>,
    multifields: Vec<String>,
    types: HashMap<String, String>,
    /// Standard file fields (contact PHOTO, company LOGO): the item API gives only the file ID.
    #[serde(default)]
    files: Vec<String>,
}

/// The item ⇄ legacy names of one entity.
#[derive(Debug, Clone)]
pub struct ItemMap {
    pub entity_type_id: i64,
    to_legacy: HashMap<String, String>,
    to_item: HashMap<String, String>,
    multifields: Vec<String>,
    types: HashMap<String, String>,
    files: Vec<String>,
}

impl ItemMap {
    /// The lead map, from `schemas/lead_item.json`.
    pub fn lead() -> ItemMap {
        ItemMap::of(Entity::Lead)
    }

    /// An entity's map, from `schemas/<entity>_item.json`.
    pub fn of(entity: Entity) -> ItemMap {
        let d: Declared = serde_json::from_str(entity.item_mapping()).expect("the schemas/*_item.json files are valid");
        let mut to_legacy = HashMap::new();
        let mut to_item = HashMap::new();
        for (legacy, item) in &d.fields {
            let item = item.as_str().expect("item names are strings").to_string();
            to_legacy.insert(item.clone(), legacy.clone());
            to_item.insert(legacy.clone(), item);
        }
        ItemMap {
            entity_type_id: d.entity_type_id,
            to_legacy,
            to_item,
            multifields: d.multifields,
            types: d.types,
            files: d.files,
        }
    }

    /// The legacy name of an item field (user fields keep their `UF_*` names with `useOriginalUfNames=Y`).
    fn legacy_name<'a>(&'a self, item: &'a str) -> Option<&'a str> {
        if item.starts_with("UF_") {
            return Some(item);
        }
        self.to_legacy.get(item).map(String::as_str)
    }

    /// A standard file field (PHOTO, LOGO), which the item API gives as the file's ID alone.
    pub fn is_file_field(&self, legacy: &str) -> bool {
        self.files.iter().any(|f| f == legacy)
    }

    /// The item name of a legacy field.
    pub fn item_name<'a>(&'a self, legacy: &'a str) -> Option<&'a str> {
        if legacy.starts_with("UF_") {
            return Some(legacy);
        }
        self.to_item.get(legacy).map(String::as_str)
    }

    /// `crm.item.fields` → a `crm.lead.fields`-shaped object keyed by legacy names (fields without a legacy
    /// name are left out; the multi-value fields of `fm` are added where crm.lead.fields lists them: after the
    /// system fields, before the user fields), so columns come in the same order as with crm.lead.list.
    pub fn legacy_fields(&self, item_fields: &Value) -> Result<Value> {
        let fields = item_fields
            .get("fields")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Internal("crm.item.fields: no `fields` object in the result".into()))?;
        let mut out = Map::new();
        let multi = |out: &mut Map<String, Value>| {
            for m in &self.multifields {
                out.insert(m.clone(), json!({"type": "crm_multifield", "isRequired": false, "isReadOnly": false, "isImmutable": false, "isMultiple": true, "isDynamic": false, "title": m}));
            }
        };
        let mut placed = false;
        for (name, info) in fields {
            let Some(legacy) = self.legacy_name(name) else { continue };
            if legacy.starts_with("UF_") && !placed {
                multi(&mut out);
                placed = true;
            }
            let mut info = info.as_object().cloned().unwrap_or_default();
            let t = info.get("type").and_then(Value::as_str).unwrap_or("string").to_string();
            if !legacy.starts_with("UF_") {
                if let Some(mapped) = self.types.get(&t) {
                    info.insert("type".into(), json!(mapped));
                }
            }
            info.remove("upperName");
            out.insert(legacy.to_string(), Value::Object(info));
        }
        if !placed {
            multi(&mut out);
        }
        Ok(Value::Object(out))
    }

    /// A legacy filter (canonical legacy names, with prefixes) in item names. Fails on a field the item API
    /// does not have.
    pub fn item_filter(&self, filter: &Map<String, Value>) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for (k, v) in filter {
            let at = k.find(|c: char| c.is_ascii_alphanumeric() || c == '_').unwrap_or(k.len());
            let (prefix, name) = k.split_at(at);
            let item = self.item_name(name).ok_or_else(|| {
                Error::Usage(format!("--filter {name}: crm.item.list has no such field; use --api lead for it"))
            })?;
            out.insert(format!("{prefix}{item}"), v.clone());
        }
        Ok(out)
    }

    /// `{"items":[…]}` from `crm.item.list` → the legacy list result: a JSON array of records with legacy names
    /// and the legacy string encoding.
    pub fn legacy_records(&self, raw: &RawValue) -> std::result::Result<Box<RawValue>, String> {
        #[derive(Deserialize)]
        struct Items<'a> {
            #[serde(borrow)]
            items: Vec<HashMap<String, &'a RawValue>>,
        }
        let page: Items<'_> = serde_json::from_str(raw.get()).map_err(|e| format!("expected {{\"items\":[…]}} from crm.item.list ({e})"))?;
        let mut out: Vec<Map<String, Value>> = Vec::with_capacity(page.items.len());
        for item in page.items {
            let mut rec = Map::new();
            for (k, v) in &item {
                if k == "fm" {
                    self.split_fm(v, &mut rec)?;
                    continue;
                }
                let Some(legacy) = self.legacy_name(k) else { continue };
                let mut value = legacy_value(v)?;
                if self.files.iter().any(|f| f == legacy) {
                    // the file's ID alone: the legacy object without its URLs
                    if let Value::String(id) = &value {
                        value = json!({ "id": id.parse::<i64>().map(Value::from).unwrap_or(Value::String(id.clone())) });
                    }
                }
                rec.insert(legacy.to_string(), value);
            }
            out.push(rec);
        }
        let text = serde_json::to_string(&out).map_err(|e| e.to_string())?;
        RawValue::from_string(text).map_err(|e| e.to_string())
    }

    /// `fm` entries → `PHONE`, `EMAIL`, … arrays of `{ID, VALUE_TYPE, VALUE, TYPE_ID}` (no key when none).
    fn split_fm(&self, raw: &RawValue, rec: &mut Map<String, Value>) -> std::result::Result<(), String> {
        let entries: Vec<Map<String, Value>> = serde_json::from_str(raw.get()).map_err(|e| format!("fm: {e}"))?;
        for e in entries {
            let type_id = e.get("typeId").and_then(Value::as_str).unwrap_or_default().to_string();
            if !self.multifields.contains(&type_id) {
                continue;
            }
            let id = match e.get("id") {
                Some(Value::Number(n)) => Value::String(n.to_string()),
                Some(other) => other.clone(),
                None => Value::Null,
            };
            let entry = json!({"ID": id, "VALUE_TYPE": e.get("valueType"), "VALUE": e.get("value"), "TYPE_ID": type_id});
            match rec.entry(type_id).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(a) => a.push(entry),
                _ => unreachable!("inserted as an array"),
            }
        }
        Ok(())
    }
}

/// One item value in the legacy encoding: numbers as their exact decimal text, file objects with the legacy
/// keys, arrays element by element.
fn legacy_value(raw: &RawValue) -> std::result::Result<Value, String> {
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => Ok(Value::String(text.to_string())),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| e.to_string())?;
            items.into_iter().map(legacy_value).collect::<std::result::Result<Vec<_>, _>>().map(Value::Array)
        }
        Some(b'{') => {
            let mut o: Map<String, Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
            // a file: {id, url, urlMachine} → {id, showUrl, downloadUrl}
            if let Some(url) = o.remove("url") {
                o.insert("showUrl".into(), url);
            }
            if let Some(url) = o.remove("urlMachine") {
                o.insert("downloadUrl".into(), url);
            }
            Ok(Value::Object(o))
        }
        _ => serde_json::from_str(text).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_fields_become_legacy() {
        let map = ItemMap::lead();
        let fields = json!({"fields": {
            "id": {"type": "integer", "isMultiple": false, "upperName": "ID"},
            "opened": {"type": "boolean", "isMultiple": false, "upperName": "OPENED"},
            "companyId": {"type": "crm_company", "isMultiple": false, "upperName": "COMPANY_ID"},
            "stageId": {"type": "crm_status", "statusType": "STATUS", "isMultiple": false, "upperName": "STAGE_ID"},
            "webformId": {"type": "integer", "isMultiple": false, "upperName": "WEBFORM_ID"},
            "UF_CRM_1": {"type": "boolean", "isMultiple": false, "upperName": "UF_CRM_1"}
        }});
        let legacy = map.legacy_fields(&fields).unwrap();
        assert_eq!(legacy["OPENED"]["type"], "char");
        assert_eq!(legacy["UF_CRM_1"]["type"], "boolean", "user field types are kept");
        assert_eq!(legacy["STATUS_ID"]["statusType"], "STATUS");
        assert!(legacy.get("webformId").is_none() && legacy.get("WEBFORM_ID").is_none(), "item-only fields are left out");
        assert_eq!(legacy["PHONE"]["type"], "crm_multifield");
        let order: Vec<&String> = legacy.as_object().unwrap().keys().collect();
        let phone = order.iter().position(|k| *k == "PHONE").unwrap();
        assert!(phone > order.iter().position(|k| *k == "STATUS_ID").unwrap() && phone < order.iter().position(|k| *k == "UF_CRM_1").unwrap());

        let page = r#"{"items":[{"id":250,"opportunity":999.90,"companyId":0,"stageId":"NEW","opened":"Y","webformId":3,
            "UF_CRM_1":"N","UF_CRM_2":[101,102],"UF_CRM_3":{"id":7,"url":"/show?fileId=7","urlMachine":"/dl?auth=x&fileId=7"},
            "fm":[{"id":11,"valueType":"WORK","value":"+1","typeId":"PHONE"},{"id":12,"valueType":"HOME","value":"a@b","typeId":"EMAIL"},
                  {"id":13,"valueType":"MOBILE","value":"+2","typeId":"PHONE"}]}]}"#;
        let raw = RawValue::from_string(page.to_string()).unwrap();
        let out: Vec<Map<String, Value>> = serde_json::from_str(map.legacy_records(&raw).unwrap().get()).unwrap();
        let r = &out[0];
        assert_eq!(r["ID"], "250");
        assert_eq!(r["OPPORTUNITY"], "999.90", "the decimal text as sent, not a float");
        assert_eq!(r["COMPANY_ID"], "0", "as the legacy list says it");
        assert_eq!(r["STATUS_ID"], "NEW");
        assert!(r.get("webformId").is_none());
        assert_eq!(r["UF_CRM_2"], json!(["101", "102"]));
        assert_eq!(r["UF_CRM_3"]["showUrl"], "/show?fileId=7");
        assert_eq!(r["PHONE"].as_array().unwrap().len(), 2);
        assert_eq!(r["EMAIL"][0], json!({"ID": "12", "VALUE_TYPE": "HOME", "VALUE": "a@b", "TYPE_ID": "EMAIL"}));

        let mut f = Map::new();
        f.insert(">=DATE_MODIFY".into(), json!("2024-01-01"));
        f.insert("!STATUS_ID".into(), json!("JUNK"));
        let item = map.item_filter(&f).unwrap();
        assert!(item.contains_key(">=updatedTime") && item.contains_key("!stageId"));
        f.insert("ADDRESS_CITY".into(), json!("x"));
        assert!(map.item_filter(&f).is_err());
        for e in Entity::ALL {
            assert_eq!(ItemMap::of(e).entity_type_id, e.entity_type_id());
        }
        assert_eq!(ItemMap::of(Entity::Deal).item_name("STAGE_ID"), Some("stageId"));
        let photo = RawValue::from_string(r#"{"items":[{"id":3,"photo":77,"typeId":"CLIENT"}]}"#.to_string()).unwrap();
        let out: Vec<Map<String, Value>> = serde_json::from_str(ItemMap::of(Entity::Contact).legacy_records(&photo).unwrap().get()).unwrap();
        assert_eq!(out[0]["PHOTO"], json!({"id": 77}));
        assert_eq!(out[0]["TYPE_ID"], "CLIENT");
    }
}
