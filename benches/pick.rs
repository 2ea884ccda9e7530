//! The cost of one balancing decision: `Upstream::pick` and dropping its lease.
//!
//! Run with `cargo bench --bench pick`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::config::Config;
use fulcrum::upstream::{PickContext, Registry, Upstream};

fn upstream(backends: usize, weighted: bool) -> Upstream {
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
         [upstream.app]\nbackends = [{}]\n",
        list.join(", ")
    );
    let config = Config::parse(&src, Path::new("bench.toml")).expect("bench config");
    Upstream::build(&config.upstreams[0], &Registry::new())
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick/round_robin");
    for n in [3usize, 100] {
        for weighted in [false, true] {
            let up = upstream(n, weighted);
            let client = "192.0.2.7:5555".parse().ok();
            let label = if weighted { "weighted" } else { "equal" };
            group.bench_with_input(BenchmarkId::new(label, n), &up, |b, up| {
                b.iter(|| {
                    let lease = up.pick(&PickContext {
                        client,
                        exclude: &[],
                    });
                    black_box(lease)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
