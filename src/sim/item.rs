//! `crm.item.fields` and `crm.item.list` for leads (entityTypeId 1), served from the same data as the legacy
//! methods (`shared/bitrix24-api.md` §10): camelCase names (the documented legacy → item map), native JSON types
//! (`"id":250`, `"opportunity":999.9`, ids of users and enumeration items as integers), `"Y"`/`"N"` flags also
//! for boolean user fields, `null` for empty values, multi-value fields only under `fm` with `select ["*"]`, UF
//! names as `ufCrm_<digits>` unless `useOriginalUfNames=Y`, file UFs as `{id, url, urlMachine}`, the
//! `{"result":{"items":[…]}}` envelope, and 400 `INVALID_ARG_VALUE` for a filter or order on an unknown field.
//! The simulator keeps its own copy of the name map: it models the portal and shares no code with the client.

use serde_json::{json, Map, Value};

use super::data::{self, FType, FieldDef, Truth};
use super::entities;
use crate::entity::Entity;
use super::ApiErr;
use axum::http::StatusCode;

/// Legacy name → item name for the lead's system fields (`shared/bitrix24-api.md` §10). ADDRESS_* have no item
/// field.
const NAMES: &[(&str, &str)] = &[
    ("ID", "id"),
    ("TITLE", "title"),
    ("HONORIFIC", "honorific"),
    ("NAME", "name"),
    ("SECOND_NAME", "secondName"),
    ("LAST_NAME", "lastName"),
    ("BIRTHDATE", "birthdate"),
    ("COMPANY_TITLE", "companyTitle"),
    ("COMPANY_ID", "companyId"),
    ("CONTACT_ID", "contactId"),
    ("CONTACT_IDS", "contactIds"),
    ("IS_RETURN_CUSTOMER", "isReturnCustomer"),
    ("SOURCE_ID", "sourceId"),
    ("SOURCE_DESCRIPTION", "sourceDescription"),
    ("STATUS_ID", "stageId"),
    ("STATUS_DESCRIPTION", "statusDescription"),
    ("STATUS_SEMANTIC_ID", "stageSemanticId"),
    ("POST", "post"),
    ("COMMENTS", "comments"),
    ("CURRENCY_ID", "currencyId"),
    ("OPPORTUNITY", "opportunity"),
    ("IS_MANUAL_OPPORTUNITY", "isManualOpportunity"),
    ("HAS_PHONE", "hasPhone"),
    ("HAS_EMAIL", "hasEmail"),
    ("HAS_IMOL", "hasImol"),
    ("OPENED", "opened"),
    ("ASSIGNED_BY_ID", "assignedById"),
    ("CREATED_BY_ID", "createdBy"),
    ("MODIFY_BY_ID", "updatedBy"),
    ("MOVED_BY_ID", "movedBy"),
    ("DATE_CREATE", "createdTime"),
    ("DATE_MODIFY", "updatedTime"),
    ("DATE_CLOSED", "dateClosed"),
    ("MOVED_TIME", "movedTime"),
    ("ORIGINATOR_ID", "originatorId"),
    ("ORIGIN_ID", "originId"),
    ("UTM_SOURCE", "utmSource"),
    ("UTM_MEDIUM", "utmMedium"),
    ("UTM_CAMPAIGN", "utmCampaign"),
    ("UTM_CONTENT", "utmContent"),
    ("UTM_TERM", "utmTerm"),
    ("LAST_ACTIVITY_BY", "lastActivityBy"),
    ("LAST_ACTIVITY_TIME", "lastActivityTime"),
];

/// `UF_CRM_1704817278` → `ufCrm_1704817278` (the "simplified" conversion of lead UF names, §10).
fn camel_uf(name: &str) -> String {
    format!("ufCrm_{}", name.trim_start_matches("UF_CRM_"))
}

fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Deals, contacts and companies: the names that do not follow the plain camelCase of the legacy name.
const OTHER_NAMES: &[(&str, &str)] = &[
    ("CREATED_BY_ID", "createdBy"),
    ("MODIFY_BY_ID", "updatedBy"),
    ("MOVED_BY_ID", "movedBy"),
    ("DATE_CREATE", "createdTime"),
    ("DATE_MODIFY", "updatedTime"),
    ("COMPANY_TYPE", "typeId"),
    ("BEGINDATE", "begindate"),
    ("CLOSEDATE", "closedate"),
];

