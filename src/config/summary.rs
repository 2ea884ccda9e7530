//! `fulcrum check`'s summary: one line per listener, upstream and section.

use std::fmt::Write as _;

use super::Config;

impl Config {
    /// The summary `fulcrum check` prints: one line per listener and upstream.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for l in &self.listeners {
            let binds: Vec<String> = l.bind.iter().map(|a| a.to_string()).collect();
            let _ = write!(
                out,
                "listener {}: {} on {}",
                l.name,
                l.protocol.as_str(),
                binds.join(", ")
            );
            if let Some(u) = &l.upstream {
                let _ = write!(out, " -> upstream {u}");
            }
            if let Some(t) = l.tls.as_ref().filter(|t| !t.acme.is_empty()) {
                let _ = write!(out, ", acme certificate for {}", t.acme.join(" "));
            }
            if !l.routes.is_empty() {
                let _ = write!(
                    out,
                    ", {} route{}",
                    l.routes.len(),
                    if l.routes.len() == 1 { "" } else { "s" }
                );
            }
            out.push('\n');
        }
        for u in &self.upstreams {
            let backends: Vec<String> = u
                .backends
                .iter()
                .map(|b| {
                    if b.name == b.address {
                        format!("{} (weight {})", b.address, b.weight)
                    } else {
                        format!("{} {} (weight {})", b.name, b.address, b.weight)
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "upstream {}: {}, {} backend{}: {}",
                u.name,
                u.strategy.as_str(),
                u.backends.len(),
                if u.backends.len() == 1 { "" } else { "s" },
                backends.join(", ")
            );
        }
        if let Some(f) = &self.failover {
            let vips: Vec<String> = f
                .vips
                .iter()
                .map(|v| format!("{} on {}", v.address, v.interface))
                .collect();
            let _ = writeln!(
                out,
                "failover {}: priority {}, heartbeats on {} to {} peer{}, vips: {}",
                f.node,
                f.priority,
                f.bind,
                f.peers.len(),
                if f.peers.len() == 1 { "" } else { "s" },
                if vips.is_empty() {
                    "none (hooks only)".to_string()
                } else {
                    vips.join(", ")
                }
            );
        }
        if let Some(a) = &self.acme {
            let _ = writeln!(
                out,
                "acme {} ({}, renew {} days before expiry), storage {}",
                a.directory,
                a.challenge.name(),
                a.renew_before.as_secs() / 86_400,
                a.storage.display()
            );
        }
        if let Some(b) = &self.bgp {
            let peers: Vec<String> = b
                .peers
                .iter()
                .map(|p| format!("{} (AS {})", p.name(), p.remote_as))
                .collect();
            let announce: Vec<String> = b
                .announce
                .iter()
                .map(|a| format!("{} while {}", a.prefix, a.upstreams.join(" and ")))
                .collect();
            let _ = writeln!(
                out,
                "bgp AS {} (router id {}): peers {}; announces {}",
                b.local_as,
                b.router_id,
                peers.join(", "),
                announce.join(", ")
            );
        }
        out
    }
}
