//! b24-export: Bitrix24 CRM → typed, hive-partitioned Parquet.
//!
//! Data flows one way: [`client`] (portal transport) → [`plan`] (ID-cursor pages) → [`convert`]
//! (JSON → Arrow, typed by [`schema`]) → [`sink`] (partitioned Parquet files). [`export`] wires the stages,
//! [`raw`] keeps page bodies for `convert`, [`sim`] is the simulated portal used by the demo and the tests.

pub mod client;
pub mod convert;
pub mod dict;
pub mod entity;
pub mod error;
pub mod export;
pub mod item;
pub mod plan;
pub mod progress;
pub mod raw;
pub mod schema;
pub mod secret;
pub mod sim;
pub mod sink;