/// Legacy fields of deals, contacts and companies that the item API does not have under a documented name (the
/// company's multiple CONTACT_ID, which crm.company.list does not return either).
const NO_ITEM_FIELD: &[(Entity, &str)] = &[(Entity::Company, "CONTACT_ID")];

fn lower_camel(upper: &str) -> String {
    let mut out = String::new();
    for (i, part) in upper.split('_').enumerate() {
        let lower = part.to_ascii_lowercase();
        if i == 0 {
            out.push_str(&lower);
        } else {
            let mut cs = lower.chars();
            if let Some(c) = cs.next() {
                out.push(c.to_ascii_uppercase());
                out.extend(cs);
            }
        }
    }
    out
}

/// The item name of a field, `None` when the item API does not have it.
fn item_name(entity: Entity, def: &FieldDef, original_uf: bool) -> Option<String> {
    if data::is_user_field(def.name) {
        return Some(if original_uf { def.name.to_string() } else { camel_uf(def.name) });
    }
    if entity == Entity::Lead {
        return NAMES.iter().find(|(l, _)| *l == def.name).map(|(_, c)| c.to_string());
    }
    if NO_ITEM_FIELD.contains(&(entity, def.name)) {
        return None;
    }
    Some(OTHER_NAMES.iter().find(|(l, _)| *l == def.name).map(|(_, c)| c.to_string()).unwrap_or_else(|| lower_camel(def.name)))
}

/// A field named the item way (camelCase or its UPPER_CASE form; UF names in either spelling).
fn field_of(entity: Entity, name: &str) -> Option<&'static FieldDef> {
    entities::fields(entity).iter().filter(|d| d.ftype != FType::Multifield).find(|d| {
        let Some(camel) = item_name(entity, d, false) else { return false };
        camel == name || upper_snake(&camel) == name || (data::is_user_field(d.name) && d.name == name)
    })
}

fn wire_type(def: &FieldDef) -> &'static str {
    match def.ftype {
        FType::Char => "boolean",
        FType::Str if matches!(def.name, "COMMENTS" | "SOURCE_DESCRIPTION" | "STATUS_DESCRIPTION") => "text",
        _ => def.ftype.wire_name(),
    }
}

/// `crm.item.fields` of an entity.
pub fn fields(entity: Entity, original_uf: bool) -> Value {
    let legacy = data::fields_metadata_of(entities::fields(entity));
    let mut out = Map::new();
    for def in entities::fields(entity) {
        let Some(name) = item_name(entity, def, original_uf) else { continue };
        if def.ftype == FType::Multifield {
            continue;
        }
        let mut o = legacy[def.name].as_object().cloned().unwrap_or_default();
        o.insert("type".into(), json!(wire_type(def)));
        let upper = if data::is_user_field(def.name) { def.name.to_string() } else { upper_snake(&name) };
        o.insert("upperName".into(), json!(upper));
        out.insert(name, Value::Object(o));
    }
    json!({ "fields": out })
}

