//! What identifies a listening socket across reloads and upgrades.

use std::net::SocketAddr;

use crate::config::Listener;

/// What identifies a listening socket across reloads: its configured address, or for
/// port 0 (a fresh port each time) the listener and the position in its `bind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum BindKey {
    Addr(SocketAddr),
    Ephemeral(String, usize),
}

pub(crate) fn bind_keys(l: &Listener) -> Vec<(BindKey, SocketAddr)> {
    l.bind
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let key = if a.port() == 0 {
                BindKey::Ephemeral(l.name.clone(), i)
            } else {
                BindKey::Addr(*a)
            };
            (key, *a)
        })
        .collect()
}
