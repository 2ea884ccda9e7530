use super::*;

#[test]
fn every_metric_of_the_contract_is_registered() {
    let m = Metrics::new();
    m.listener("web").accepted.inc();
    m.requests("web", "app").count(200);
    m.config_reloads_total.with_label_values(&["success"]).inc();
    let text = m.encode();
    for name in [
        CONNECTIONS_TOTAL,
        CONNECTIONS_ACTIVE,
        HTTP_REQUESTS_TOTAL,
        HTTP_REQUEST_DURATION,
        CACHE_SIZE_BYTES,
        CONFIG_RELOADS_TOTAL,
        CONFIG_GENERATION,
        FAILOVER_ACTIVE,
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(
        text.contains(
            "fulcrum_http_requests_total{code=\"200\",listener=\"web\",upstream=\"app\"} 1"
        ),
        "{text}"
    );
}