fn as_int(v: &Value) -> Value {
    match v {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::String(s) => s.parse::<i64>().map(|n| json!(n)).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

fn as_float(v: &Value) -> Value {
    match v {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::String(s) => s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

/// One value the item way, from its legacy encoding.
fn item_value(def: &FieldDef, legacy: Option<Value>) -> Value {
    let Some(v) = legacy else {
        return if def.multiple { json!([]) } else { Value::Null };
    };
    let one = |v: &Value| -> Value {
        match def.ftype {
            // companies and contacts: the generator's "0" (no company, as crm.lead.list lists it) is 0 here too
            FType::Integer | FType::User | FType::UfInteger | FType::UfEmployee | FType::UfEnumeration | FType::CrmCompany
            | FType::CrmContact | FType::CrmLead | FType::CrmQuote | FType::CrmCategory => as_int(v),
            FType::Double | FType::UfDouble => as_float(v),
            FType::UfBoolean => match v {
                Value::Bool(b) => json!(if *b { "Y" } else { "N" }),
                Value::String(s) if s == "1" => json!("Y"),
                Value::String(s) if s == "0" => json!("N"),
                other => other.clone(),
            },
            // a standard file field (PHOTO, LOGO) is just the file's ID in the item API
            FType::File => match v {
                Value::Object(o) => o.get("id").cloned().unwrap_or(Value::Null),
                other => other.clone(),
            },
            FType::UfFile => match v {
                Value::Object(o) => json!({"id": o.get("id"), "url": o.get("showUrl"), "urlMachine": o.get("downloadUrl")}),
                other => other.clone(),
            },
            _ => match v {
                Value::String(s) if s.is_empty() && matches!(def.ftype, FType::Date | FType::DateTime | FType::UfDate | FType::UfDateTime) => {
                    Value::Null
                }
                other => other.clone(),
            },
        }
    };
    if def.multiple {
        return match v {
            Value::Array(items) => Value::Array(items.iter().map(one).collect()),
            _ => json!([]), // false / "" for an empty multiple UF
        };
    }
    one(&v)
}

/// A record the way `crm.item.list` returns it with `select ["*"]`.
pub fn render(entity: Entity, truth: &[Truth], id: i64, enc: &data::Encoding, original_uf: bool) -> Map<String, Value> {
    let mut m = Map::new();
    let mut fm = Vec::new();
    for (def, t) in entities::fields(entity).iter().zip(truth) {
        if def.ftype == FType::Multifield {
            if let Truth::Multi(ms) = t {
                for x in ms {
                    fm.push(json!({"id": x.id, "valueType": x.value_type, "value": x.value, "typeId": x.type_id}));
                }
            }
            continue;
        }
        let Some(name) = item_name(entity, def, original_uf) else { continue };
        let legacy = if def.listed { data::render_value(def, t, id, enc) } else { None };
        m.insert(name, item_value(def, legacy));
    }
    if entity != Entity::Deal {
        m.insert("fm".into(), Value::Array(fm));
    }
    m.insert("entityTypeId".into(), json!(entity.entity_type_id()));
    m
}

/// Translates an item filter or order to the legacy names the simulator's query engine knows.
pub fn legacy_keys(entity: Entity, params: &Map<String, Value>, what: &str) -> Result<Map<String, Value>, ApiErr> {
    let mut out = Map::new();
    for (k, v) in params {
        let (op, name) = super::filter::split_key(k);
        let prefix = &k[..k.len() - name.len()];
        let def = field_of(entity, name).ok_or_else(|| {
            ApiErr(StatusCode::BAD_REQUEST, "INVALID_ARG_VALUE", format!("Invalid {what} field: `{name}`"))
        })?;
        let _ = op;
        out.insert(format!("{prefix}{}", def.name), v.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        assert_eq!(field_of(Entity::Lead, "stageId").unwrap().name, "STATUS_ID");
        assert_eq!(field_of(Entity::Lead, "STAGE_ID").unwrap().name, "STATUS_ID");
        assert_eq!(field_of(Entity::Lead, "updatedTime").unwrap().name, "DATE_MODIFY");
        assert_eq!(field_of(Entity::Lead, "ID").unwrap().name, "ID");
        assert_eq!(field_of(Entity::Lead, "ufCrm_1704817278").unwrap().name, "UF_CRM_1704817278");
        assert_eq!(field_of(Entity::Lead, "UF_CRM_1704817278").unwrap().name, "UF_CRM_1704817278");
        assert!(field_of(Entity::Lead, "ADDRESS_CITY").is_none() && field_of(Entity::Lead, "nope").is_none());
        let mut f = Map::new();
        f.insert(">=updatedTime".into(), json!("2024-01-01"));
        f.insert("!stageId".into(), json!("JUNK"));
        let l = legacy_keys(Entity::Lead, &f, "filter").unwrap();
        assert!(l.contains_key(">=DATE_MODIFY") && l.contains_key("!STATUS_ID"));
        f.insert("bogus".into(), json!(1));
        assert_eq!(legacy_keys(Entity::Lead, &f, "filter").unwrap_err().1, "INVALID_ARG_VALUE");
        assert_eq!(field_of(Entity::Deal, "stageId").unwrap().name, "STAGE_ID");
        assert_eq!(field_of(Entity::Deal, "createdBy").unwrap().name, "CREATED_BY_ID");
        assert_eq!(field_of(Entity::Company, "typeId").unwrap().name, "COMPANY_TYPE");
        assert_eq!(lower_camel("IS_REPEATED_APPROACH"), "isRepeatedApproach");
    }
}
