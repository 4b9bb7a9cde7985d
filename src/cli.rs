//! The command line (part of the binary, not the library): argument parsing and wiring only; the work is in
//! the library.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

use b24_export::client::auth::{AuthConfig, OAuthConfig};
use b24_export::client::ClientConfig;
use b24_export::entity::{Entity, ENTITY_CHOICES};
use b24_export::error::{Error, Result};
use b24_export::export::{self, ExportOptions, ExportSummary};
use b24_export::secret::Webhook;
use b24_export::sim::data::IdLayout;
use b24_export::sim::{SimConfig, SimPortal};
use b24_export::sink::output::{Output, S3Options};
use b24_export::sink::partition::PartitionSpec;

#[derive(Parser, Debug)]
#[command(name = "b24-export", version, about = "Export Bitrix24 CRM leads, deals, contacts and companies into typed, hive-partitioned Parquet")]
pub struct Cli {
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Export every lead (or deal, contact, company; or a filtered subset) into OUT/leads/ (OUT/deals/, …).
    Export(Box<ExportArgs>),
    /// Run the simulated portal on 127.0.0.1 until interrupted.
    Sim(SimArgs),
    /// Start a simulated portal in-process, export it into ./demo-out and show how to query it.
    Demo(DemoArgs),
    /// Print the columns an export would write: name, Arrow type, DuckDB type, Bitrix type, label.
    Schema(SchemaArgs),
    /// Print a DuckDB query that reads exactly the files of the latest committed snapshot in OUT.
    Sql(SqlArgs),
    /// Rebuild the typed dataset from a raw landing zone (written by export --raw-out), without the portal.
    Convert(ConvertArgs),
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The raw landing zone: a run folder (with run.json) or its parent (the latest complete run is taken);
    /// a directory, file://… or s3://….
    pub raw: String,
    /// Output location (as for export); the dataset is written to OUT/<dataset>/ (the raw run's entity).
    #[arg(long)]
    pub out: String,
    /// Hive partitioning (as for export; default: the entity's default).
    #[arg(long)]
    pub partition_by: Option<String>,
    /// The entity whose latest full raw run to convert, when RAW holds runs of several (default: lead; a run
    /// folder's own entity when RAW is a run folder).
    #[arg(long)]
    pub entity: Option<String>,
    /// Replace an existing dataset in OUT/<dataset>.
    #[arg(long)]
    pub overwrite: bool,
    /// Stop at the first value that does not fit its column.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// The output location of the exports: a directory, file://… or s3://bucket/prefix.
    pub out: String,
    /// The dataset.
    #[arg(long, default_value = "leads")]
    pub dataset: String,
    #[command(flatten)]
    pub s3: S3Args,
}

/// Object-store options (credentials come from the AWS environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_SESSION_TOKEN, AWS_REGION, AWS_PROFILE with ~/.aws/credentials and ~/.aws/config).
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// An S3-compatible endpoint (MinIO, Ceph, R2…), e.g. https://minio.internal:9000; also AWS_ENDPOINT_URL.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Allow a plain http:// endpoint that is not on loopback (data and signed requests travel unencrypted).
    #[arg(long)]
    pub s3_allow_http: bool,
    /// The bucket's region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's region, us-east-1).
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Multipart upload part size in bytes (S3 wants at least 5 MiB; two parts are in flight at most).
    #[arg(long, default_value_t = 8 << 20)]
    pub s3_part_size: usize,
}

impl S3Args {
    fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            allow_http: self.s3_allow_http,
            region: self.s3_region.clone(),
            part_size: self.s3_part_size,
        }
    }
}

