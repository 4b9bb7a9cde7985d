//! Labels and dictionaries an analyst can join: `_dict/fields`, `_dict/enum_items` and `_dict/statuses` (per
//! dataset), `_dict/users`, built from `crm.<entity>.fields`, `crm.status.list`, `crm.category.list` and
//! `user.get`.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde_json::{json, Value};

use crate::client::{is_transient_code, php_query, PortalClient};
use crate::error::{PortalError, Result};
use crate::schema::Column;

/// One row of a status dictionary (`crm.status.list`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub entity_id: String,
    pub status_id: String,
    pub name: String,
    pub sort: Option<i64>,
    pub semantics: Option<String>,
    /// Deal stages: the funnel (`crm.category.list`) the stage belongs to, 0 for the default funnel.
    #[serde(default)]
    pub category_id: Option<i64>,
}

/// The `crm.status.list` ENTITY_ID of a deal funnel's stages: `DEAL_STAGE` for the default funnel (0),
/// `DEAL_STAGE_<id>` for the others (shared/bitrix24-api.md §11).
pub fn deal_stage_entity(category: i64) -> String {
    if category == 0 { "DEAL_STAGE".into() } else { format!("DEAL_STAGE_{category}") }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn status_rows(entity: &str, result: Value, out: &mut Vec<Status>) -> usize {
    let rows = match result {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    for r in &rows {
        let entity_id = text(r.get("ENTITY_ID")).unwrap_or_else(|| entity.to_string());
        // the funnel of a deal stage: the ENTITY_ID names it (`DEAL_STAGE_<id>`; a docs sample shows a CATEGORY_ID
        // that disagrees with it), CATEGORY_ID only when the name does not
        let category_id = if entity_id == "DEAL_STAGE" {
            Some(0)
        } else {
            entity_id
                .strip_prefix("DEAL_STAGE_")
                .and_then(|c| c.parse().ok())
                .or_else(|| text(r.get("CATEGORY_ID")).and_then(|c| c.trim().parse().ok()))
        };
        out.push(Status {
            category_id,
            entity_id,
            status_id: text(r.get("STATUS_ID")).unwrap_or_default(),
            name: text(r.get("NAME")).unwrap_or_default(),
            sort: text(r.get("SORT")).and_then(|s| s.trim().parse().ok()),
            semantics: text(r.get("SEMANTICS")).filter(|s| !s.is_empty()),
        });
    }
    rows.len()
}

/// Fetches the status dictionaries the columns refer to (`statusType` of `crm_status` fields): one `batch`
/// request for all of them, and more calls only for a dictionary longer than a page.
pub async fn fetch_statuses(client: &PortalClient, cols: &[Column]) -> Result<Vec<Status>, PortalError> {
    Ok(fetch_dictionaries(client, cols, false).await?.0)
}

/// A `user.get` error that means "this webhook may not list users", not a failure of the run.
fn users_not_allowed(code: &str) -> bool {
    matches!(code, "ACCESS_DENIED" | "ERROR_METHOD_NOT_FOUND" | "insufficient_scope" | "user_access_error")
}

/// The status dictionaries and (with `users`) the first page of `user.get`, in one `batch` request; longer
/// dictionaries and more users page on with single calls. Users are `None` when the webhook may not read them.
/// Deal stages are per funnel: the funnels (`crm.category.list`) come with that batch, and the stages of the
/// funnels other than the default one (`DEAL_STAGE_<id>`) with one more.
pub async fn fetch_dictionaries(client: &PortalClient, cols: &[Column], users: bool) -> Result<(Vec<Status>, Option<Vec<User>>), PortalError> {
    let mut entities: Vec<String> = cols.iter().filter_map(|c| c.status_type.clone()).collect();
    entities.sort();
    entities.dedup();
    entities.truncate(48);
    let deal_stages = entities.iter().any(|e| e == "DEAL_STAGE");
    let (mut out, people, categories) = dictionaries_batch(client, &entities, users, deal_stages).await?;
    let funnels: Vec<String> = categories.iter().filter(|(id, ..)| *id != 0).map(|(id, ..)| deal_stage_entity(*id)).collect();
    // the funnels themselves, so `category_id` has a name: rows of a `DEAL_CATEGORY` dictionary
    for (id, name, sort) in &categories {
        out.push(Status {
            entity_id: "DEAL_CATEGORY".into(),
            status_id: id.to_string(),
            name: name.clone(),
            sort: *sort,
            semantics: None,
            category_id: Some(*id),
        });
    }
    for chunk in funnels.chunks(48) {
        out.extend(dictionaries_batch(client, chunk, false, false).await?.0);
    }
    Ok((out, people))
}

/// Statuses, users, and the deal funnels as (id, name, sort).
type Dictionaries = (Vec<Status>, Option<Vec<User>>, Vec<(i64, String, Option<i64>)>);

/// One batch of status dictionaries (+ the first page of users, + the deal funnels), then paging.
async fn dictionaries_batch(client: &PortalClient, entities: &[String], users: bool, categories: bool) -> Result<Dictionaries, PortalError> {
    let mut out = Vec::new();
    let params = |e: &str, start: u64| json!({"filter": {"ENTITY_ID": e}, "order": {"SORT": "ASC"}, "start": start});
    let mut cmds: Vec<(String, String)> = entities
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("s{i}"), format!("crm.status.list?{}", php_query::encode(params(e, 0).as_object().expect("object")))))
        .collect();
    if users {
        cmds.push(("users".into(), format!("user.get?{}", php_query::encode(user_params(0).as_object().expect("object")))));
    }
    if categories {
        cmds.push(("categories".into(), "crm.category.list?entityTypeId=2".into()));
    }
    if cmds.is_empty() {
        return Ok((out, None, Vec::new()));
    }
    // transient per-command failures (or a silently missing result) are retried like cursor steps
    let mut attempts = 0u32;
    let mut batch = loop {
        attempts += 1;
        let b = client.batch(&cmds).await?;
        let users_refused = b.errors.get("users").is_some_and(|(code, _)| users_not_allowed(code));
        // a portal without crm.category.list (older versions) has the default funnel only
        let categories_refused = b.errors.get("categories").is_some_and(|(code, _)| !is_transient_code(code));
        let complete = cmds
            .iter()
            .all(|(k, _)| b.results.contains_key(k) || (k == "users" && users_refused) || (k == "categories" && categories_refused));
        if complete {
            break b;
        }
        if let Some((code, desc)) =
            b.errors.iter().filter(|(k, _)| *k != "users" && *k != "categories").map(|(_, v)| v).find(|(code, _)| !is_transient_code(code))
        {
            return Err(PortalError::Api {
                method: "crm.status.list".into(),
                status: 200,
                code: code.clone(),
                description: desc.clone(),
                attempts,
            });
        }
        if attempts > client.config().max_retries {
            return Err(PortalError::Transport {
                method: "crm.status.list".into(),
                message: "the status dictionaries kept failing inside the batch".into(),
                attempts,
            });
        }
        if b.errors.values().any(|(code, _)| code == "OPERATION_TIME_LIMIT") && client.may_pause() {
            client.pause(client.budget().blocked("crm.status.list"), "crm.status.list: OPERATION_TIME_LIMIT").await;
        } else {
            tokio::time::sleep(client.backoff(attempts - 1)).await;
        }
    };
    let mut funnels: Vec<(i64, String, Option<i64>)> = Vec::new();
    if let Some(raw) = batch.results.remove("categories") {
        let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        for c in v.get("categories").and_then(Value::as_array).into_iter().flatten() {
            let id = c.get("id").and_then(|i| i.as_i64().or_else(|| i.as_str().and_then(|s| s.parse().ok())));
            if let Some(id) = id {
                let sort = text(c.get("sort")).and_then(|s| s.trim().parse().ok());
                funnels.push((id, text(c.get("name")).unwrap_or_default(), sort));
            }
        }
    } else if categories {
        let (code, _) = batch.errors.remove("categories").unwrap_or_default();
        tracing::warn!("crm.category.list is not available ({code}); only the default deal funnel's stages are in _dict/statuses");
    }
    for (i, entity) in entities.iter().enumerate() {
        let key = format!("s{i}");
        let raw = batch.results.remove(&key);
        let value = raw.map(|r| serde_json::from_str(r.get()).unwrap_or(Value::Null)).unwrap_or(Value::Null);
        status_rows(entity, value, &mut out);
        let mut next = batch.nexts.get(&key).copied();
        while let Some(start) = next {
            let env = client.call("crm.status.list", &params(entity, start)).await?;
            let n = status_rows(entity, env.value()?, &mut out);
            next = env.next.filter(|nx| *nx > start && n > 0);
        }
    }
    if !users {
        return Ok((out, None, funnels));
    }
    let Some(first) = batch.results.remove("users") else {
        let (code, desc) = batch.errors.remove("users").unwrap_or_default();
        tracing::warn!("user.get is not available to this webhook ({code}: {desc}); _dict/users is not written");
        return Ok((out, None, funnels));
    };
    let first: Value = serde_json::from_str(first.get()).unwrap_or(Value::Null);
    let mut people: Vec<User> = first.as_array().map(|a| a.iter().filter_map(user_of).collect()).unwrap_or_default();
    let mut next = batch.nexts.get("users").copied();
    while let Some(start) = next {
        let env = client.call("user.get", &user_params(start)).await?;
        let rows = match env.value()? {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        people.extend(rows.iter().filter_map(user_of));
        next = env.next.filter(|nx| *nx > start && !rows.is_empty());
    }
    Ok((out, Some(people), funnels))
}

fn user_params(start: u64) -> Value {
    json!({"sort": "ID", "order": "ASC", "start": start})
}

fn utf8<I: IntoIterator<Item = Option<String>>>(it: I) -> ArrayRef {
    Arc::new(StringArray::from_iter(it))
}

fn batch(fields: Vec<Field>, arrays: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// `_dict/fields`: one row per column of the dataset.
pub fn fields_table(entity: &str, cols: &[Column]) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&Column) -> Option<String>| utf8(cols.iter().map(f));
    batch(
        vec![
            Field::new("entity", DataType::Utf8, false),
            Field::new("column_name", DataType::Utf8, false),
            Field::new("field", DataType::Utf8, false),
            Field::new("bitrix_type", DataType::Utf8, true),
            Field::new("arrow_type", DataType::Utf8, false),
            Field::new("duckdb_type", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, true),
            Field::new("is_multiple", DataType::Boolean, false),
            Field::new("status_type", DataType::Utf8, true),
        ],
        vec![
            s(&|_| Some(entity.to_string())),
            s(&|c| Some(c.name.clone())),
            s(&|c| Some(c.source.clone())),
            s(&|c| Some(c.bitrix_type.clone())),
            s(&|c| Some(c.kind.data_type().to_string())),
            s(&|c| Some(c.kind.duckdb_type())),
            s(&|c| Some(c.label.clone())),
            Arc::new(BooleanArray::from(cols.iter().map(|c| c.multiple).collect::<Vec<_>>())),
            s(&|c| c.status_type.clone()),
        ],
    )
}

