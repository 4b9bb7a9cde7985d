//! The simulated portal's deals, contacts and companies (leads are in [`super::data`]): their fields in
//! `crm.<entity>.fields` order and a deterministic generator of their typed truth. They render through the same
//! encoder as leads (`render_record`), so every wire format of `shared/bitrix24-api.md` §3–§5 applies to them too;
//! what differs is listed in §11: deals have STAGE_ID per funnel (`C<n>:` prefixes), CATEGORY_ID, BEGINDATE and
//! CLOSEDATE dates and no multi-fields; contacts and companies have PHONE/EMAIL/WEB/IM, PHOTO/LOGO files.
//!
//! References between entities stay inside the generated ID ranges: a deal's COMPANY_ID and CONTACT_ID, a
//! contact's COMPANY_ID and a lead's CONTACT_ID point at records of the same portal (or 0/null), so joins work.

use super::data::{self, f, multi, ro, FType::*, FieldDef, Multi, Rng, Truth};
use crate::entity::Entity;

/// Listed by `crm.<entity>.fields` but not returned by the list method.
const fn unlisted(name: &'static str, ftype: data::FType, title: &'static str) -> FieldDef {
    FieldDef { name, ftype, multiple: true, read_only: false, title, listed: false }
}

/// `crm.deal.fields` (standard fields of DOCS crm-deal-fields.md, plus five user fields).
pub static DEAL_FIELDS: &[FieldDef] = &[
    ro("ID", Integer, "ID"),
    f("TITLE", Str, "Name"),
    f("TYPE_ID", CrmStatus("DEAL_TYPE"), "Type"),
    f("CATEGORY_ID", CrmCategory, "Pipeline"),
    f("STAGE_ID", CrmStatus("DEAL_STAGE"), "Deal stage"),
    ro("STAGE_SEMANTIC_ID", Str, "Stage group"),
    ro("IS_NEW", Char, "New deal"),
    f("IS_RECURRING", Char, "Recurring deal"),
    ro("IS_RETURN_CUSTOMER", Char, "Repeat deal"),
    ro("IS_REPEATED_APPROACH", Char, "Repeat inquiry"),
    f("PROBABILITY", Integer, "Probability"),
    f("CURRENCY_ID", CrmCurrency, "Currency"),
    f("OPPORTUNITY", Double, "Amount"),
    f("IS_MANUAL_OPPORTUNITY", Char, "IS_MANUAL_OPPORTUNITY"),
    f("TAX_VALUE", Double, "Tax rate"),
    f("COMPANY_ID", CrmCompany, "Company"),
    f("CONTACT_ID", CrmContact, "Contact"),
    unlisted("CONTACT_IDS", CrmContact, "Contacts"),
    f("QUOTE_ID", CrmQuote, "Estimate"),
    f("BEGINDATE", Date, "Start date"),
    f("CLOSEDATE", Date, "Estimated close date"),
    f("OPENED", Char, "Available to everyone"),
    f("CLOSED", Char, "Closed"),
    f("COMMENTS", Str, "Comment"),
    f("ASSIGNED_BY_ID", User, "Responsible person"),
    ro("CREATED_BY_ID", User, "Created by"),
    ro("MODIFY_BY_ID", User, "Modified by"),
    ro("MOVED_BY_ID", User, "MOVED_BY_ID"),
    ro("DATE_CREATE", DateTime, "Created on"),
    ro("DATE_MODIFY", DateTime, "Modified on"),
    ro("MOVED_TIME", DateTime, "MOVED_TIME"),
    f("SOURCE_ID", CrmStatus("SOURCE"), "Source"),
    f("SOURCE_DESCRIPTION", Str, "Source information"),
    ro("LEAD_ID", CrmLead, "Lead"),
    f("ADDITIONAL_INFO", Str, "Additional information"),
    f("LOCATION_ID", Location, "Location"),
    f("ORIGINATOR_ID", Str, "External source"),
    f("ORIGIN_ID", Str, "Item ID in data source"),
    f("UTM_SOURCE", Str, "Ad system"),
    f("UTM_MEDIUM", Str, "Traffic type"),
    f("UTM_CAMPAIGN", Str, "Ad campaign UTM"),
    f("UTM_CONTENT", Str, "Campaign contents"),
    f("UTM_TERM", Str, "Campaign search term"),
    ro("LAST_ACTIVITY_TIME", DateTime, "LAST_ACTIVITY_TIME"),
    ro("LAST_ACTIVITY_BY", User, "LAST_ACTIVITY_BY"),
    f("UF_CRM_1720000000001", UfMoney, "Budget approved"),
    f("UF_CRM_1720000000002", UfEnumeration, "Deal segment"),
    f("UF_CRM_1720000000003", UfDate, "Contract signed"),
    f("UF_CRM_1720000000004", UfBoolean, "Needs delivery"),
    multi("UF_CRM_1720000000005", UfEmployee, "Deal team"),
];

