//! Writer benchmark: Arrow `RecordBatch`es → partitioned Parquet files ([`DatasetWriter`]), the step after the
//! page decoder (benches/decode.rs).
//!
//! `cargo bench --bench write`; `B24_BENCH_LEADS=200000` sets the number of leads, `B24_BENCH_ROUNDS=3` how
//! many times the write runs (the best round counts), `B24_BENCH_PARTITION=date_create:month` the partitioning,
//! `B24_BENCH_ENCODERS=N` the number of encoder threads (default: one per core), `B24_BENCH_BUDGET_MIB` the
//! writer's memory budget, `B24_BENCH_RANGES=N` interleaves the 50-record chunks of N ID ranges in every
//! page, as the planner's parallel fetch delivers them (default 32; 1 is ID order).
//!
//! The leads are the simulator's, rendered as `crm.lead.list` returns them (every field, the simulator's
//! occasional bad values), decoded once outside the timing into page-sized batches of 2,500 rows. Prints leads/s,
//! files, row groups and their sizes, Parquet MB, and the peak RSS the write added to the decoded input.

use std::fs::File;
use std::time::Instant;

use b24_export::convert::convert_page;
use b24_export::schema::{arrow_schema, build_columns};
use b24_export::sim::bad_value_at;
use b24_export::sim::data::{fields_metadata, generate_ids, lead_truth, render_lead, Encoding, IdLayout};
use b24_export::sink::partition::PartitionSpec;
use b24_export::sink::{DatasetWriter, SinkConfig};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::value::RawValue;
use serde_json::Value;

const CHUNK: usize = 50;
const PAGE_CHUNKS: usize = 50;

/// Pages of `CHUNK`-record chunks, as the exporter receives them: (chunks, rows). The planner fetches `ranges`
/// ID ranges at once, so a page holds chunks of each range in turn.
fn pages(n: usize, ranges: usize) -> Vec<(Vec<Box<RawValue>>, usize)> {
    let ids = generate_ids(n, 42, IdLayout::Realistic);
    let enc = Encoding::default();
    let chunks: Vec<(Box<RawValue>, usize)> = ids
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| {
            let records: Vec<Value> = c
                .iter()
                .enumerate()
                .map(|(k, &id)| {
                    let pos = i * CHUNK + k;
                    let mut m = render_lead(&lead_truth(42, id, pos, n), id, &enc, |_| true);
                    if let Some((field, raw)) = bad_value_at(pos) {
                        m.insert(field.to_string(), raw);
                    }
                    Value::Object(m)
                })
                .collect();
            (RawValue::from_string(Value::Array(records).to_string()).expect("valid JSON"), c.len())
        })
        .collect();
    let per = chunks.len().div_ceil(ranges);
    let mut slots: Vec<Option<(Box<RawValue>, usize)>> = chunks.into_iter().map(Some).collect();
    let mut out = Vec::new();
    let mut page = Vec::new();
    let mut rows = 0;
    for i in 0..per {
        for r in 0..ranges {
            if let Some((c, n)) = slots.get_mut(r * per + i).and_then(Option::take) {
                page.push(c);
                rows += n;
                if page.len() == PAGE_CHUNKS {
                    out.push((std::mem::take(&mut page), std::mem::take(&mut rows)));
                }
            }
        }
    }
    if !page.is_empty() {
        out.push((page, rows));
    }
    out
}

fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// The binary's allocator (src/main.rs).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    b24_export::sink::tune_c_malloc(); // as the binary does
    let n: usize = env("B24_BENCH_LEADS").unwrap_or(200_000);
    let rounds: usize = env("B24_BENCH_ROUNDS").unwrap_or(3);
    let ranges: usize = env::<usize>("B24_BENCH_RANGES").unwrap_or(32).max(1);
    let partition: PartitionSpec = std::env::var("B24_BENCH_PARTITION")
        .ok()
        .map(|s| s.parse().expect("B24_BENCH_PARTITION"))
        .unwrap_or_default();
    let cols = build_columns(b24_export::entity::Entity::Lead, &fields_metadata(), None, &[]).expect("columns");
    let schema = arrow_schema(&cols);
    let t = Instant::now();
    let batches: Vec<_> =
        pages(n, ranges).iter().map(|(c, rows)| convert_page(c, *rows, &cols, &schema, false).expect("convert").0).collect();
    if std::env::var("X_COLS").is_ok() {
        let mut v: Vec<(usize, String)> = (0..schema.fields().len()).map(|i| (batches.iter().map(|b| b.column(i).get_array_memory_size()).sum::<usize>(), schema.field(i).name().clone())).collect();
        v.sort(); v.reverse();
        for (b, name) in v.iter().take(30) { println!("{name:<30} {:.0} B/lead", *b as f64 / n as f64); }
    }
    let arrow_bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    println!(
        "{n} leads, {} columns, {} batches in {ranges} interleaved range(s), {:.1} MB of Arrow ({:.0} bytes/lead), \
         decoded in {:.1}s, partitions: {}",
        cols.len(),
        batches.len(),
        arrow_bytes as f64 / 1e6,
        arrow_bytes as f64 / n as f64,
        t.elapsed().as_secs_f64(),
        partition.name(),
    );

    let dir = std::env::temp_dir().join(format!("b24-write-bench-{}", std::process::id()));
    // the peak from here on: the decoded input and the write, not the generation
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = vm_kib("VmRSS:");
    let mut best = f64::MAX;
    let mut files = Vec::new();
    for _ in 0..rounds {
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = SinkConfig::new(dir.clone(), "bench".into(), partition.clone());
        if let Some(e) = env("B24_BENCH_ENCODERS") {
            cfg.encoders = e;
        }
        if let Some(m) = env::<usize>("B24_BENCH_BUDGET_MIB") {
            cfg.memory_budget = m << 20;
        }
        let t = Instant::now();
        let mut w = DatasetWriter::new(cfg, &schema).expect("writer");
        for b in &batches {
            w.write(b).expect("write");
        }
        files = w.finish().expect("finish");
        best = best.min(t.elapsed().as_secs_f64());
    }
    let peak = vm_kib("VmHWM:");
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let mut groups = Vec::new();
    for f in &files {
        let r = SerializedFileReader::new(File::open(&f.local).expect("open")).expect("read");
        groups.extend(r.metadata().row_groups().iter().map(|g| g.num_rows()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    groups.sort();
    println!(
        "Parquet write: {best:>7.3} s  {:>9.0} leads/s  {} files, {} row groups (rows min {} / median {} / max {}), \
         {:.1} MiB of Parquet, peak RSS {:.0} MiB ({:.0} MiB above the decoded input)",
        n as f64 / best,
        files.len(),
        groups.len(),
        groups.first().unwrap_or(&0),
        groups.get(groups.len() / 2).unwrap_or(&0),
        groups.last().unwrap_or(&0),
        bytes as f64 / 1048576.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(rss_before) as f64 / 1024.0,
    );
}
