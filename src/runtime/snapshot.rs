//! One configuration generation, built whole from a validated `Config` and shared
//! read-only by every connection that starts while it is current.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{AccessRules, Config, Protocol};
use crate::l4;
use crate::l7;
use crate::upstream::{Registry, Upstream};

pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    listeners: HashMap<String, ListenerEntry>,
}

pub(crate) struct ListenerEntry {
    pub access: AccessRules,
    pub engine: Engine,
}

pub(crate) enum Engine {
    Tcp(Arc<l4::Settings>),
    Http(Arc<l7::Settings>),
}

impl Snapshot {
    pub fn build(
        config: Arc<Config>,
        generation: u64,
        registry: &Registry,
        pools: &l7::Pools,
    ) -> Snapshot {
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), Arc::new(Upstream::build(u, registry))))
            .collect();
        let http_upstreams: HashMap<String, Arc<l7::UpstreamTarget>> = if config
            .listeners
            .iter()
            .any(|l| l.protocol == Protocol::Http)
        {
            config
                .upstreams
                .iter()
                .filter_map(|c| {
                    let u = upstreams.get(&c.name)?;
                    let target = l7::UpstreamTarget::new(u.clone(), c.sticky.as_ref(), pools);
                    Some((c.name.clone(), Arc::new(target)))
                })
                .collect()
        } else {
            HashMap::new()
        };
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            // Validation guarantees a tcp listener names an existing upstream.
            let upstream = l.upstream.as_ref().and_then(|u| upstreams.get(u));
            let engine = match (l.protocol, upstream) {
                (Protocol::Tcp, Some(up)) => Engine::Tcp(Arc::new(l4::Settings {
                    listener: l.name.clone(),
                    upstream: up.clone(),
                    idle_timeout: l.idle_timeout,
                    access_log: config.global.access_log,
                })),
                (Protocol::Http, _) => Engine::Http(Arc::new(l7::Settings::build(
                    l,
                    &http_upstreams,
                    config.global.access_log,
                ))),
                (Protocol::Tcp, None) => continue,
            };
            listeners.insert(
                l.name.clone(),
                ListenerEntry {
                    access: l.access.clone(),
                    engine,
                },
            );
        }
        Snapshot {
            generation,
            config,
            upstreams,
            listeners,
        }
    }

    pub(crate) fn listener(&self, name: &str) -> Option<&ListenerEntry> {
        self.listeners.get(name)
    }
}
