//! Small types more than one section uses: a listener's protocol (routes, TLS and
//! rate limits depend on it), host patterns (HTTP routes and TLS SNI routes) and an
//! upstream's strategy (its backends and how requests stick to them).

/// `listener.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower case.
    Exact(String),
    /// `*.example.com` kept as `.example.com`, lower case: one or more labels before it.
    Suffix(String),
}

/// `upstream.NAME.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    LeastConnections,
    Random,
    ConsistentHash,
    Ewma,
}

impl Strategy {
    pub const ALL: [(&'static str, Strategy); 5] = [
        ("round_robin", Strategy::RoundRobin),
        ("least_connections", Strategy::LeastConnections),
        ("random", Strategy::Random),
        ("consistent_hash", Strategy::ConsistentHash),
        ("ewma", Strategy::Ewma),
    ];

    pub fn as_str(self) -> &'static str {
        Strategy::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("round_robin", |(n, _)| n)
    }
}
