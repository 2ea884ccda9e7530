//! The monitoring files in contrib/: the Prometheus alerting rules pass `promtool check
//! rules` and their unit tests, every query of the Grafana dashboard parses, and both
//! name only metrics fulcrum exports.

use std::path::{Path, PathBuf};
use std::process::Command;

const METRICS_SOURCE: &str = include_str!("../src/admin/metrics.rs");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn promtool() -> Option<Command> {
    Command::new("promtool")
        .arg("--version")
        .output()
        .ok()
        .map(|_| Command::new("promtool"))
}

/// Runs promtool with `args`; panics with its output when it fails.
fn run(mut cmd: Command, args: &[&str]) {
    let out = cmd.args(args).current_dir(root()).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `fulcrum_*` metric name in `text`, histogram series names taken back to
/// their metric.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("fulcrum_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        names.push(name.to_string());
        rest = &tail[end..];
    }
    names
}

fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("contrib/grafana/fulcrum.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn the_monitoring_files_name_only_exported_metrics() {
    let alerts = std::fs::read_to_string(root().join("contrib/prometheus/alerts.yml")).unwrap();
    let queries = dashboard_queries();
    assert!(queries.len() > 20, "{} queries", queries.len());
    let mut names = metric_names(&alerts);
    for q in &queries {
        names.extend(metric_names(q));
    }
    assert!(!names.is_empty());
    for name in names {
        assert!(
            METRICS_SOURCE.contains(&format!("\"{name}\"")),
            "{name} is not a metric fulcrum exports"
        );
    }
}

#[test]
fn the_alert_rules_and_the_dashboard_queries_pass_promtool() {
    let Some(_) = promtool() else {
        eprintln!("skipped: promtool is not installed (Debian package prometheus)");
        return;
    };
    run(
        promtool().unwrap(),
        &["check", "rules", "contrib/prometheus/alerts.yml"],
    );
    run(
        promtool().unwrap(),
        &["test", "rules", "contrib/prometheus/alerts_test.yml"],
    );
    // Each dashboard query as a recording rule, Grafana's variables given values.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries().iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace('\'', "''");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: '{q}'\n"
        ));
    }
    let file = std::env::temp_dir().join(format!("fulcrum-dashboard-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    run(
        promtool().unwrap(),
        &["check", "rules", file.to_str().unwrap()],
    );
    std::fs::remove_file(&file).unwrap();
}
