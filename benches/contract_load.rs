//! Criterion benchmark of loading a real-world contract: Stripe's 4 MB
//! OpenAPI 3.0 description (`tests/data/stripe/`, 468 operations) read,
//! parsed, its `$ref`s checked, converted and compiled per operation, as
//! YAML (as published) and as the same document in JSON.
//! Run with `cargo bench --bench contract_load`; peak memory is measured
//! separately with `/usr/bin/time -v sandgate check` (see BENCHMARKS.md).

// criterion's macros generate functions without doc comments.
#![allow(missing_docs)]

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sandgate::config::Source;
use sandgate::contract::Contract;

/// A sandbox directory holding the description as `stripe.yaml` and
/// `stripe.json`.
fn sandbox() -> tempfile::TempDir {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/stripe/spec3.yaml.gz"
    ))
    .expect("tests/data/stripe/spec3.yaml.gz");
    let mut yaml = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut yaml)
        .expect("gunzip");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("stripe.yaml"), &yaml).expect("write yaml");
    let contract = Contract::load(
        &Source::Dir(dir.path().to_owned()),
        Path::new("stripe.yaml"),
    )
    .expect("the description loads");
    std::fs::write(
        dir.path().join("stripe.json"),
        serde_json::to_vec(&*contract.doc).expect("json"),
    )
    .expect("write json");
    dir
}

fn contract_load(c: &mut Criterion) {
    let dir = sandbox();
    let source = Source::Dir(dir.path().to_owned());
    let mut group = c.benchmark_group("contract_load");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for file in ["stripe.yaml", "stripe.json"] {
        group.bench_function(file, |b| {
            b.iter(|| {
                let contract = Contract::load(&source, Path::new(file)).expect("loads");
                assert_eq!(contract.operations.len(), 468);
                contract
            })
        });
    }
    group.finish();
}

criterion_group!(benches, contract_load);
criterion_main!(benches);
