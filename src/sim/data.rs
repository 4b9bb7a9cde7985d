//! The simulated portal's leads: field definitions, a deterministic generator and the wire encoding.
//!
//! A lead is a pure function of `(seed, id)`: [`lead_truth`] gives its typed ground truth (the value a correct
//! exporter must produce), [`render_lead`] encodes it the way `crm.lead.list` does (strings, `Y`/`N`, `""` for
//! empty dates, dates as midnight UTC in the portal's offset, …, see `shared/bitrix24-api.md` §2–§5).
//! Tests compare exported files against [`lead_truth`], never against the exporter's own conversion.

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use serde_json::{json, Map, Value};

/// Bitrix field type as reported by `crm.lead.fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FType {
    Integer,
    Str,
    Char,
    Double,
    Date,
    DateTime,
    CrmStatus(&'static str),
    CrmCurrency,
    User,
    CrmCompany,
    CrmContact,
    CrmLead,
    CrmQuote,
    /// A deal funnel (`crm_category`).
    CrmCategory,
    Location,
    /// A standard file field (contact PHOTO, company LOGO): the same object as a file UF.
    File,
    Multifield,
    // user-field types
    UfString,
    UfInteger,
    UfDouble,
    UfBoolean,
    UfDate,
    UfDateTime,
    UfEnumeration,
    UfMoney,
    UfUrl,
    UfEmployee,
    UfCrm,
    UfFile,
    UfAddress,
    UfCrmStatus(&'static str),
    UfIblockElement,
    UfIblockSection,
    /// An app-defined type (`rest_…`) the exporter cannot know.
    UfCustom,
}

impl FType {
    pub fn wire_name(self) -> &'static str {
        use FType::*;
        match self {
            Integer => "integer",
            Str => "string",
            Char => "char",
            Double => "double",
            Date => "date",
            DateTime => "datetime",
            CrmStatus(_) => "crm_status",
            CrmCurrency => "crm_currency",
            User => "user",
            CrmCompany => "crm_company",
            CrmContact => "crm_contact",
            CrmLead => "crm_lead",
            CrmQuote => "crm_quote",
            CrmCategory => "crm_category",
            Location => "location",
            File => "file",
            Multifield => "crm_multifield",
            UfString => "string",
            UfInteger => "integer",
            UfDouble => "double",
            UfBoolean => "boolean",
            UfDate => "date",
            UfDateTime => "datetime",
            UfEnumeration => "enumeration",
            UfMoney => "money",
            UfUrl => "url",
            UfEmployee => "employee",
            UfCrm => "crm",
            UfFile => "file",
            UfAddress => "address",
            UfCrmStatus(_) => "crm_status",
            UfIblockElement => "iblock_element",
            UfIblockSection => "iblock_section",
            UfCustom => "rest_1_scoring",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FieldDef {
    pub name: &'static str,
    pub ftype: FType,
    pub multiple: bool,
    pub read_only: bool,
    pub title: &'static str,
    /// Returned by `crm.lead.list` (CONTACT_IDS is listed by `crm.lead.fields` but not by the list method).
    pub listed: bool,
}

pub(super) const fn f(name: &'static str, ftype: FType, title: &'static str) -> FieldDef {
    FieldDef { name, ftype, multiple: false, read_only: false, title, listed: true }
}
pub(super) const fn ro(name: &'static str, ftype: FType, title: &'static str) -> FieldDef {
    FieldDef { name, ftype, multiple: false, read_only: true, title, listed: true }
}
pub(super) const fn multi(name: &'static str, ftype: FType, title: &'static str) -> FieldDef {
    FieldDef { name, ftype, multiple: true, read_only: false, title, listed: true }
}

use FType::*;

/// Every field of a simulated lead, in `crm.lead.fields` order.
pub static FIELDS: &[FieldDef] = &[
    ro("ID", Integer, "ID"),
    f("TITLE", Str, "Lead name"),
    f("HONORIFIC", CrmStatus("HONORIFIC"), "Salutation"),
    f("NAME", Str, "First name"),
    f("SECOND_NAME", Str, "Second name"),
    f("LAST_NAME", Str, "Last name"),
    f("BIRTHDATE", Date, "Date of birth"),
    f("COMPANY_TITLE", Str, "Company name"),
    f("COMPANY_ID", CrmCompany, "Company"),
    f("CONTACT_ID", CrmContact, "Contact"),
    FieldDef { name: "CONTACT_IDS", ftype: CrmContact, multiple: true, read_only: false, title: "Contacts", listed: false },
    ro("IS_RETURN_CUSTOMER", Char, "Repeat lead"),
    f("SOURCE_ID", CrmStatus("SOURCE"), "Source"),
    f("SOURCE_DESCRIPTION", Str, "Source information"),
    f("STATUS_ID", CrmStatus("STATUS"), "Stage"),
    f("STATUS_DESCRIPTION", Str, "Stage information"),
    ro("STATUS_SEMANTIC_ID", Str, "Status details"),
    f("POST", Str, "Position"),
    f("COMMENTS", Str, "Comment"),
    f("CURRENCY_ID", CrmCurrency, "Currency"),
    f("OPPORTUNITY", Double, "Total"),
    f("IS_MANUAL_OPPORTUNITY", Char, "IS_MANUAL_OPPORTUNITY"),
    ro("HAS_PHONE", Char, "Has phone"),
    ro("HAS_EMAIL", Char, "Has email"),
    ro("HAS_IMOL", Char, "Has Open Channel"),
    f("OPENED", Char, "Available to everyone"),
    f("ASSIGNED_BY_ID", User, "Responsible person"),
    ro("CREATED_BY_ID", User, "Created by"),
    ro("MODIFY_BY_ID", User, "Modified by"),
    ro("MOVED_BY_ID", User, "MOVED_BY_ID"),
    ro("DATE_CREATE", DateTime, "Created on"),
    ro("DATE_MODIFY", DateTime, "Modified on"),
    ro("DATE_CLOSED", DateTime, "Closed on"),
    ro("MOVED_TIME", DateTime, "MOVED_TIME"),
    f("ORIGINATOR_ID", Str, "External source"),
    f("ORIGIN_ID", Str, "Item ID in data source"),
    f("ADDRESS", Str, "Address"),
    f("ADDRESS_2", Str, "Address (line 2)"),
    f("ADDRESS_CITY", Str, "City"),
    f("ADDRESS_POSTAL_CODE", Str, "Zip"),
    f("ADDRESS_REGION", Str, "Region"),
    f("ADDRESS_PROVINCE", Str, "State / Province"),
    f("ADDRESS_COUNTRY", Str, "Country"),
    f("ADDRESS_COUNTRY_CODE", Str, "Country code"),
    f("ADDRESS_LOC_ADDR_ID", Integer, "Location address ID"),
    f("UTM_SOURCE", Str, "Ad system"),
    f("UTM_MEDIUM", Str, "Traffic type"),
    f("UTM_CAMPAIGN", Str, "Ad campaign UTM"),
    f("UTM_CONTENT", Str, "Campaign contents"),
    f("UTM_TERM", Str, "Campaign search term"),
    ro("LAST_ACTIVITY_BY", User, "LAST_ACTIVITY_BY"),
    ro("LAST_ACTIVITY_TIME", DateTime, "LAST_ACTIVITY_TIME"),
    multi("PHONE", Multifield, "Phone"),
    multi("EMAIL", Multifield, "E-mail"),
    multi("WEB", Multifield, "Website"),
    multi("IM", Multifield, "Messenger"),
    multi("LINK", Multifield, "LINK"),
    f("UF_CRM_1704817278", UfString, "Campaign note"),
    f("UF_CRM_1706782596092", UfInteger, "Seats"),
    f("UF_CRM_1708952993785", UfBoolean, "Newsletter consent"),
    f("UF_CRM_1710000000001", UfDouble, "Score"),
    f("UF_CRM_1710000000002", UfDate, "Contract date"),
    f("UF_CRM_1710000000003", UfDateTime, "Callback at"),
    f("UF_CRM_1710000000004", UfEnumeration, "Segment"),
    f("UF_CRM_1710000000005", UfMoney, "Budget"),
    f("UF_CRM_1710000000006", UfUrl, "Landing page"),
    f("UF_CRM_1710000000007", UfEmployee, "Account manager"),
    f("UF_CRM_1710000000008", UfCrm, "Linked entity"),
    f("UF_CRM_1710000000009", UfFile, "Attachment"),
    multi("UF_CRM_1710000000010", UfEnumeration, "Interests"),
    multi("UF_CRM_1710000000011", UfString, "Tags"),
    f("UF_CRM_1710000000012", UfAddress, "Office address"),
    f("UF_CRM_1710000000013", UfCrmStatus("SOURCE"), "Original source"),
    f("UF_CRM_1710000000014", UfIblockElement, "Product catalog item"),
    f("UF_CRM_1710000000015", UfIblockSection, "Catalog section"),
    multi("UF_CRM_1710000000016", UfDate, "Meeting dates"),
    f("UF_CRM_1710000000017", UfCustom, "Scoring (app field)"),
    multi("UF_CRM_1710000000018", UfEmployee, "Observers"),
    multi("UF_CRM_1710000000019", UfBoolean, "Checklist"),
];

pub fn field(name: &str) -> Option<&'static FieldDef> {
    FIELDS.iter().find(|f| f.name == name)
}

pub fn is_user_field(name: &str) -> bool {
    name.starts_with("UF_")
}

/// Enumeration items of the two enumeration UFs.
pub const SEGMENT_ITEMS: &[(i64, &str)] = &[(79, "Retail"), (80, "Wholesale"), (81, "Partner"), (82, "Government")];
pub const INTEREST_ITEMS: &[(i64, &str)] = &[(101, "Hardware"), (102, "Software"), (103, "Support"), (104, "Training")];

/// The portal's users (`user.get`): IDs 1..=40, the ones lead user fields refer to; the last three were fired
/// (`ACTIVE` false), and user 40 has no e-mail.
pub fn users() -> Vec<Value> {
    const FIRST: &[&str] = &["Anna", "Boris", "Chloé", "Dmitri", "Elif", "Farid", "Greta", "Hiroshi"];
    const LAST: &[&str] = &["Ivanova", "Jensen", "Kowalski", "Lefèvre", "Müller", "Novák", "Okafor"];
    (1..=40i64)
        .map(|id| {
            let (first, last) = (FIRST[(id as usize * 5) % FIRST.len()], LAST[(id as usize * 3) % LAST.len()]);
            json!({
                "ID": id.to_string(),
                "XML_ID": format!("u{id}"),
                "ACTIVE": id <= 37,
                "NAME": first,
                "LAST_NAME": last,
                "SECOND_NAME": "",
                "EMAIL": if id == 40 { String::new() } else { format!("{}.{}{id}@example.com", first.to_lowercase(), last.to_lowercase()) },
                "LAST_LOGIN": "2024-07-25T13:06:54+00:00",
                "UF_DEPARTMENT": [1 + id % 4],
                "USER_TYPE": "employee",
            })
        })
        .collect()
}

/// `crm.status.list` rows: (ENTITY_ID, STATUS_ID, NAME, SORT, SEMANTICS) — the lead's dictionaries, then deal
/// stages per funnel (`DEAL_STAGE`, `DEAL_STAGE_<id>`) and the other entities' types.
pub fn status_dictionary() -> Vec<(String, String, &'static str, i64, Option<&'static str>)> {
    let mut out: Vec<(String, String, &'static str, i64, Option<&'static str>)> =
        lead_statuses().into_iter().map(|(e, id, name, sort, sem)| (e.to_string(), id.to_string(), name, sort, sem)).collect();
    for (cat, ..) in super::entities::DEAL_CATEGORIES {
        let entity = if *cat == 0 { "DEAL_STAGE".to_string() } else { format!("DEAL_STAGE_{cat}") };
        for (id, name, sort, sem) in super::entities::deal_stages(*cat) {
            out.push((entity.clone(), id, name, sort, (sem != "P").then_some(sem)));
        }
    }
    for (e, id, name, sort) in super::entities::OTHER_STATUSES {
        out.push((e.to_string(), id.to_string(), name, *sort, None));
    }
    out
}

fn lead_statuses() -> Vec<(&'static str, &'static str, &'static str, i64, Option<&'static str>)> {
    let mut out = vec![
        ("STATUS", "NEW", "Unassigned", 10, None),
        ("STATUS", "IN_PROCESS", "In progress", 20, None),
        ("STATUS", "PROCESSED", "Processed", 30, None),
        ("STATUS", "CONVERTED", "Good lead", 40, Some("S")),
        ("STATUS", "JUNK", "Junk lead", 50, Some("F")),
    ];
    let names = ["Call", "E-mail", "Website", "Advertising", "Partner", "Recommendation", "Trade show", "CRM form", "Callback", "Other"];
    for (i, (id, name)) in SOURCES.iter().zip(names).enumerate() {
        out.push(("SOURCE", id, name, 10 * (i as i64 + 1), None));
    }
    for (i, (id, name)) in HONORIFICS.iter().zip(["Mr.", "Mrs.", "Ms.", "Dr."]).enumerate() {
        out.push(("HONORIFIC", id, name, 10 * (i as i64 + 1), None));
    }
    out
}

const STATUSES: &[(&str, &str)] = &[("NEW", "P"), ("IN_PROCESS", "P"), ("PROCESSED", "P"), ("CONVERTED", "S"), ("JUNK", "F")];
pub(super) const SOURCES: &[&str] = &[
    "CALL", "EMAIL", "WEB", "ADVERTISING", "PARTNER", "RECOMMENDATION", "TRADE_SHOW", "WEBFORM", "CALLBACK", "OTHER",
];
pub(super) const HONORIFICS: &[&str] = &["HNR_EN_1", "HNR_EN_2", "HNR_EN_3", "HNR_EN_4"];
pub(super) const CURRENCIES: &[&str] = &["USD", "EUR", "RUB", "KZT"];
pub(super) const FIRST: &[&str] = &["Erasmus", "Zoë", "Анна", "Дмитрий", "李", "José", "Ólafur", "Mia", "Ngozi", "O'Brien", "Søren", "Łucja"];
pub(super) const LAST: &[&str] = &["Golden of Ireland", "Müller", "Иванова", "Петров", "王", "García", "Þórsson", "Smith", "Okafor", "D'Angelo"];
pub(super) const WORDS: &[&str] = &[
    "Website order", "Заявка с сайта", "Call back 📞", "Price request", "Запрос КП", "展会线索", "Demo \"Pro\"",
    "Partner, referral", "Renewal; Q3", "Tab\tseparated", "Line\nbreak", "Ünïcödé ✓",
];
const COUNTRIES: &[&str] = &["Indonesia", "Germany", "Россия", "Kazakhstan", "Brasil", "日本"];
const PHONE_TYPES: &[&str] = &["WORK", "MOBILE", "FAX", "HOME", "PAGER", "MAILING", "OTHER"];
const EMAIL_TYPES: &[&str] = &["WORK", "HOME", "MAILING", "OTHER"];
const WEB_TYPES: &[&str] = &["WORK", "HOME", "VK", "LIVEJOURNAL", "TWITTER", "OTHER"];
const IM_TYPES: &[&str] = &["TELEGRAM", "VK", "SKYPE", "VIBER", "BITRIX24", "OPENLINE", "IMOL", "OTHER"];

/// One element of a multi-value field (PHONE, EMAIL, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Multi {
    pub id: i64,
    pub value_type: String,
    pub value: String,
    pub type_id: &'static str,
}

/// The typed ground truth of one field of one lead.
#[derive(Debug, Clone, PartialEq)]
pub enum Truth {
    Null,
    Str(String),
    Int(i64),
    /// An exact amount in hundredths (OPPORTUNITY `"15000.00"` = 1_500_000).
    Cents(i64),
    Float(f64),
    Bool(bool),
    /// Unix seconds, UTC.
    DateTime(i64),
    /// Days since 1970-01-01.
    Date(i32),
    Multi(Vec<Multi>),
    Money { cents: i64, currency: String },
    File { id: i64 },
    List(Vec<Truth>),
}

/// Deterministic per-lead randomness (splitmix64).
pub(super) struct Rng(u64);
impl Rng {
    pub(super) fn new(seed: u64, id: i64) -> Self {
        Rng(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub(super) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// How the IDs of a simulated portal are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdLayout {
    /// Increasing from 1 with runs of deleted leads and the odd big hole.
    #[default]
    Realistic,
    /// 1, 2, 3, … without gaps.
    Dense,
    /// Gaps of thousands between neighbours.
    Sparse,
    /// Two dense halves ten million IDs apart.
    HugeGap,
}

/// The IDs of a portal of `n` leads, ascending.
pub fn generate_ids(n: usize, seed: u64, layout: IdLayout) -> Vec<i64> {
    let mut rng = Rng::new(seed, -1);
    let mut ids = Vec::with_capacity(n);
    let mut id = 0i64;
    for k in 0..n {
        id += 1;
        match layout {
            IdLayout::Realistic => {
                if rng.chance(7) {
                    id += rng.below(40) as i64; // a run of deleted leads
                }
                if rng.below(2000) == 0 {
                    id += 1000 + rng.below(5000) as i64; // a big hole, e.g. an import that was rolled back
                }
            }
            IdLayout::Dense => {}
            IdLayout::Sparse => id += 1000 + rng.below(4000) as i64,
            IdLayout::HugeGap => {
                if k == n / 2 {
                    id += 10_000_000;
                }
            }
        }
        ids.push(id);
    }
    ids
}

pub(super) const T0: i64 = 1_546_300_800; // 2019-01-01T00:00:00Z
pub(super) const SPAN: i64 = 7 * 365 * 86_400; // leads are spread over seven years
/// No generated DATE_MODIFY is later than this (creation within the span + 3 days, modification ≤ 90 days later).
pub const LATEST_MODIFY: i64 = T0 + SPAN + 86_400 * 93;

/// The typed values of lead `id`, in [`FIELDS`] order. `position` is the lead's index among all IDs and
/// `count` the portal size (they spread creation dates over the years, increasing with the ID).
pub fn lead_truth(seed: u64, id: i64, position: usize, count: usize) -> Vec<Truth> {
    let mut r = Rng::new(seed, id);
    let created = T0 + (SPAN as i128 * position as i128 / count.max(1) as i128) as i64 + r.below(86_400 * 3) as i64;
    let modified = created + r.below(86_400 * 90) as i64;
    let (status, semantic) = *r.pick(STATUSES);
    let closed = semantic != "P";
    let mut phones = Vec::new();
    for k in 0..r.below(4) {
        let digits = 1_000_000 + r.below(9_000_000);
        phones.push(Multi {
            id: id * 10 + k as i64,
            value_type: r.pick(PHONE_TYPES).to_string(),
            value: format!("+1555{digits}"),
            type_id: "PHONE",
        });
    }
    let mut emails = Vec::new();
    for k in 0..r.below(3) {
        emails.push(Multi {
            id: id * 10 + 5 + k as i64,
            value_type: r.pick(EMAIL_TYPES).to_string(),
            value: format!("lead{id}.{k}@example.com"),
            type_id: "EMAIL",
        });
    }
    let webs: Vec<Multi> = if r.chance(20) {
        vec![Multi { id: id * 10 + 8, value_type: r.pick(WEB_TYPES).to_string(), value: format!("https://example.org/{id}?a=1&b=ü"), type_id: "WEB" }]
    } else {
        vec![]
    };
    let ims: Vec<Multi> = if r.chance(15) {
        let vt = r.pick(IM_TYPES).to_string();
        let value = if vt == "OPENLINE" || vt == "IMOL" { format!("imol|livechat|1|{id}|21") } else { format!("@user{id}") };
        vec![Multi { id: id * 10 + 9, value_type: vt, value, type_id: "IM" }]
    } else {
        vec![]
    };
    let links: Vec<Multi> = if r.chance(3) {
        vec![Multi { id: id * 10 + 7, value_type: "USER".into(), value: format!("{}", 100 + r.below(50)), type_id: "LINK" }]
    } else {
        vec![]
    };
    let has_imol = ims.iter().any(|m| m.value_type == "OPENLINE" || m.value_type == "IMOL");
    fn opt_str(r: &mut Rng, pct: u64, f: impl FnOnce(&mut Rng) -> String) -> Truth {
        if r.chance(pct) {
            Truth::Str(f(r))
        } else {
            Truth::Null
        }
    }
    let mut out = Vec::with_capacity(FIELDS.len());
    for def in FIELDS {
        let t = match def.name {
            "ID" => Truth::Int(id),
            "TITLE" => Truth::Str(format!("{} #{id}", r.pick(WORDS))),
            "HONORIFIC" => {
                if r.chance(40) {
                    Truth::Str(r.pick(HONORIFICS).to_string())
                } else {
                    Truth::Null
                }
            }
            "NAME" => Truth::Str(r.pick(FIRST).to_string()),
            "SECOND_NAME" => opt_str(&mut r, 10, |_| "Maria".into()),
            "LAST_NAME" => Truth::Str(r.pick(LAST).to_string()),
            "BIRTHDATE" => {
                if r.chance(30) {
                    Truth::Date((-7300 + r.below(14_600) as i64) as i32)
                } else {
                    Truth::Null
                }
            }
            "COMPANY_TITLE" => opt_str(&mut r, 50, |r| format!("Company {} LLC", r.below(500))),
            "COMPANY_ID" => Truth::Int(if r.chance(60) { 0 } else { 1 + r.below(2000) as i64 }),
            "CONTACT_ID" => {
                if r.chance(50) {
                    Truth::Int(1 + r.below(5000) as i64)
                } else {
                    Truth::Null
                }
            }
            "CONTACT_IDS" => Truth::List(vec![]),
            "IS_RETURN_CUSTOMER" => Truth::Bool(r.chance(10)),
            "SOURCE_ID" => Truth::Str(r.pick(SOURCES).to_string()),
            "SOURCE_DESCRIPTION" => opt_str(&mut r, 20, |_| "Came from the spring campaign".into()),
            "STATUS_ID" => Truth::Str(status.to_string()),
            "STATUS_DESCRIPTION" => Truth::Null,
            "STATUS_SEMANTIC_ID" => Truth::Str(semantic.to_string()),
            "POST" => opt_str(&mut r, 30, |_| "Head of purchasing".into()),
            "COMMENTS" => opt_str(&mut r, 25, |_| format!("<p>Called on {id}; asked for «price list» & terms</p>")),
            "CURRENCY_ID" => Truth::Str(r.pick(CURRENCIES).to_string()),
            "OPPORTUNITY" => Truth::Cents(if r.chance(20) { 0 } else { r.below(10_000_000_000) as i64 }),
            "IS_MANUAL_OPPORTUNITY" => Truth::Bool(r.chance(30)),
            "HAS_PHONE" => Truth::Bool(!phones.is_empty()),
            "HAS_EMAIL" => Truth::Bool(!emails.is_empty()),
            "HAS_IMOL" => Truth::Bool(has_imol),
            "OPENED" => Truth::Bool(r.chance(80)),
            "ASSIGNED_BY_ID" | "CREATED_BY_ID" | "MODIFY_BY_ID" | "MOVED_BY_ID" | "LAST_ACTIVITY_BY" => {
                Truth::Int(1 + r.below(40) as i64)
            }
            "DATE_CREATE" => Truth::DateTime(created),
            "DATE_MODIFY" => Truth::DateTime(modified),
            "DATE_CLOSED" => {
                if closed {
                    Truth::DateTime(modified)
                } else {
                    Truth::Null
                }
            }
            "MOVED_TIME" => Truth::DateTime(created + r.below(86_400 * 10) as i64),
            "LAST_ACTIVITY_TIME" => Truth::DateTime(modified),
            "ORIGINATOR_ID" | "ORIGIN_ID" => Truth::Null,
            "ADDRESS" => opt_str(&mut r, 40, |r| format!("{} Hollow Ridge Alley", 1 + r.below(9000))),
            "ADDRESS_COUNTRY" => opt_str(&mut r, 50, |r| r.pick(COUNTRIES).to_string()),
            "ADDRESS_CITY" => opt_str(&mut r, 30, |_| "Алматы".into()),
            "ADDRESS_POSTAL_CODE" => opt_str(&mut r, 30, |r| format!("{:05}", r.below(99_999))),
            "ADDRESS_2" | "ADDRESS_REGION" | "ADDRESS_PROVINCE" | "ADDRESS_COUNTRY_CODE" => Truth::Null,
            "ADDRESS_LOC_ADDR_ID" => {
                if r.chance(40) {
                    Truth::Int(1 + r.below(100_000) as i64)
                } else {
                    Truth::Null
                }
            }
            "UTM_SOURCE" => opt_str(&mut r, 30, |_| "google".into()),
            "UTM_MEDIUM" => opt_str(&mut r, 30, |_| "cpc".into()),
            "UTM_CAMPAIGN" => opt_str(&mut r, 20, |_| "black_friday_2024".into()),
            "UTM_CONTENT" | "UTM_TERM" => Truth::Null,
            "PHONE" => Truth::Multi(phones.clone()),
            "EMAIL" => Truth::Multi(emails.clone()),
            "WEB" => Truth::Multi(webs.clone()),
            "IM" => Truth::Multi(ims.clone()),
            "LINK" => Truth::Multi(links.clone()),
            "UF_CRM_1704817278" => opt_str(&mut r, 50, |r| format!("note «{}»", r.pick(WORDS))),
            "UF_CRM_1706782596092" => {
                if r.chance(60) {
                    Truth::Int(r.below(500) as i64)
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1708952993785" => {
                if r.chance(90) {
                    Truth::Bool(r.chance(50))
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000001" => {
                if r.chance(70) {
                    Truth::Float(r.below(100_000) as f64 / 8.0)
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000002" => {
                if r.chance(40) {
                    Truth::Date(((created / 86_400) + r.below(365) as i64) as i32)
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000003" => {
                if r.chance(40) {
                    Truth::DateTime(created + r.below(86_400 * 30) as i64)
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000004" => {
                if r.chance(70) {
                    Truth::Int(r.pick(SEGMENT_ITEMS).0)
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000005" => {
                if r.chance(50) {
                    Truth::Money { cents: r.below(100_000_000) as i64, currency: r.pick(CURRENCIES).to_string() }
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000006" => opt_str(&mut r, 30, |r| format!("https://example.com/landing/{}", r.below(20))),
            "UF_CRM_1710000000007" => {
                if r.chance(60) {
                    Truth::Int(1 + r.below(40) as i64)
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000008" => {
                if r.chance(50) {
                    let prefix = *r.pick(&["C_", "CO_", "D_", "L_", ""]);
                    Truth::Str(format!("{prefix}{}", 1 + r.below(3000)))
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000009" => {
                if r.chance(20) {
                    Truth::File { id: 5000 + id }
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000010" => {
                let mut items: Vec<Truth> = Vec::new();
                for (item, _) in INTEREST_ITEMS {
                    if r.chance(30) {
                        items.push(Truth::Int(*item));
                    }
                }
                Truth::List(items)
            }
            "UF_CRM_1710000000011" => {
                let n = r.below(3);
                Truth::List((0..n).map(|k| Truth::Str(format!("tag-{k}-{}", r.pick(&["vip", "новый", "b2b"])))).collect())
            }
            "UF_CRM_1710000000013" => {
                if r.chance(40) {
                    Truth::Str(r.pick(SOURCES).to_string())
                } else {
                    Truth::Null
                }
            }
            "UF_CRM_1710000000014" => opt_str(&mut r, 30, |r| (100 + r.below(900)).to_string()),
            "UF_CRM_1710000000015" => opt_str(&mut r, 30, |r| (1 + r.below(60)).to_string()),
            "UF_CRM_1710000000016" => {
                let n = r.below(3);
                Truth::List((0..n).map(|_| Truth::Date(((created / 86_400) + r.below(200) as i64) as i32)).collect())
            }
            "UF_CRM_1710000000017" => opt_str(&mut r, 30, |r| format!("grade:{}|{}", r.pick(&["A", "B", "C"]), r.below(100))),
            "UF_CRM_1710000000018" => {
                let n = r.below(3);
                Truth::List((0..n).map(|k| Truth::Int(1 + k as i64 * 10 + r.below(10) as i64)).collect())
            }
            "UF_CRM_1710000000019" => {
                let n = r.below(4);
                Truth::List((0..n).map(|_| Truth::Bool(r.chance(50))).collect())
            }
            "UF_CRM_1710000000012" => opt_str(&mut r, 20, |r| format!("350 5th Ave, New York|40.748441;-73.985664|{}", r.below(9_000_000))),
            other => unreachable!("no generator for field {other}"),
        };
        out.push(t);
    }
    out
}

/// How the portal encodes a few ambiguous values (see `shared/bitrix24-api.md` §3).
#[derive(Debug, Clone, Copy)]
pub struct Encoding {
    /// The portal's UTC offset in seconds.
    pub offset_secs: i32,
    /// Boolean UFs as JSON `true`/`false` (docs example) instead of `"1"`/`"0"` (core source).
    pub bool_uf_json: bool,
}

impl Default for Encoding {
    fn default() -> Self {
        Encoding { offset_secs: 2 * 3600, bool_uf_json: false }
    }
}

fn fmt_datetime(secs: i64, offset: &FixedOffset) -> String {
    let dt: DateTime<Utc> = Utc.timestamp_opt(secs, 0).single().expect("valid timestamp");
    dt.with_timezone(offset).format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

fn fmt_date(days: i32, offset: &FixedOffset) -> String {
    // Bitrix writes a date as midnight UTC expressed in the portal's offset (§5).
    fmt_datetime(days as i64 * 86_400, offset)
}

pub fn days_to_date(days: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(days as i64)
}

fn fmt_cents(cents: i64) -> String {
    format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, (cents / 100).abs(), (cents % 100).abs())
}

/// Encodes one typed value the way `crm.lead.list` does. `None` means the key is absent.
pub fn render_value(def: &FieldDef, t: &Truth, lead_id: i64, enc: &Encoding) -> Option<Value> {
    let off = FixedOffset::east_opt(enc.offset_secs).expect("valid offset");
    let v = match (def.ftype, t) {
        (Multifield, Truth::Multi(ms)) => {
            if ms.is_empty() {
                return None; // a lead with no values of a selected multi-field type has no key
            }
            Value::Array(
                ms.iter()
                    .map(|m| json!({"ID": m.id.to_string(), "VALUE_TYPE": m.value_type, "VALUE": m.value, "TYPE_ID": m.type_id}))
                    .collect(),
            )
        }
        (UfFile, Truth::Null) => return None, // stored 0: key absent
        (UfFile | File, Truth::File { id: fid }) => {
            // a standard field (contact PHOTO, company LOGO) is served by its entity's component, `dynamic=N`
            let (component, dynamic) = match def.name {
                "PHOTO" => ("crm.contact.show", "N"),
                "LOGO" => ("crm.company.show", "N"),
                _ => ("crm.lead.show", "Y"),
            };
            let name = def.name;
            json!({
                "id": fid,
                "showUrl": format!("/bitrix/components/bitrix/{component}/show_file.php?ownerId={lead_id}&fieldName={name}&dynamic={dynamic}&fileId={fid}"),
                "downloadUrl": format!("/bitrix/components/bitrix/{component}/show_file.php?auth=simauth{fid}token&ownerId={lead_id}&fieldName={name}&dynamic={dynamic}&fileId={fid}"),
            })
        }
        (_, Truth::List(items)) if def.multiple => {
            if items.is_empty() {
                match def.ftype {
                    UfDate | UfDateTime => Value::String(String::new()), // empty multiple date UF: ""
                    _ if lead_id % 2 == 0 => Value::Array(vec![]),       // values that were cleared: []
                    _ => Value::Bool(false),                             // a NULL multiple column: false
                }
            } else {
                Value::Array(items.iter().map(|i| scalar(def.ftype, i, enc, &off)).collect())
            }
        }
        (Date | DateTime | UfDate | UfDateTime, Truth::Null) => Value::String(String::new()),
        (_, t) => scalar(def.ftype, t, enc, &off),
    };
    Some(v)
}

fn scalar(ft: FType, t: &Truth, enc: &Encoding, off: &FixedOffset) -> Value {
    match t {
        Truth::Null => Value::Null,
        Truth::Str(s) => Value::String(s.clone()),
        Truth::Int(i) => Value::String(i.to_string()),
        Truth::Cents(c) => Value::String(fmt_cents(*c)),
        Truth::Float(x) => Value::String(format!("{x}")),
        Truth::Bool(b) => match ft {
            UfBoolean if enc.bool_uf_json => Value::Bool(*b),
            UfBoolean => Value::String(if *b { "1" } else { "0" }.into()),
            _ => Value::String(if *b { "Y" } else { "N" }.into()),
        },
        Truth::DateTime(s) => Value::String(fmt_datetime(*s, off)),
        Truth::Date(d) => Value::String(fmt_date(*d, off)),
        Truth::Money { cents, currency } => Value::String(format!("{}|{currency}", fmt_cents(*cents))),
        Truth::Multi(_) | Truth::File { .. } | Truth::List(_) => unreachable!("not a scalar"),
    }
}

/// The whole lead as `crm.lead.list` returns it with the given select applied (`keep(def)`).
pub fn render_lead(truth: &[Truth], lead_id: i64, enc: &Encoding, keep: impl Fn(&FieldDef) -> bool) -> Map<String, Value> {
    render_record(FIELDS, truth, lead_id, enc, keep)
}

/// A record of any entity as its legacy list method returns it (`fields` in the order of `truth`).
pub fn render_record(fields: &[FieldDef], truth: &[Truth], lead_id: i64, enc: &Encoding, keep: impl Fn(&FieldDef) -> bool) -> Map<String, Value> {
    let mut m = Map::new();
    for (def, t) in fields.iter().zip(truth) {
        if !def.listed || !keep(def) {
            continue;
        }
        if let Some(v) = render_value(def, t, lead_id, enc) {
            m.insert(def.name.to_string(), v);
        }
    }
    m
}

/// `crm.lead.fields` result object, with the key order of §3.
pub fn fields_metadata() -> Value {
    fields_metadata_of(FIELDS)
}

/// `crm.<entity>.fields` result object of the given fields.
pub fn fields_metadata_of(fields: &[FieldDef]) -> Value {
    let mut m = Map::new();
    for def in fields {
        let mut o = Map::new();
        o.insert("type".into(), json!(def.ftype.wire_name()));
        o.insert("isRequired".into(), json!(def.name == "TITLE"));
        o.insert("isReadOnly".into(), json!(def.read_only));
        o.insert("isImmutable".into(), json!(false));
        o.insert("isMultiple".into(), json!(def.multiple));
        o.insert("isDynamic".into(), json!(is_user_field(def.name)));
        if def.name == "CONTACT_ID" || (def.name == "COMPANY_ID" && fields.iter().any(|f| f.name == "COMPANY_IDS")) {
            o.insert("isDeprecated".into(), json!(true));
        }
        if let CrmStatus(st) | UfCrmStatus(st) = def.ftype {
            o.insert("statusType".into(), json!(st));
        }
        if def.ftype == UfEnumeration {
            let items = if def.multiple { INTEREST_ITEMS } else { SEGMENT_ITEMS };
            o.insert(
                "items".into(),
                Value::Array(items.iter().map(|(id, v)| json!({"ID": id.to_string(), "VALUE": v})).collect()),
            );
        }
        if is_user_field(def.name) {
            o.insert("title".into(), json!(def.name));
            o.insert("listLabel".into(), json!(def.title));
            o.insert("formLabel".into(), json!(def.title));
            o.insert("filterLabel".into(), json!(def.title));
            o.insert("settings".into(), json!({}));
        } else {
            o.insert("title".into(), json!(def.title));
            if def.name == "COMPANY_ID" && !fields.iter().any(|f| f.name == "COMPANY_IDS") {
                o.insert("settings".into(), json!({"parentEntityTypeId": 4}));
            }
        }
        m.insert(def.name.to_string(), Value::Object(o));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_midnight_utc_in_portal_offset() {
        let d = (NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32;
        assert_eq!(fmt_date(d, &FixedOffset::east_opt(7200).unwrap()), "2000-01-01T02:00:00+02:00");
        assert_eq!(fmt_date(d, &FixedOffset::east_opt(-5 * 3600).unwrap()), "1999-12-31T19:00:00-05:00");
    }

    #[test]
    fn generator_is_deterministic_and_has_gaps() {
        let a = generate_ids(1000, 7, IdLayout::Realistic);
        assert_eq!(a, generate_ids(1000, 7, IdLayout::Realistic));
        assert_eq!(generate_ids(3, 7, IdLayout::Dense), [1, 2, 3]);
        let sparse = generate_ids(100, 7, IdLayout::Sparse);
        assert!(sparse.windows(2).all(|w| w[1] - w[0] > 1000));
        let huge = generate_ids(10, 7, IdLayout::HugeGap);
        assert!(huge[5] - huge[4] > 10_000_000);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(*a.last().unwrap() > 1000);
        assert_eq!(lead_truth(7, 5, 4, 1000), lead_truth(7, 5, 4, 1000));
        assert_eq!(fmt_cents(1_500_000), "15000.00");
        assert_eq!(fmt_cents(5), "0.05");
    }
}
