//! Small types more than one section uses: a listener's protocol (routes, TLS and
//! rate limits depend on it) and host patterns (HTTP routes and TLS SNI routes).

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