#[derive(Args, Debug)]
pub struct SchemaArgs {
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The entity: lead, deal, contact or company.
    #[arg(long, default_value = "lead")]
    pub entity: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SchemaFormat::Table)]
    pub format: SchemaFormat,
    /// Only these fields (as for export).
    #[arg(long, value_delimiter = ',')]
    pub select: Option<Vec<String>>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaFormat {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct LimitArgs {
    /// The portal's plan, which sets the request limits: standard (burst 50, 2 requests/s) or enterprise (250, 5/s).
    #[arg(long, default_value = "standard", value_parser = ["standard", "enterprise"])]
    pub plan: String,
    /// Requests per second the client allows itself (overrides the plan).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests the client may send in a burst (overrides the plan).
    #[arg(long)]
    pub burst: Option<f64>,
    /// Retries of a transient failure (503, 429, 5xx, timeouts, broken connections) before giving up.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    /// Per-request timeout in seconds (the cloud portal cuts requests at 60 s).
    #[arg(long, default_value_t = 75)]
    pub timeout: u64,
    /// Batch requests in flight at most (each carries up to 50 list calls); fewer on small portals.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The portal's operating-time budget per method, in seconds per 10 minutes (cloud: 480).
    #[arg(long, default_value_t = 480)]
    pub operating_limit: u64,
    /// How long, in all, to wait for methods the portal blocked (429 OPERATION_TIME_LIMIT), in seconds.
    #[arg(long, default_value_t = 1200)]
    pub max_pause: u64,
}

/// How to reach the portal: an inbound webhook, or an OAuth app (tokens only from the environment or a file,
/// never from the command line, where other users could see them).
#[derive(Args, Debug)]
pub struct AuthArgs {
    /// Inbound webhook URL: https://<portal>/rest/<user id>/<code>/ (the code is never printed).
    #[arg(long, env = "B24_WEBHOOK_URL", hide_env_values = true)]
    pub webhook: Option<String>,
    /// The portal of an OAuth app, e.g. https://yourcompany.bitrix24.com; tokens come from B24_ACCESS_TOKEN,
    /// B24_REFRESH_TOKEN, B24_CLIENT_ID and B24_CLIENT_SECRET (or --token-file).
    #[arg(long)]
    pub portal: Option<String>,
    /// With --portal: a JSON file that keeps the rotated token pair; read at start, rewritten atomically after
    /// every refresh (the refresh token changes each time).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// With --portal: the OAuth token server.
    #[arg(long, default_value = "https://oauth.bitrix.info")]
    pub oauth_server: String,
}

fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Validates the way in, before any request.
pub fn auth_config(a: &AuthArgs) -> Result<AuthConfig> {
    match (&a.webhook, &a.portal) {
        (Some(_), Some(_)) => Err(Error::Usage(
            "give either --webhook (or B24_WEBHOOK_URL) or --portal (an OAuth app), not both; unset B24_WEBHOOK_URL to use --portal".into(),
        )),
        (None, None) => Err(Error::Usage(
            "no portal to export from: give --webhook URL (or set B24_WEBHOOK_URL), or --portal URL with B24_ACCESS_TOKEN for an OAuth app".into(),
        )),
        (Some(w), None) => {
            if a.token_file.is_some() {
                return Err(Error::Usage("--token-file belongs to --portal (OAuth); a webhook needs no tokens".into()));
            }
            Ok(AuthConfig::Webhook(Webhook::parse(w)?))
        }
        (None, Some(p)) => Ok(AuthConfig::OAuth(OAuthConfig::new(
            p,
            env_secret("B24_ACCESS_TOKEN"),
            env_secret("B24_REFRESH_TOKEN"),
            env_secret("B24_CLIENT_ID"),
            env_secret("B24_CLIENT_SECRET"),
            a.token_file.clone(),
            &a.oauth_server,
        )?)),
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Output location: a directory, file://… or s3://bucket/prefix; each entity's dataset is written to its folder
    /// (OUT/leads/, OUT/deals/, OUT/contacts/, OUT/companies/).
    #[arg(long)]
    pub out: String,
    /// What to export: lead, deal, contact, company, or all; repeat the option or separate with commas. Entities
    /// run one after the other, each committed on its own; --select, --filter and --partition-by apply to each.
    #[arg(long, value_delimiter = ',', default_value = "lead")]
    pub entity: Vec<String>,
    #[command(flatten)]
    pub s3: S3Args,
    /// Continue the latest interrupted run in OUT from its last checkpoint; with none, a committed snapshot stays as
    /// it is ("nothing to resume") and an empty OUT gets a new run.
    #[arg(long)]
    pub resume: bool,
    /// Seconds between checkpoints (finished files moved to the output, progress saved for --resume).
    #[arg(long, default_value_t = 60.0)]
    pub checkpoint_every: f64,
    /// Fetch only leads modified since the last committed snapshot and merge them into it (each lead once,
    /// latest values). Without a committed snapshot, a full one is exported.
    #[arg(long, conflicts_with_all = ["resume", "overwrite"])]
    pub incremental: bool,
    /// With --incremental: the watermark to use instead of the last snapshot's highest DATE_MODIFY, e.g.
    /// 2026-11-28T00:00:00+00:00.
    #[arg(long, requires = "incremental")]
    pub since: Option<String>,
    /// With --incremental: seconds to fetch before the watermark (clocks differ; times have second precision).
    #[arg(long, default_value_t = 300, requires = "incremental")]
    pub overlap: u64,
    /// With --incremental: list every ID the portal has (select ID only) and remove leads it no longer has.
    #[arg(long, requires = "incremental")]
    pub detect_deletes: bool,
    /// With --detect-deletes: keep the rows of deleted leads, with a deleted_at timestamp, instead of removing them.
    #[arg(long, requires = "detect_deletes")]
    pub keep_deleted: bool,
    /// The list method: lead (the legacy crm.lead.list, crm.deal.list, …), item (crm.item.list, their successor),
    /// or auto (crm.item.list where the portal has it and it serves every requested field, the legacy one otherwise).
    #[arg(long, default_value = "auto", value_parser = ["auto", "lead", "item"])]
    pub api: String,
    /// Also keep every page body as it came (zstd JSON lines) with the run's field metadata under RAW/<run id>/,
    /// for `b24-export convert` (a directory, file://… or s3://…).
    #[arg(long)]
    pub raw_out: Option<String>,
    /// Hive partitioning: none, date_create:year, date_create:month, date_create:day, or a code column: status_id
    /// (leads), stage_id (deals), type_id (deals, contacts), company_type (companies), source_id (leads, deals,
    /// contacts). Default: date_create:month for leads and deals, date_create:year for contacts and companies.
    #[arg(long)]
    pub partition_by: Option<String>,
    /// A legacy list filter object, e.g. '{">=DATE_CREATE": "2024-01-01", "!STATUS_ID": "JUNK"}'.
    #[arg(long)]
    pub filter: Option<String>,
    /// Comma-separated fields to export (ID is always kept), e.g. TITLE,STATUS_ID,OPPORTUNITY,PHONE.
    #[arg(long, value_delimiter = ',')]
    pub select: Option<Vec<String>>,
    /// Replace an existing dataset in OUT/<dataset> (removed once the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
    /// Stop at the first value that does not fit its column (default: write NULL and list it in OUT/_rejects/).
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Number of leads.
    #[arg(long, default_value_t = 100_000)]
    pub leads: usize,
    /// Number of deals.
    #[arg(long, default_value_t = 50_000)]
    pub deals: usize,
    /// Number of contacts.
    #[arg(long, default_value_t = 40_000)]
    pub contacts: usize,
    /// Number of companies.
    #[arg(long, default_value_t = 10_000)]
    pub companies: usize,
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    /// Seed of the deterministic data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The portal's UTC offset, e.g. +02:00 or -05:00.
    #[arg(long, default_value = "+02:00", allow_hyphen_values = true)]
    pub tz_offset: String,
    /// The plan's limits: standard (burst 50, 2 requests/s) or enterprise (250, 5/s).
    #[arg(long, default_value = "standard", value_parser = ["standard", "enterprise"])]
    pub plan: String,
    /// Leaky bucket size (overrides the plan).
    #[arg(long)]
    pub burst: Option<f64>,
    /// Leaky bucket drain rate per second (overrides the plan).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Server time per list call in milliseconds, charged to the operating budget (a batch of 50 costs 50×).
    #[arg(long, default_value_t = 0)]
    pub list_cost_ms: u64,
    /// Operating budget per method in seconds per window (0 = off).
    #[arg(long, default_value_t = 480)]
    pub operating_limit: u64,
    /// The operating budget's window in seconds.
    #[arg(long, default_value_t = 600)]
    pub operating_window: u64,
    /// How IDs are spread: realistic, dense, sparse, huge-gap.
    #[arg(long, default_value = "realistic", value_parser = ["realistic", "dense", "sparse", "huge-gap"])]
    pub id_layout: String,
    /// Boolean user fields as JSON true/false instead of "1"/"0".
    #[arg(long)]
    pub bool_uf_json: bool,
    /// Extra latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of leads in the simulated portal.
    #[arg(long, default_value_t = 100_000)]
    pub leads: usize,
    /// Output directory (its leads/ dataset is replaced).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Seed of the deterministic data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// `+02:00` → 7200.
pub fn parse_offset(s: &str) -> Result<i32> {
    let bad = || Error::Usage(format!("--tz-offset {s:?}: expected ±HH:MM, e.g. +02:00"));
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

fn parse_filter(raw: Option<&str>) -> Result<Map<String, Value>> {
    let Some(raw) = raw else { return Ok(Map::new()) };
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Usage("--filter must be a JSON object, e.g. '{\">=DATE_CREATE\": \"2024-01-01\"}'".into())),
        Err(e) => Err(Error::Usage(format!("--filter is not valid JSON ({e}); e.g. '{{\"!STATUS_ID\": \"JUNK\"}}'"))),
    }
}

fn client_config(l: &LimitArgs) -> Result<ClientConfig> {
    let plan = ClientConfig::for_plan(&l.plan).ok_or_else(|| Error::Usage(format!("unknown --plan {:?}", l.plan)))?;
    let rate = l.rate.unwrap_or(plan.rate);
    let burst = l.burst.unwrap_or(plan.burst);
    if rate.is_nan() || rate <= 0.0 || burst.is_nan() || burst < 1.0 {
        return Err(Error::Usage("--rate must be > 0 and --burst >= 1".into()));
    }
    if l.concurrency == 0 || l.concurrency > 32 {
        return Err(Error::Usage("--concurrency must be between 1 and 32".into()));
    }
    Ok(ClientConfig {
        rate,
        burst,
        max_retries: l.max_retries,
        timeout: Duration::from_secs(l.timeout.max(1)),
        operating_limit: Duration::from_secs(l.operating_limit.max(1)),
        max_pause: Duration::from_secs(l.max_pause),
        ..plan
    })
}

/// Validates everything before any request is sent: one export per entity, in the order asked for.
pub fn export_options(a: &ExportArgs, progress: bool) -> Result<Vec<ExportOptions>> {
    let entities = Entity::parse_list(&a.entity)?;
    let partition: Option<PartitionSpec> = a.partition_by.as_deref().map(str::parse).transpose()?;
    if let Some(field) = partition.as_ref().and_then(PartitionSpec::source_field) {
        let lacking: Vec<&str> = entities.iter().filter(|e| !e.declares(field)).map(|e| e.dataset()).collect();
        if !lacking.is_empty() {
            return Err(Error::Usage(format!(
                "--partition-by {}: {} have no field {field}; run one command per entity with its own --partition-by",
                partition.as_ref().map(PartitionSpec::name).unwrap_or_default(),
                lacking.join(", ")
            )));
        }
    }
    let one = export_options_for(a, progress, entities[0])?;
    Ok(entities
        .iter()
        .map(|e| ExportOptions { entity: *e, partition: partition.clone().unwrap_or_else(|| e.default_partition()), ..one.clone() })
        .collect())
}

/// The options of one entity's run, with that entity's default partitioning (`export_options` sets both per entity).
fn export_options_for(a: &ExportArgs, progress: bool, entity: Entity) -> Result<ExportOptions> {
    let s3 = a.s3.options();
    Output::parse(&a.out, &s3).map_err(|e| Error::Usage(format!("--out {e}")))?;
    if !(a.checkpoint_every >= 0.0 && a.checkpoint_every.is_finite()) {
        return Err(Error::Usage(format!("--checkpoint-every {}: expected seconds, e.g. 60", a.checkpoint_every)));
    }
    let auth = auth_config(&a.auth)?;
    let partition = entity.default_partition();
    let filter = parse_filter(a.filter.as_deref())?;
    let select = a.select.as_ref().map(|v| v.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect::<Vec<_>>());
    if select.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(Error::Usage("--select is empty; name fields like TITLE,STATUS_ID or leave it out for all fields".into()));
    }
    let client = client_config(&a.limits)?;
    let since = match &a.since {
        None => None,
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&chrono::Utc))
                .map_err(|e| Error::Usage(format!("--since {t:?}: expected an RFC 3339 time such as 2026-11-28T00:00:00+00:00 ({e})")))?,
        ),
    };
    Ok(ExportOptions {
        auth,
        raw_out: a.raw_out.clone(),
        api: match a.api.as_str() {
            "lead" => export::Api::Lead,
            "item" => export::Api::Item,
            _ => export::Api::Auto,
        },
        incremental: a.incremental.then(|| export::IncrementalOptions {
            since,
            overlap: Duration::from_secs(a.overlap),
            detect_deletes: a.detect_deletes,
            keep_deleted: a.keep_deleted,
        }),
        out: a.out.clone(),
        entity,
        s3,
        resume: a.resume,
        checkpoint_every: Duration::from_secs_f64(a.checkpoint_every),
        partition,
        filter,
        select,
        client,
        concurrency: a.limits.concurrency,
        overwrite: a.overwrite,
        progress,
        strict: a.strict,
    })
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{x:.1} {}", units[u]) }
}

