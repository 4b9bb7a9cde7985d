//! The CRM entities the tool exports — leads, deals, contacts, companies — and what differs between them: the
//! legacy methods, the `crm.item.*` entity type, the dataset folder, the declared mappings in `schemas/` and
//! the partitioning default. Everything else (planner, types, sinks, manifests, incremental mode) is shared.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::sink::partition::{Grain, PartitionSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Lead,
    Deal,
    Contact,
    Company,
}

pub const ENTITY_CHOICES: &str = "lead, deal, contact, company, all";

impl Entity {
    pub const ALL: [Entity; 4] = [Entity::Lead, Entity::Deal, Entity::Contact, Entity::Company];

    /// `lead`, `deal`, … as `--entity` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Lead => "lead",
            Entity::Deal => "deal",
            Entity::Contact => "contact",
            Entity::Company => "company",
        }
    }

    /// The dataset folder under the output root, and the name of its manifests and dictionary files.
    /// The key of the record ID in the rejects file (`lead_id`, `deal_id`, …).
    pub fn id_key(self) -> &'static str {
        match self {
            Entity::Lead => "lead_id",
            Entity::Deal => "deal_id",
            Entity::Contact => "contact_id",
            Entity::Company => "company_id",
        }
    }

    pub fn dataset(self) -> &'static str {
        match self {
            Entity::Lead => "leads",
            Entity::Deal => "deals",
            Entity::Contact => "contacts",
            Entity::Company => "companies",
        }
    }

    /// The entity whose dataset folder is `dataset` (`leads` → lead).
    pub fn of_dataset(dataset: &str) -> Option<Entity> {
        Entity::ALL.into_iter().find(|e| e.dataset() == dataset)
    }

    /// `crm.item.*` `entityTypeId` (shared/bitrix24-api.md §10–§11).
    pub fn entity_type_id(self) -> i64 {
        match self {
            Entity::Lead => 1,
            Entity::Deal => 2,
            Entity::Contact => 3,
            Entity::Company => 4,
        }
    }

    /// The legacy list method, e.g. `crm.deal.list`.
    pub fn list_method(self) -> &'static str {
        match self {
            Entity::Lead => "crm.lead.list",
            Entity::Deal => "crm.deal.list",
            Entity::Contact => "crm.contact.list",
            Entity::Company => "crm.company.list",
        }
    }

    /// The legacy field metadata method, e.g. `crm.deal.fields`.
    pub fn fields_method(self) -> &'static str {
        match self {
            Entity::Lead => "crm.lead.fields",
            Entity::Deal => "crm.deal.fields",
            Entity::Contact => "crm.contact.fields",
            Entity::Company => "crm.company.fields",
        }
    }

    /// The declared column mapping of the standard fields (`schemas/<entity>.json`).
    pub fn mapping(self) -> &'static str {
        match self {
            Entity::Lead => include_str!("../schemas/lead.json"),
            Entity::Deal => include_str!("../schemas/deal.json"),
            Entity::Contact => include_str!("../schemas/contact.json"),
            Entity::Company => include_str!("../schemas/company.json"),
        }
    }

    /// Whether the declared mapping has a standard field (`STAGE_ID`), to check options before any request.
    pub fn declares(self, field: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Declared {
            fields: Vec<Named>,
        }
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
        }
        serde_json::from_str::<Declared>(self.mapping()).is_ok_and(|d| d.fields.iter().any(|f| f.name == field))
    }

    /// The legacy ⇄ `crm.item` name map (`schemas/<entity>_item.json`).
    pub fn item_mapping(self) -> &'static str {
        match self {
            Entity::Lead => include_str!("../schemas/lead_item.json"),
            Entity::Deal => include_str!("../schemas/deal_item.json"),
            Entity::Contact => include_str!("../schemas/contact_item.json"),
            Entity::Company => include_str!("../schemas/company_item.json"),
        }
    }

    /// The partitioning when `--partition-by` is not given: by month of creation for the high-volume leads and
    /// deals, by year for contacts and companies (a month folder would hold a handful of rows).
    pub fn default_partition(self) -> PartitionSpec {
        match self {
            Entity::Lead | Entity::Deal => PartitionSpec::DateCreate(Grain::Month),
            Entity::Contact | Entity::Company => PartitionSpec::DateCreate(Grain::Year),
        }
    }

    /// `--entity` values: names (singular or the dataset's plural) and `all`, comma-separated or repeated; in
    /// the order given, without repeats.
    pub fn parse_list<S: AsRef<str>>(values: &[S]) -> Result<Vec<Entity>> {
        let mut out = Vec::new();
        for v in values {
            for part in v.as_ref().split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let add: Vec<Entity> = if part.eq_ignore_ascii_case("all") { Entity::ALL.to_vec() } else { vec![part.parse()?] };
                for e in add {
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
            }
        }
        if out.is_empty() {
            out.push(Entity::Lead);
        }
        Ok(out)
    }
}

impl FromStr for Entity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Entity> {
        let s = s.trim().to_ascii_lowercase();
        Entity::ALL
            .into_iter()
            .find(|e| e.name() == s || e.dataset() == s)
            .ok_or_else(|| Error::Usage(format!("unknown --entity {s:?}; choose from: {ENTITY_CHOICES}")))
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_lists() {
        assert_eq!(Entity::parse_list(&["deal", "lead"]).unwrap(), [Entity::Deal, Entity::Lead]);
        assert_eq!(Entity::parse_list(&["contacts,company", "contact"]).unwrap(), [Entity::Contact, Entity::Company]);
        assert_eq!(Entity::parse_list(&["all"]).unwrap(), Entity::ALL);
        assert_eq!(Entity::parse_list::<&str>(&[]).unwrap(), [Entity::Lead]);
        assert!(matches!(Entity::parse_list(&["invoice"]), Err(Error::Usage(m)) if m.contains("invoice")));
        assert!(Entity::Deal.declares("STAGE_ID") && !Entity::Lead.declares("STAGE_ID") && Entity::Company.declares("COMPANY_TYPE"));
        assert!(Entity::ALL.iter().all(|e| e.declares("DATE_CREATE") && e.declares("DATE_MODIFY")));
        for e in Entity::ALL {
            assert_eq!(Entity::of_dataset(e.dataset()), Some(e));
            let m: serde_json::Value = serde_json::from_str(e.mapping()).unwrap();
            assert_eq!(m["dataset"], e.dataset());
            assert_eq!(m["list_method"], e.list_method());
            let i: serde_json::Value = serde_json::from_str(e.item_mapping()).unwrap();
            assert_eq!(i["entity_type_id"], e.entity_type_id());
        }
    }
}