/// `crm.contact.fields` (DOCS crm-contact-fields.md; the deprecated ADDRESS_* fields are left out).
pub static CONTACT_FIELDS: &[FieldDef] = &[
    ro("ID", Integer, "ID"),
    f("HONORIFIC", CrmStatus("HONORIFIC"), "Salutation"),
    f("NAME", Str, "First name"),
    f("SECOND_NAME", Str, "Second name"),
    f("LAST_NAME", Str, "Last name"),
    f("PHOTO", File, "Photo"),
    f("BIRTHDATE", Date, "Date of birth"),
    f("TYPE_ID", CrmStatus("CONTACT_TYPE"), "Contact type"),
    f("SOURCE_ID", CrmStatus("SOURCE"), "Source"),
    f("SOURCE_DESCRIPTION", Str, "Source information"),
    f("POST", Str, "Position"),
    f("COMMENTS", Str, "Comment"),
    f("OPENED", Char, "Available to everyone"),
    f("EXPORT", Char, "Included in export"),
    ro("HAS_PHONE", Char, "Has phone"),
    ro("HAS_EMAIL", Char, "Has email"),
    ro("HAS_IMOL", Char, "Has Open Channel"),
    f("ASSIGNED_BY_ID", User, "Responsible person"),
    ro("CREATED_BY_ID", User, "Created by"),
    ro("MODIFY_BY_ID", User, "Modified by"),
    ro("DATE_CREATE", DateTime, "Created on"),
    ro("DATE_MODIFY", DateTime, "Modified on"),
    f("COMPANY_ID", CrmCompany, "Company"),
    unlisted("COMPANY_IDS", CrmCompany, "Companies"),
    ro("LEAD_ID", CrmLead, "Lead"),
    f("ORIGINATOR_ID", Str, "External source"),
    f("ORIGIN_ID", Str, "Item ID in data source"),
    f("ORIGIN_VERSION", Str, "Original version"),
    f("UTM_SOURCE", Str, "Ad system"),
    f("UTM_MEDIUM", Str, "Traffic type"),
    f("UTM_CAMPAIGN", Str, "Ad campaign UTM"),
    f("UTM_CONTENT", Str, "Campaign contents"),
    f("UTM_TERM", Str, "Campaign search term"),
    ro("LAST_ACTIVITY_TIME", DateTime, "LAST_ACTIVITY_TIME"),
    ro("LAST_ACTIVITY_BY", User, "LAST_ACTIVITY_BY"),
    multi("PHONE", Multifield, "Phone"),
    multi("EMAIL", Multifield, "E-mail"),
    multi("WEB", Multifield, "Website"),
    multi("IM", Multifield, "Messenger"),
    multi("LINK", Multifield, "LINK"),
    f("UF_CRM_1730000000001", UfString, "Preferred language"),
    f("UF_CRM_1730000000002", UfDateTime, "Last meeting"),
    multi("UF_CRM_1730000000003", UfEnumeration, "Interests"),
];