pub fn print_summary(s: &ExportSummary) {
    let mut out = std::io::stdout().lock();
    if s.nothing_to_resume {
        let _ = writeln!(
            out,
            "{}: nothing to resume; committed snapshot v{:06} ({} {}) stays as it is",
            s.dataset,
            s.manifest_version,
            s.leads,
            s.entity.dataset()
        );
        return;
    }
    let _ = writeln!(
        out,
        "exported {} {} into {} — {} files, {}, {} requests, {} retries, {:.1} s (run {})",
        s.leads,
        s.entity.dataset(),
        s.dataset,
        s.files.len(),
        human_bytes(s.bytes),
        s.requests,
        s.retries,
        s.seconds,
        s.run_id
    );
    if s.paused_secs > 0.0 || s.operating_blocks > 0 {
        let _ = writeln!(
            out,
            "paused {:.1} s for the portal's operating-time budget ({} OPERATION_TIME_LIMIT answers)",
            s.paused_secs, s.operating_blocks
        );
    }
    if let Some(f) = &s.rejects_file {
        let per_field: Vec<String> = s.rejects.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            out,
            "{} values did not fit their column and were written as NULL ({}); listed in {}",
            s.rejects.values().sum::<u64>(),
            per_field.join(", "),
            f
        );
    }
    if let Some(c) = &s.changes {
        let _ = writeln!(
            out,
            "incremental since {} into snapshot v{:06}: {} inserted, {} updated, {} deleted, {} unchanged ({} fetched again unchanged); {} files rewritten",
            c.since, c.base_version, c.inserted, c.updated, c.deleted, c.unchanged, c.refetched_unchanged, c.files_rewritten
        );
    }
    if s.resumed_leads > 0 {
        let _ = writeln!(out, "resumed an interrupted run: {} of these {} had been exported before it stopped", s.resumed_leads, s.entity.dataset());
    }
    let _ = writeln!(out, "committed snapshot v{:06} (`b24-export sql` prints a query that reads exactly it)", s.manifest_version);
    if s.replaced > 0 && s.changes.is_none() {
        let _ = writeln!(out, "replaced the previous dataset ({} files removed)", s.replaced);
    }
}

