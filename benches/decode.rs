//! Decode benchmark: JSON page text → Arrow `RecordBatch`, single-threaded, the `Value` way
//! (`convert_page_values`, the reference) against the direct decoder (`convert_page`).
//!
//! `cargo bench --bench decode`; `B24_BENCH_LEADS=200000` sets the number of leads, `B24_BENCH_ROUNDS=3` how
//! many times each path runs (the best round counts), `B24_BENCH_ONLY=new` times the direct decoder alone
//! (for a profiler), `B24_BENCH_PHP=1` escapes the text as PHP's `json_encode` does (`\/`, `\uXXXX`), as a
//! real portal sends it.
//!
//! The leads are the simulator's, rendered as `crm.lead.list` returns them with `select` = `*`, `UF_*`,
//! PHONE, EMAIL, WEB, IM, LINK (so every field), with the simulator's occasional bad values, in chunks of 50
//! records (one list call) and pages of 50 chunks (one batch request), as the exporter receives them.

use std::hint::black_box;
use std::time::Instant;

use b24_export::convert::{convert_page, convert_page_values};
use b24_export::schema::{arrow_schema, build_columns};
use b24_export::sim::data::{fields_metadata, generate_ids, lead_truth, render_lead, Encoding, IdLayout};
use b24_export::sim::bad_value_at;
use b24_export::sink::partition::PartitionSpec;
use b24_export::sink::{DatasetWriter, SinkConfig};
use serde_json::value::RawValue;
use serde_json::Value;

const CHUNK: usize = 50;
const PAGE_CHUNKS: usize = 50;

fn pages(n: usize, enc: &Encoding) -> Vec<(Vec<Box<RawValue>>, usize)> {
    let ids = generate_ids(n, 42, IdLayout::Realistic);
    let mut out = Vec::new();
    let mut page = Vec::new();
    let mut rows = 0;
    for (start, ids_chunk) in ids.chunks(CHUNK).enumerate().map(|(i, c)| (i * CHUNK, c)) {
        let records: Vec<Value> = ids_chunk
            .iter()
            .enumerate()
            .map(|(k, &id)| {
                let pos = start + k;
                let mut m = render_lead(&lead_truth(42, id, pos, n), id, enc, |_| true);
                if let Some((field, raw)) = bad_value_at(pos) {
                    m.insert(field.to_string(), raw);
                }
                Value::Object(m)
            })
            .collect();
        rows += records.len();
        page.push(RawValue::from_string(Value::Array(records).to_string()).expect("valid JSON"));
        if page.len() == PAGE_CHUNKS {
            out.push((std::mem::take(&mut page), std::mem::take(&mut rows)));
        }
    }
    if !page.is_empty() {
        out.push((page, rows));
    }
    out
}

/// The text as PHP's `json_encode` writes it by default: `/` as `\/`, everything beyond ASCII as `\uXXXX`.
fn php_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 5 / 4);
    for c in json.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out
}

fn main() {
    let n: usize = std::env::var("B24_BENCH_LEADS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let rounds: usize = std::env::var("B24_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let cols = build_columns(b24_export::entity::Entity::Lead, &fields_metadata(), None, &[]).expect("columns");
    let schema = arrow_schema(&cols);
    let t = Instant::now();
    let pages = pages(n, &Encoding::default());
    let bytes: usize = pages.iter().flat_map(|(c, _)| c.iter().map(|r| r.get().len())).sum();
    println!(
        "{n} leads, {} columns, {} pages, {:.1} MB of JSON ({:.0} bytes/lead), generated in {:.1}s",
        cols.len(),
        pages.len(),
        bytes as f64 / 1e6,
        bytes as f64 / n as f64,
        t.elapsed().as_secs_f64()
    );

    let php = std::env::var("B24_BENCH_PHP").is_ok_and(|s| s == "1");
    let pages: Vec<(Vec<Box<RawValue>>, usize)> = if php {
        let p: Vec<(Vec<Box<RawValue>>, usize)> = pages
            .iter()
            .map(|(c, rows)| (c.iter().map(|r| RawValue::from_string(php_escaped(r.get())).expect("valid JSON")).collect(), *rows))
            .collect();
        let b: usize = p.iter().flat_map(|(c, _)| c.iter().map(|r| r.get().len())).sum();
        println!("PHP-escaped text (\\/ and \\uXXXX, as json_encode writes it): {:.1} MB", b as f64 / 1e6);
        p
    } else {
        pages
    };
    let bytes: usize = pages.iter().flat_map(|(c, _)| c.iter().map(|r| r.get().len())).sum();
    // the two paths agree (the unit tests check this thoroughly)
    for (chunks, rows) in pages.iter().take(3) {
        let a = convert_page_values(chunks, *rows, &cols, &schema, false).expect("reference");
        let b = convert_page(chunks, *rows, &cols, &schema, false).expect("direct");
        assert!(a.0 == b.0 && a.1 == b.1, "the direct decoder differs from the reference");
    }

    let time = |name: &str, f: &dyn Fn(&[Box<RawValue>], usize) -> usize| -> f64 {
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            let mut total = 0;
            for (chunks, rows) in &pages {
                total += f(chunks, *rows);
            }
            assert_eq!(total, n);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name:<28} {:>8.3} s  {:>10.0} leads/s  {:>7.1} MB/s",
            best,
            n as f64 / best,
            bytes as f64 / 1e6 / best
        );
        best
    };
    if std::env::var("B24_BENCH_ONLY").is_ok_and(|s| s == "new") {
        // for profiling: the direct decoder alone
        time("new: direct decoder", &|chunks, rows| {
            black_box(convert_page(chunks, rows, &cols, &schema, false).expect("convert")).0.num_rows()
        });
        return;
    }
    let scan = time("serde_json scan only", &|chunks, _| {
        chunks.iter().map(|c| serde_json::from_str::<Vec<serde::de::IgnoredAny>>(c.get()).expect("json").len()).sum()
    });
    let old = time("old: Value tree (reference)", &|chunks, rows| {
        black_box(convert_page_values(chunks, rows, &cols, &schema, false).expect("convert")).0.num_rows()
    });
    let new = time("new: direct decoder", &|chunks, rows| {
        black_box(convert_page(chunks, rows, &cols, &schema, false).expect("convert")).0.num_rows()
    });
    println!("speedup: {:.2}x (direct decoder = {:.2}x the time of a bare JSON scan)", old / new, new / scan);

    // for scale: what writing the decoded batches costs (the export's writer, default partitioning, zstd)
    let batches: Vec<_> = pages.iter().map(|(c, rows)| convert_page(c, *rows, &cols, &schema, false).expect("convert").0).collect();
    let dir = std::env::temp_dir().join(format!("b24-decode-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = SinkConfig::new(dir.clone(), "bench".into(), PartitionSpec::default());
    let t = Instant::now();
    let mut w = DatasetWriter::new(cfg, &schema).expect("writer");
    for b in &batches {
        w.write(b).expect("write");
    }
    let files = w.finish().expect("finish");
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{:<28} {:>8.3} s  {:>10.0} leads/s  ({} files, {:.1} MB of Parquet); decode + write: {:.0} leads/s on one core",
        "Parquet write (for scale)",
        secs,
        n as f64 / secs,
        files.len(),
        files.iter().map(|f| f.bytes).sum::<u64>() as f64 / 1e6,
        n as f64 / (secs + new)
    );
}