/// `crm.company.fields` (DOCS crm-company-fields.md; the deprecated ADDRESS_* / REG_ADDRESS_* fields are left out;
/// CONTACT_ID is multiple and, like CONTACT_IDS of deals, not returned by the list method).
pub static COMPANY_FIELDS: &[FieldDef] = &[
    ro("ID", Integer, "ID"),
    f("TITLE", Str, "Company name"),
    f("COMPANY_TYPE", CrmStatus("COMPANY_TYPE"), "Company type"),
    f("LOGO", File, "Logo"),
    f("INDUSTRY", CrmStatus("INDUSTRY"), "Industry"),
    f("EMPLOYEES", CrmStatus("EMPLOYEES"), "Employees"),
    f("CURRENCY_ID", CrmCurrency, "Currency"),
    f("REVENUE", Double, "Annual revenue"),
    f("BANKING_DETAILS", Str, "Payment details"),
    f("OPENED", Char, "Available to everyone"),
    f("COMMENTS", Str, "Comment"),
    ro("HAS_PHONE", Char, "Has phone"),
    ro("HAS_EMAIL", Char, "Has email"),
    ro("HAS_IMOL", Char, "Has Open Channel"),
    f("IS_MY_COMPANY", Char, "My company"),
    f("ASSIGNED_BY_ID", User, "Responsible person"),
    ro("CREATED_BY_ID", User, "Created by"),
    ro("MODIFY_BY_ID", User, "Modified by"),
    ro("DATE_CREATE", DateTime, "Created on"),
    ro("DATE_MODIFY", DateTime, "Modified on"),
    unlisted("CONTACT_ID", CrmContact, "Contact"),
    ro("LEAD_ID", CrmLead, "Lead"),
    f("ORIGINATOR_ID", Str, "External source"),
    f("ORIGIN_ID", Str, "Item ID in data source"),
    f("ORIGIN_VERSION", Str, "Original version"),
    f("UTM_SOURCE", Str, "Ad system"),
    f("UTM_MEDIUM", Str, "Traffic type"),
    f("UTM_CAMPAIGN", Str, "Ad campaign UTM"),
    f("UTM_CONTENT", Str, "Campaign contents"),
    f("UTM_TERM", Str, "Campaign search term"),
    f("LAST_ACTIVITY_TIME", DateTime, "Last Activity Time"),
    f("LAST_ACTIVITY_BY", User, "Last Activity Author"),
    ro("LAST_COMMUNICATION_TIME", Str, "Last Communication Date"),
    multi("PHONE", Multifield, "Phone"),
    multi("EMAIL", Multifield, "E-mail"),
    multi("WEB", Multifield, "Website"),
    multi("IM", Multifield, "Messenger"),
    multi("LINK", Multifield, "LINK"),
    f("UF_CRM_1740000000001", UfInteger, "Branches"),
    f("UF_CRM_1740000000002", UfUrl, "Price list"),
    f("UF_CRM_1740000000003", UfDouble, "Credit score"),
];

/// The fields of an entity, in `crm.<entity>.fields` order.
pub fn fields(entity: Entity) -> &'static [FieldDef] {
    match entity {
        Entity::Lead => data::FIELDS,
        Entity::Deal => DEAL_FIELDS,
        Entity::Contact => CONTACT_FIELDS,
        Entity::Company => COMPANY_FIELDS,
    }
}

/// Deal funnels (`crm.category.list`, entityTypeId 2): (id, name, sort). 0 is the default funnel.
pub const DEAL_CATEGORIES: &[(i64, &str, i64)] = &[(0, "General", 100), (1, "Wholesale", 200), (2, "Tenders", 300)];

/// A funnel's stages: (STATUS_ID, NAME, SORT, SEMANTICS `P`/`S`/`F`). Non-default funnels prefix `C<id>:`.
pub fn deal_stages(category: i64) -> Vec<(String, &'static str, i64, &'static str)> {
    const BASE: &[(&str, &str, i64, &str)] = &[
        ("NEW", "New", 10, "P"),
        ("PREPARATION", "Document preparation", 20, "P"),
        ("PREPAYMENT_INVOICE", "Invoice", 30, "P"),
        ("EXECUTING", "In progress", 40, "P"),
        ("FINAL_INVOICE", "Final invoice", 50, "P"),
        ("WON", "Deal won", 60, "S"),
        ("LOSE", "Deal lost", 70, "F"),
        ("APOLOGY", "Analyze failure", 80, "F"),
    ];
    // the Tenders funnel skips two stages: funnels have their own stage lists
    BASE.iter()
        .filter(|(id, ..)| category != 2 || !matches!(*id, "PREPAYMENT_INVOICE" | "FINAL_INVOICE"))
        .map(|(id, name, sort, sem)| (if category == 0 { id.to_string() } else { format!("C{category}:{id}") }, *name, *sort, *sem))
        .collect()
}