fn print_schema(cols: &[b24_export::schema::Column], format: SchemaFormat) {
    let rows: Vec<[String; 5]> = cols
        .iter()
        .map(|c| [c.name.clone(), c.kind.data_type().to_string(), c.kind.duckdb_type(), c.bitrix_type.clone(), c.label.clone()])
        .collect();
    let mut out = std::io::stdout().lock();
    if format == SchemaFormat::Json {
        let v: Vec<Value> = rows
            .iter()
            .map(|r| serde_json::json!({"column": r[0], "arrow_type": r[1], "duckdb_type": r[2], "bitrix_type": r[3], "label": r[4]}))
            .collect();
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    let head = ["column", "arrow type", "duckdb type", "bitrix type", "label"];
    let widths: Vec<usize> =
        (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([head[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: [&str; 5]| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(head));
    for r in &rows {
        let _ = writeln!(out, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Export(a) => {
            let runs = export_options(&a, !cli.quiet)?;
            let several = runs.len() > 1;
            // each entity is its own run and commit: one that fails does not stop the others; the exit code is
            // the first failure's
            let (total, mut failed, mut first_error) = (runs.len(), Vec::new(), None);
            for opts in runs {
                let entity = opts.entity;
                match export::run_export(opts) {
                    Ok(summary) => print_summary(&summary),
                    Err(e) if several => {
                        tracing::error!("{}: {e}", entity.dataset());
                        failed.push(entity.dataset());
                        first_error.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            match first_error {
                // each failure was reported above; the last line says which, without repeating them
                Some(first) => Err(Error::Several {
                    summary: format!("{} of {total} entities failed: {} (see above)", failed.len(), failed.join(", ")),
                    first: Box::new(first),
                }),
                None => Ok(()),
            }
        }
        Command::Convert(a) => {
            let s3 = a.s3.options();
            Output::parse(&a.raw, &s3)?;
            Output::parse(&a.out, &s3).map_err(|e| Error::Usage(format!("--out {e}")))?;
            let opts = export::ConvertOptions {
                raw: a.raw.clone(),
                out: a.out.clone(),
                s3,
                partition: a.partition_by.as_deref().map(str::parse).transpose()?,
                entity: a.entity.as_deref().map(str::parse).transpose()?,
                overwrite: a.overwrite,
                progress: !cli.quiet,
                strict: a.strict,
            };
            let summary = export::run_convert(opts)?;
            print_summary(&summary);
            Ok(())
        }
        Command::Sql(a) => {
            let out = Output::parse(&a.out, &a.s3.options())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
            let m = rt.block_on(b24_export::sink::manifest::latest(&out, &a.dataset))?.ok_or_else(|| {
                Error::Usage(format!("no committed snapshot of {} under {} (run an export first)", a.dataset, out.display("")))
            })?;
            println!("{}", b24_export::sink::manifest::duckdb_query(&out, &m));
            Ok(())
        }
        Command::Schema(a) => {
            let auth = auth_config(&a.auth)?;
            let entity: Entity = a.entity.parse().map_err(|_| Error::Usage(format!("unknown --entity {:?}; choose one of: {}", a.entity, ENTITY_CHOICES.trim_end_matches(", all"))))?;
            let cols = export::portal_columns(&auth, ClientConfig::default(), entity, a.select.as_deref())?;
            print_schema(&cols, a.format);
            Ok(())
        }
        Command::Sim(a) => {
            let base = if a.plan == "enterprise" { SimConfig::default().enterprise() } else { SimConfig::default() };
            let cfg = SimConfig {
                leads: a.leads,
                deals: a.deals,
                contacts: a.contacts,
                companies: a.companies,
                seed: a.seed,
                offset_secs: parse_offset(&a.tz_offset)?,
                burst: a.burst.unwrap_or(base.burst),
                drain_per_sec: a.rate.unwrap_or(base.drain_per_sec),
                bool_uf_json: a.bool_uf_json,
                latency: Duration::from_millis(a.latency_ms),
                list_cost: Duration::from_millis(a.list_cost_ms),
                operating_limit: (a.operating_limit > 0).then(|| Duration::from_secs(a.operating_limit)),
                operating_window: Duration::from_secs(a.operating_window.max(10)),
                id_layout: match a.id_layout.as_str() {
                    "dense" => IdLayout::Dense,
                    "sparse" => IdLayout::Sparse,
                    "huge-gap" => IdLayout::HugeGap,
                    _ => IdLayout::Realistic,
                },
                ..base
            };
            let portal = SimPortal::start(cfg, a.port).map_err(|e| Error::Usage(format!("cannot listen on 127.0.0.1:{}: {e}", a.port)))?;
            println!(
                "simulated portal with {} leads, {} deals, {} contacts, {} companies listening on http://{}",
                a.leads,
                a.deals,
                a.contacts,
                a.companies,
                portal.addr()
            );
            println!("webhook: {}", portal.webhook_url());
            println!("try: b24-export export --webhook {} --out ./out", portal.webhook_url());
            portal.wait();
            Ok(())
        }
        Command::Demo(a) => {
            let cfg = SimConfig { leads: a.leads, seed: a.seed, ..SimConfig::default() };
            let portal = SimPortal::start(cfg, 0).map_err(|e| Error::Internal(format!("cannot start the simulated portal: {e}")))?;
            println!(
                "simulated portal: {} leads on {} (standard plan limits: burst 50, 2 requests/s)",
                a.leads,
                portal.addr()
            );
            let opts = ExportOptions {
                auth: AuthConfig::Webhook(Webhook::parse(&portal.webhook_url())?),
                out: a.out.display().to_string(),
                entity: Entity::Lead,
                s3: S3Options::default(),
                resume: false,
                checkpoint_every: Duration::from_secs(60),
                incremental: None,
                raw_out: None,
                api: export::Api::Auto,
                partition: PartitionSpec::default(),
                filter: Map::new(),
                select: None,
                client: ClientConfig::default(),
                concurrency: 8,
                overwrite: true,
                progress: !cli.quiet,
                strict: false,
            };
            let summary = export::run_export(opts)?;
            print_summary(&summary);
            println!("\nfiles, e.g.:");
            let mut files: Vec<_> = summary.files.iter().map(|f| &f.path).collect();
            files.sort();
            for f in files.iter().take(3) {
                println!("  {}/{}", summary.dataset, f);
            }
            println!("\nquery it with DuckDB (hive partitions by date_create_month):");
            println!("  {}", export::duckdb_query(&summary.dataset));
            println!(
                "  SELECT date_create_month, status_id, count(*) AS leads, sum(opportunity) AS total\n    FROM read_parquet('{}/**/*.parquet', hive_partitioning = true)\n    GROUP BY ALL ORDER BY ALL LIMIT 10;",
                summary.dataset
            );
            Ok(())
        }
    }
}