/// `_dict/enum_items`: the items of enumeration fields (the column holds the item id).
pub fn enum_items_table(entity: &str, cols: &[Column]) -> Result<RecordBatch> {
    let rows: Vec<(&Column, usize, &(i64, String))> =
        cols.iter().flat_map(|c| c.items.iter().enumerate().map(move |(i, it)| (c, i, it))).collect();
    batch(
        vec![
            Field::new("entity", DataType::Utf8, false),
            Field::new("column_name", DataType::Utf8, false),
            Field::new("field", DataType::Utf8, false),
            Field::new("item_id", DataType::Int64, false),
            Field::new("value", DataType::Utf8, true),
            Field::new("sort", DataType::Int64, false),
        ],
        vec![
            utf8(rows.iter().map(|_| Some(entity.to_string()))),
            utf8(rows.iter().map(|(c, ..)| Some(c.name.clone()))),
            utf8(rows.iter().map(|(c, ..)| Some(c.source.clone()))),
            Arc::new(Int64Array::from(rows.iter().map(|(_, _, it)| it.0).collect::<Vec<_>>())),
            utf8(rows.iter().map(|(_, _, it)| Some(it.1.clone()))),
            // crm.lead.fields gives items in display order without a SORT: their position is the order
            Arc::new(Int64Array::from(rows.iter().map(|(_, i, _)| (*i as i64 + 1) * 10).collect::<Vec<_>>())),
        ],
    )
}