/// Status dictionaries of the other entities: (ENTITY_ID, STATUS_ID, NAME, SORT).
pub const OTHER_STATUSES: &[(&str, &str, &str, i64)] = &[
    ("DEAL_TYPE", "SALE", "Sales", 10),
    ("DEAL_TYPE", "COMPLEX", "Complex sale", 20),
    ("DEAL_TYPE", "GOODS", "Sale of goods", 30),
    ("DEAL_TYPE", "SERVICES", "Sale of services", 40),
    ("DEAL_TYPE", "SERVICE", "After-sales service", 50),
    ("CONTACT_TYPE", "CLIENT", "Clients", 10),
    ("CONTACT_TYPE", "SUPPLIER", "Suppliers", 20),
    ("CONTACT_TYPE", "PARTNER", "Partners", 30),
    ("CONTACT_TYPE", "OTHER", "Other", 40),
    ("COMPANY_TYPE", "CUSTOMER", "Client", 10),
    ("COMPANY_TYPE", "SUPPLIER", "Supplier", 20),
    ("COMPANY_TYPE", "COMPETITOR", "Competitor", 30),
    ("COMPANY_TYPE", "PARTNER", "Partner", 40),
    ("COMPANY_TYPE", "OTHER", "Other", 50),
    ("INDUSTRY", "IT", "Information Technology", 10),
    ("INDUSTRY", "TELECOM", "Telecommunication", 20),
    ("INDUSTRY", "MANUFACTURING", "Manufacturing", 30),
    ("INDUSTRY", "BANKING", "Banking Services", 40),
    ("INDUSTRY", "CONSULTING", "Consulting", 50),
    ("INDUSTRY", "OTHER", "Other", 60),
    ("EMPLOYEES", "EMPLOYEES_1", "fewer than 50", 10),
    ("EMPLOYEES", "EMPLOYEES_2", "50-250", 20),
    ("EMPLOYEES", "EMPLOYEES_3", "250-500", 30),
    ("EMPLOYEES", "EMPLOYEES_4", "over 500", 40),
];

fn codes(entity_id: &str) -> Vec<&'static str> {
    OTHER_STATUSES.iter().filter(|(e, ..)| *e == entity_id).map(|(_, id, ..)| *id).collect()
}

/// How many records of each kind a portal has, for references between them.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub contacts: usize,
    pub companies: usize,
    pub leads: usize,
}

fn reference(r: &mut Rng, n: usize) -> i64 {
    // the generated IDs grow by about 2.4 per record (runs of deleted records): stay inside the range
    1 + r.below((n as u64 * 2).max(1)) as i64
}

