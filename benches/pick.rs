//! The cost of one balancing decision: `Upstream::pick` and dropping its lease.
//!
//! Run with `cargo bench --bench pick`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::config::Config;
use fulcrum::upstream::{PickContext, Registry, Upstream};

fn upstream(strategy: &str, backends: usize, weighted: bool) -> Upstream {
    let list: Vec<String> = (0..backends)
        .map(|i| {
            let weight = if weighted { 1 + (i * 7) % 10 } else { 1 };
            format!(
                "{{ address = \"127.0.{}.{}:8080\", weight = {weight} }}",
                i / 250,
                1 + i % 250
            )
        })
        .collect();
    let src = format!(
        "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nupstream = \"app\"\n\
         [upstream.app]\nstrategy = \"{strategy}\"\nbackends = [{}]\n",
        list.join(", ")
    );
    let config = Config::parse(&src, Path::new("bench.toml")).expect("bench config");
    Upstream::build(&config.upstreams[0], &Registry::new())
}

fn pick(c: &mut Criterion) {
    for strategy in [
        "round_robin",
        "least_connections",
        "random",
        "consistent_hash",
        "ewma",
    ] {
        let mut group = c.benchmark_group(format!("pick/{strategy}"));
        for n in [3usize, 100, 1000] {
            let up = upstream(strategy, n, true);
            let client = "192.0.2.7:5555".parse().ok();
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::from_parameter(n), &up, |b, up| {
                b.iter(|| {
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let lease = up.pick(&PickContext {
                        client,
                        exclude: &[],
                        hash: Some(key),
                    });
                    black_box(lease)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, pick);
criterion_main!(benches);