/// `_dict/statuses`: the status dictionaries (`STATUS`, `SOURCE`, `HONORIFIC`, …).
pub fn statuses_table(rows: &[Status]) -> Result<RecordBatch> {
    batch(
        vec![
            Field::new("entity_id", DataType::Utf8, false),
            Field::new("status_id", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("sort", DataType::Int64, true),
            Field::new("semantics", DataType::Utf8, true),
            Field::new("category_id", DataType::Int64, true),
        ],
        vec![
            utf8(rows.iter().map(|r| Some(r.entity_id.clone()))),
            utf8(rows.iter().map(|r| Some(r.status_id.clone()))),
            utf8(rows.iter().map(|r| Some(r.name.clone()))),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.sort).collect::<Vec<_>>())),
            utf8(rows.iter().map(|r| r.semantics.clone())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.category_id).collect::<Vec<_>>())),
        ],
    )
}

/// One row of `_dict/users` (`user.get`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: i64,
    pub name: Option<String>,
    pub last_name: Option<String>,
    pub second_name: Option<String>,
    pub email: Option<String>,
    pub active: Option<bool>,
    pub user_type: Option<String>,
}

fn user_of(v: &Value) -> Option<User> {
    let id = match v.get("ID")? {
        Value::String(s) => s.trim().parse().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    let active = match v.get("ACTIVE") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) => Some(matches!(s.as_str(), "Y" | "1" | "true")),
        _ => None,
    };
    let text = |k: &str| text(v.get(k)).filter(|s| !s.is_empty());
    Some(User {
        id,
        name: text("NAME"),
        last_name: text("LAST_NAME"),
        second_name: text("SECOND_NAME"),
        email: text("EMAIL"),
        active,
        user_type: text("USER_TYPE"),
    })
}

/// `_dict/users/users.parquet`.
pub fn users_table(rows: &[User]) -> Result<RecordBatch> {
    batch(
        vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("last_name", DataType::Utf8, true),
            Field::new("second_name", DataType::Utf8, true),
            Field::new("email", DataType::Utf8, true),
            Field::new("active", DataType::Boolean, true),
            Field::new("user_type", DataType::Utf8, true),
        ],
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.id).collect::<Vec<_>>())),
            utf8(rows.iter().map(|r| r.name.clone())),
            utf8(rows.iter().map(|r| r.last_name.clone())),
            utf8(rows.iter().map(|r| r.second_name.clone())),
            utf8(rows.iter().map(|r| r.email.clone())),
            Arc::new(arrow_array::BooleanArray::from(rows.iter().map(|r| r.active).collect::<Vec<_>>())),
            utf8(rows.iter().map(|r| r.user_type.clone())),
        ],
    )
}