/// The typed values of record `id` of `entity`, in [`fields`] order. `position`/`count` spread creation dates.
pub fn truth(entity: Entity, seed: u64, id: i64, position: usize, count: usize, sizes: Sizes) -> Vec<Truth> {
    if entity == Entity::Lead {
        return data::lead_truth(seed, id, position, count);
    }
    let salt = (entity.entity_type_id() as u64).wrapping_mul(0x5851_F42D_4C95_7F2D);
    let mut r = Rng::new(seed ^ salt, id);
    let created = data::T0 + (data::SPAN as i128 * position as i128 / count.max(1) as i128) as i64 + r.below(86_400 * 3) as i64;
    let modified = created + r.below(86_400 * 90) as i64;
    let category = DEAL_CATEGORIES[r.below(DEAL_CATEGORIES.len() as u64 + 2) as usize % DEAL_CATEGORIES.len()].0;
    let stages = deal_stages(category);
    let (stage, _, _, semantic) = stages[r.below(stages.len() as u64) as usize].clone();
    let with_multi = entity != Entity::Deal;
    let phones: Vec<Multi> = if with_multi {
        (0..r.below(3)).map(|k| Multi { id: id * 10 + k as i64, value_type: "WORK".into(), value: format!("+4930{}", 100_000 + r.below(900_000)), type_id: "PHONE" }).collect()
    } else {
        Vec::new()
    };
    let emails: Vec<Multi> = if with_multi && r.chance(70) {
        vec![Multi { id: id * 10 + 5, value_type: "WORK".into(), value: format!("{}{id}@example.net", entity.name()), type_id: "EMAIL" }]
    } else {
        Vec::new()
    };
    let webs: Vec<Multi> = if with_multi && r.chance(30) {
        vec![Multi { id: id * 10 + 7, value_type: "WORK".into(), value: format!("https://{}{id}.example.org", entity.name()), type_id: "WEB" }]
    } else {
        Vec::new()
    };
    let ims: Vec<Multi> = if with_multi && r.chance(10) {
        vec![Multi { id: id * 10 + 8, value_type: "TELEGRAM".into(), value: format!("@{}{id}", entity.name()), type_id: "IM" }]
    } else {
        Vec::new()
    };
    fn maybe(r: &mut Rng, pct: u64, f: impl FnOnce(&mut Rng) -> Truth) -> Truth {
        if r.chance(pct) {
            f(r)
        } else {
            Truth::Null
        }
    }
    let mut out = Vec::new();
    for def in fields(entity) {
        let t = match def.name {
            "ID" => Truth::Int(id),
            "TITLE" if entity == Entity::Company => Truth::Str(format!("{} {} GmbH", r.pick(data::LAST), id)),
            "TITLE" => Truth::Str(format!("{} #{id}", r.pick(data::WORDS))),
            "NAME" => Truth::Str(r.pick(data::FIRST).to_string()),
            "LAST_NAME" => Truth::Str(r.pick(data::LAST).to_string()),
            "SECOND_NAME" => maybe(&mut r, 10, |_| Truth::Str("Maria".into())),
            "HONORIFIC" => maybe(&mut r, 40, |r| Truth::Str(r.pick(data::HONORIFICS).to_string())),
            "CATEGORY_ID" => Truth::Int(category),
            "STAGE_ID" => Truth::Str(stage.clone()),
            "STAGE_SEMANTIC_ID" => Truth::Str(semantic.to_string()),
            "CLOSED" => Truth::Bool(semantic != "P"),
            "PROBABILITY" => maybe(&mut r, 60, |r| Truth::Int(r.below(101) as i64)),
            "OPPORTUNITY" | "REVENUE" => Truth::Cents(if r.chance(15) { 0 } else { r.below(50_000_000_000) as i64 }),
            "TAX_VALUE" => Truth::Cents(r.below(2_000_000) as i64),
            "BEGINDATE" => Truth::Date((created / 86_400) as i32),
            "CLOSEDATE" => Truth::Date((created / 86_400 + 7 + r.below(120) as i64) as i32),
            "COMPANY_ID" => Truth::Int(if r.chance(30) { 0 } else { reference(&mut r, sizes.companies) }),
            "CONTACT_ID" if def.multiple => Truth::List(vec![]),
            "CONTACT_ID" => maybe(&mut r, 70, |r| Truth::Int(reference(r, sizes.contacts))),
            "LEAD_ID" => maybe(&mut r, 40, |r| Truth::Int(reference(r, sizes.leads))),
            "QUOTE_ID" => maybe(&mut r, 10, |r| Truth::Int(1 + r.below(300) as i64)),
            "CONTACT_IDS" | "COMPANY_IDS" => Truth::List(vec![]),
            "HAS_PHONE" => Truth::Bool(!phones.is_empty()),
            "HAS_EMAIL" => Truth::Bool(!emails.is_empty()),
            "HAS_IMOL" => Truth::Bool(false),
            "IS_MY_COMPANY" => Truth::Bool(id % 97 == 1),
            "PHONE" => Truth::Multi(phones.clone()),
            "EMAIL" => Truth::Multi(emails.clone()),
            "WEB" => Truth::Multi(webs.clone()),
            "IM" => Truth::Multi(ims.clone()),
            "LINK" => Truth::Multi(Vec::new()),
            "PHOTO" | "LOGO" => maybe(&mut r, 25, |_| Truth::File { id: 20_000 + id }),
            "DATE_CREATE" => Truth::DateTime(created),
            "DATE_MODIFY" => Truth::DateTime(modified),
            "MOVED_TIME" => Truth::DateTime(created + r.below(86_400 * 10) as i64),
            "LAST_ACTIVITY_TIME" => Truth::DateTime(modified),
            "COMMENTS" => maybe(&mut r, 25, |r| Truth::Str(format!("<p>{} «{id}»</p>", r.pick(data::WORDS)))),
            "ORIGINATOR_ID" | "ORIGIN_ID" | "ORIGIN_VERSION" | "UTM_CONTENT" | "UTM_TERM" | "LOCATION_ID" | "LAST_COMMUNICATION_TIME" => {
                Truth::Null
            }
            "UTM_SOURCE" => maybe(&mut r, 30, |_| Truth::Str("google".into())),
            "UTM_MEDIUM" => maybe(&mut r, 30, |_| Truth::Str("cpc".into())),
            "UTM_CAMPAIGN" => maybe(&mut r, 20, |_| Truth::Str("spring_2025".into())),
            _ => generic(&mut r, def, id, created),
        };
        out.push(t);
    }
    out
}

