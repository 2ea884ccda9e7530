//! `[tracing]`: trace context for HTTP requests, and the OpenTelemetry collector that
//! receives sampled requests' spans.

use super::raw::RawTracing;
use super::validate::Validator;

pub const DEFAULT_TRACE_SAMPLE: f64 = 0.01;

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// Probability that a request without a sampled `traceparent` starts a sampled
    /// trace.
    pub sample: f64,
    /// `otlp`: where spans are exported; `None`: no export.
    pub otlp: Option<Collector>,
}

/// An OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    /// As written.
    pub url: String,
    pub tls: bool,
    /// `host:port`, to connect to (and the TLS name's source).
    pub address: String,
    /// The `Host` of export requests.
    pub authority: String,
    /// `/v1/traces` for a base URL, else the URL's own path.
    pub path: String,
}

impl Collector {
    /// `http://host:port` (the OTLP/HTTP base URL: `/v1/traces` is added) or a URL
    /// with a path of its own, used as given; `https://` for TLS.
    pub fn parse(url: &str) -> Result<Collector, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("must start with http:// or https://".into()),
        };
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not hold credentials".into());
        }
        let host = authority.host();
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => "/v1/traces".to_owned(),
            Some(p) => p.to_owned(),
        };
        Ok(Collector {
            url: url.to_owned(),
            tls,
            address: format!("{host}:{port}"),
            authority: authority.as_str().to_owned(),
            path,
        })
    }
}

impl Validator<'_> {
    pub(super) fn tracing(&mut self, t: &RawTracing) -> Tracing {
        let sample = match t.sample.as_ref().map(|s| (*s.get_ref(), s.span())) {
            None => DEFAULT_TRACE_SAMPLE,
            Some((p, _)) if (0.0..=1.0).contains(&p) => p,
            Some((p, span)) => {
                self.err(
                    Some(span),
                    "tracing.sample",
                    format!("must be between 0 and 1, got {p}"),
                );
                DEFAULT_TRACE_SAMPLE
            }
        };
        let otlp = t
            .otlp
            .as_ref()
            .and_then(|u| match Collector::parse(u.get_ref().trim()) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.err(
                        Some(u.span()),
                        "tracing.otlp",
                        format!("{e}, like \"http://127.0.0.1:4318\""),
                    );
                    None
                }
            });
        Tracing { sample, otlp }
    }
}

#[cfg(test)]
mod tests {
    use super::Collector;

    #[test]
    fn collector_urls_get_the_traces_path_unless_they_name_one() {
        let t = Collector::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (t.tls, t.address.as_str(), t.path.as_str()),
            (false, "127.0.0.1:4318", "/v1/traces")
        );
        let t = Collector::parse("https://otel.example/custom/traces").unwrap();
        assert_eq!(
            (t.tls, t.address.as_str(), t.path.as_str()),
            (true, "otel.example:443", "/custom/traces")
        );
        assert_eq!(Collector::parse("http://c/").unwrap().address, "c:80");
        for bad in [
            "ftp://c",
            "127.0.0.1:4318",
            "http://",
            "http://u:p@c",
            "not a url",
        ] {
            assert!(Collector::parse(bad).is_err(), "{bad}");
        }
    }
}