/// A value by field type, for fields with nothing special about them.
fn generic(r: &mut Rng, def: &FieldDef, id: i64, created: i64) -> Truth {
    let t = match def.ftype {
        Str | UfString => Truth::Str(format!("{} {id}", r.pick(data::WORDS))),
        UfUrl => Truth::Str(format!("https://example.com/{id}/price.pdf")),
        Char => Truth::Bool(r.chance(50)),
        UfBoolean => Truth::Bool(r.chance(50)),
        Integer | UfInteger => Truth::Int(r.below(1000) as i64),
        User | UfEmployee if def.multiple => return Truth::List((0..r.below(3)).map(|k| Truth::Int(1 + k as i64 * 13 + r.below(13) as i64)).collect()),
        User => return Truth::Int(1 + r.below(40) as i64), // a record always has its people
        UfEmployee => Truth::Int(1 + r.below(40) as i64),
        Double | UfDouble => Truth::Float(r.below(100_000) as f64 / 4.0),
        CrmCurrency => Truth::Str(r.pick(data::CURRENCIES).to_string()),
        CrmStatus("SOURCE") => Truth::Str(r.pick(data::SOURCES).to_string()),
        CrmStatus(st) => {
            let codes = codes(st);
            if codes.is_empty() {
                Truth::Null
            } else {
                Truth::Str(r.pick(&codes).to_string())
            }
        }
        Date | UfDate => Truth::Date((created / 86_400 + r.below(365) as i64) as i32),
        DateTime | UfDateTime => Truth::DateTime(created + r.below(86_400 * 30) as i64),
        UfEnumeration if def.multiple => {
            return Truth::List(data::INTEREST_ITEMS.iter().filter(|_| r.chance(30)).map(|(i, _)| Truth::Int(*i)).collect())
        }
        UfEnumeration => Truth::Int(r.pick(data::SEGMENT_ITEMS).0),
        UfMoney => Truth::Money { cents: r.below(10_000_000) as i64, currency: r.pick(data::CURRENCIES).to_string() },
        _ => Truth::Null,
    };
    if r.chance(80) {
        t
    } else {
        Truth::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_a_value_of_its_type_somewhere() {
        let sizes = Sizes { contacts: 100, companies: 100, leads: 100 };
        for entity in [Entity::Deal, Entity::Contact, Entity::Company] {
            let rows: Vec<Vec<Truth>> = (1..400).map(|id| truth(entity, 3, id, id as usize, 400, sizes)).collect();
            assert_eq!(rows[0], truth(entity, 3, 1, 1, 400, sizes), "deterministic");
            for (i, def) in fields(entity).iter().enumerate() {
                let never_set = matches!(
                    def.name,
                    "ORIGINATOR_ID" | "ORIGIN_ID" | "ORIGIN_VERSION" | "UTM_CONTENT" | "UTM_TERM" | "LOCATION_ID" | "HAS_IMOL" | "LINK" | "LAST_COMMUNICATION_TIME"
                )
                    || !def.listed;
                let some = rows.iter().any(|r| !matches!(&r[i], Truth::Null | Truth::List(_)) || matches!(&r[i], Truth::List(l) if !l.is_empty()));
                assert!(some || never_set, "{entity}: {} is never set", def.name);
            }
        }
        // stages belong to the deal's funnel
        let stage = DEAL_FIELDS.iter().position(|f| f.name == "STAGE_ID").unwrap();
        let cat = DEAL_FIELDS.iter().position(|f| f.name == "CATEGORY_ID").unwrap();
        for id in 1..200 {
            let t = truth(Entity::Deal, 1, id, 0, 1, sizes);
            match (&t[cat], &t[stage]) {
                (Truth::Int(0), Truth::Str(s)) => assert!(!s.starts_with('C'), "{s}"),
                (Truth::Int(c), Truth::Str(s)) => assert!(s.starts_with(&format!("C{c}:")), "{s}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
