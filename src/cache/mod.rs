//! The shared response cache (RFC 9111) of routes with `cache = true`.
//!
//! - [`policy`]: what may be stored and for how long (pure functions over headers);
//! - [`decide`]: what a request, an origin failure, a 304 or a response leads to
//!   (pure functions over the stored entry, the request's headers and the time);
//! - the store: responses by key (scheme, host, path and query), each key holding its
//!   variants (`Vary`), bounded by bytes with the least recently used key going first;
//! - collapsing: concurrent misses for one key make one upstream request; the others
//!   wait for its response head (bounded), then read the same [`fill::Fill`] or, when
//!   it is not stored, go their own way;
//! - [`status`]: the `Cache-Status` field (RFC 9211).
//!
//! The HTTP engine drives it; nothing here touches a socket.

pub mod decide;
pub mod fill;
pub mod policy;
pub mod range;
pub mod status;
pub mod tee;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_cache_semantics::{BeforeRequest, CachePolicy};
use moka::policy::EvictionPolicy;
use tokio::sync::watch;

use crate::config::CacheSettings;
use fill::{Budget, Fill};
use policy::{PolicyRequest, StaleRules};

/// Variants kept per key; the oldest goes first.
const MAX_VARIANTS: usize = 16;
/// Bookkeeping counted per stored response beside its headers and body.
const ENTRY_OVERHEAD: u64 = 512;

/// The primary cache key. Hosts never mix: the host is part of it, lower case,
/// without its default port. Neither do routes: a route chosen by a header or a method
/// never fills the entry another route serves, so the listener and the route are part
/// of it too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The listener and the route that serve the request.
    pub route: Arc<str>,
    pub https: bool,
    pub host: Box<str>,
    /// Path and query, as received.
    pub path: Box<str>,
}

impl Key {
    /// `host` as the request's one normalised authority gives it.
    pub fn new(route: &Arc<str>, https: bool, host: &str, uri: &Uri) -> Key {
        Key {
            route: route.clone(),
            https,
            host: host.to_ascii_lowercase().into_boxed_str(),
            path: uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned()
                .into_boxed_str(),
        }
    }
}

/// Where the body of a stored partial response (a 206) lies in its whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Its first byte's offset in the whole.
    pub first: u64,
    /// The whole's length.
    pub total: u64,
}

/// One stored response.
#[derive(Debug)]
pub struct Stored {
    pub status: StatusCode,
    /// As received (hop-by-hop fields already removed).
    pub headers: HeaderMap,
    pub policy: CachePolicy,
    pub stale: StaleRules,
    pub body: Bytes,
    /// The request's values of the fields `Vary` names.
    secondary: policy::SecondaryKey,
    weight: u64,
    lifetime: Duration,
    /// When it stops being fresh.
    fresh_until: SystemTime,
    /// The request's path and query.
    uri: Uri,
    /// A partial response (206): which part of the whole `body` is. `None`: complete.
    pub part: Option<Part>,
}

impl Stored {
    pub fn new(
        policy: CachePolicy,
        uri: Uri,
        request: &HeaderMap,
        status: StatusCode,
        response: HeaderMap,
        body: Bytes,
        now: SystemTime,
    ) -> Stored {
        let header_bytes: usize = response
            .iter()
            .chain(request.iter())
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let part = (status == StatusCode::PARTIAL_CONTENT)
            .then(|| range::content_range(&response))
            .flatten()
            .map(|(first, _, total)| Part { first, total });
        Stored {
            part,
            stale: StaleRules::of_response(&response),
            secondary: policy::SecondaryKey::of(&response, request),
            weight: body.len() as u64 + header_bytes as u64 + ENTRY_OVERHEAD,
            lifetime: lifetime(&policy, now),
            fresh_until: fresh_until(&policy, now),
            policy,
            status,
            headers: response,
            uri,
            body,
        }
    }

    /// Freshened by a 304 (RFC 9111 4.3.4): its fields replace the stored ones, the
    /// body stays.
    pub fn freshened(
        &self,
        not_modified: &HeaderMap,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Stored {
        let headers = policy::merge_304(&self.headers, not_modified);
        let policy = policy::new_policy(&self.uri, request, self.status, &headers, now);
        Stored {
            part: self.part,
            stale: StaleRules::of_response(&headers),
            secondary: self.secondary.clone(),
            weight: self.weight,
            lifetime: lifetime(&policy, now),
            fresh_until: fresh_until(&policy, now),
            policy,
            status: self.status,
            headers,
            uri: self.uri.clone(),
            body: self.body.clone(),
        }
    }

    /// The head the cache sends for it now: the stored fields with `Age`.
    pub fn head(&self, now: SystemTime) -> http::response::Parts {
        let mut r = http::Response::new(());
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers.clone();
        r.headers_mut().insert(
            header::AGE,
            HeaderValue::from(self.policy.age(now).as_secs()),
        );
        r.into_parts().0
    }

    /// Seconds of freshness left.
    pub fn ttl(&self, now: SystemTime) -> Duration {
        self.fresh_until.duration_since(now).unwrap_or_default()
    }

    /// Whether the request's values of the fields `Vary` names are the stored ones.
    fn same_variant(&self, request: &HeaderMap) -> bool {
        self.secondary.matches(request)
    }

    /// The length of the whole (of which a partial response holds a part).
    pub fn total_len(&self) -> u64 {
        self.part.map_or(self.body.len() as u64, |p| p.total)
    }

    /// Whether it can answer the request: a complete response any; a partial one only
    /// a single range that lies within its part.
    pub fn answers(&self, request: &HeaderMap) -> bool {
        let Some(part) = self.part else { return true };
        let last = part.first + self.body.len() as u64;
        match range::select(request, &self.headers, part.total) {
            range::Selected::Part(from, to) => from >= part.first && to < last,
            _ => false,
        }
    }

    /// A partial response's part is what its `Content-Range` says it is.
    fn consistent(&self) -> bool {
        match (self.part, range::content_range(&self.headers)) {
            (None, _) => true,
            (Some(_), Some((first, last, _))) => last - first + 1 == self.body.len() as u64,
            (Some(_), None) => false,
        }
    }

    /// `self`, a part that arrived now, combined with `older`, a part stored before,
    /// when they are parts of the same whole (the same strong `ETag`, the same length)
    /// that overlap or touch (RFC 9111 3.4): the newer fields (but `Content-Range`),
    /// the bytes of both. A combination that covers the whole is a complete 200.
    fn combined_with(&self, older: &Stored) -> Option<Stored> {
        let (new, old) = (self.part?, older.part?);
        let strong = |s: &Stored| {
            s.headers
                .get(header::ETAG)
                .filter(|e| !e.as_bytes().starts_with(b"W/"))
                .cloned()
        };
        if new.total != old.total || strong(self).is_none() || strong(self) != strong(older) {
            return None;
        }
        let (new_end, old_end) = (
            new.first + self.body.len() as u64,
            old.first + older.body.len() as u64,
        );
        if new.first > old_end || old.first > new_end {
            return None;
        }
        let first = new.first.min(old.first);
        let end = new_end.max(old_end);
        let mut body = vec![0u8; usize::try_from(end - first).ok()?];
        let at = |offset: u64| usize::try_from(offset - first).unwrap_or(0);
        body[at(old.first)..at(old_end)].copy_from_slice(&older.body);
        body[at(new.first)..at(new_end)].copy_from_slice(&self.body);
        let mut headers = self.headers.clone();
        let complete = first == 0 && end == new.total;
        let (status, part) = if complete {
            headers.remove(header::CONTENT_RANGE);
            (StatusCode::OK, None)
        } else {
            let range = format!("bytes {first}-{}/{}", end - 1, new.total);
            headers.insert(header::CONTENT_RANGE, HeaderValue::try_from(range).ok()?);
            (
                StatusCode::PARTIAL_CONTENT,
                Some(Part {
                    first,
                    total: new.total,
                }),
            )
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - first));
        let grown = (end - first).saturating_sub(self.body.len() as u64);
        Some(Stored {
            part,
            status,
            headers,
            body: Bytes::from(body),
            weight: self.weight + grown,
            policy: self.policy.clone(),
            stale: self.stale,
            secondary: self.secondary.clone(),
            lifetime: self.lifetime,
            fresh_until: self.fresh_until,
            uri: self.uri.clone(),
        })
    }

    /// How long past its freshness lifetime it is (zero while fresh).
    pub fn stale_for(&self, now: SystemTime) -> Duration {
        self.policy.age(now).saturating_sub(self.lifetime)
    }
}

/// The longest a stored response stays fresh, whatever its headers say (about 68
/// years: RFC 9111's 2^31 seconds). Every time computed from a response is bounded by
/// it, so no arithmetic on them can overflow.
pub const MAX_TTL: Duration = Duration::from_secs(1 << 31);

/// Freshness left, capped.
fn ttl(policy: &CachePolicy, at: SystemTime) -> Duration {
    policy.time_to_live(at).min(MAX_TTL)
}

fn fresh_until(policy: &CachePolicy, now: SystemTime) -> SystemTime {
    now.checked_add(ttl(policy, now)).unwrap_or(now)
}

/// The freshness lifetime: while fresh, the time left plus the age is constant. A
/// response stale on arrival counts as having lived for its age then.
fn lifetime(policy: &CachePolicy, at: SystemTime) -> Duration {
    ttl(policy, at).saturating_add(policy.age(at).min(MAX_TTL))
}

type Variants = Arc<Vec<Arc<Stored>>>;

/// What a lookup found for a request.
pub enum Lookup {
    /// A stored response that may be used as it is.
    Fresh(Arc<Stored>),
    /// A stored response that matches but needs revalidation: the request to send
    /// (with the validators added).
    Stale(Arc<Stored>, Box<Parts>),
    /// Nothing stored matches; `vary` when responses exist for the key but none for
    /// this request's variant.
    Miss { vary: bool },
}

type Inflight = Arc<Mutex<HashMap<Key, watch::Receiver<Option<Arc<Fill>>>>>>;

pub struct Cache {
    pub settings: CacheSettings,
    store: moka::sync::Cache<Key, Variants>,
    inflight: Inflight,
    /// Bytes of responses being stored right now (`max_inflight`).
    pub budget: Arc<Budget>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The one upstream request of a key's concurrent misses. Those waiting on it are
/// released when its response head is in: handed the [`Fill`] it publishes, or left
/// to look again once it is dropped (not stored, abandoned).
pub struct Flight {
    key: Key,
    inflight: Inflight,
    fill: watch::Sender<Option<Arc<Fill>>>,
}

impl Flight {
    /// Hands the response being stored to every request waiting on this one, and to
    /// those that join while it fills.
    pub fn publish(&self, fill: Arc<Fill>) {
        self.fill.send_replace(Some(fill));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Ok(mut map) = self.inflight.lock() {
            map.remove(&self.key);
        }
    }
}

pub enum Join {
    /// Make the request; the others wait on this.
    Lead(Flight),
    /// Another request for the key is on its way: wait for it.
    Wait(watch::Receiver<Option<Arc<Fill>>>),
}

impl Cache {
    pub fn new(settings: CacheSettings) -> Cache {
        let store = moka::sync::Cache::builder()
            .max_capacity(settings.max_size)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_k: &Key, v: &Variants| {
                let w: u64 = v.iter().map(|s| s.weight).sum();
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .build();
        Cache {
            budget: Budget::new(settings.max_inflight),
            settings,
            store,
            inflight: Arc::default(),
        }
    }

    /// The stored response for this request, if one matches: fresh, or stale with
    /// the request that revalidates it. A HEAD is answered from a stored GET.
    pub fn lookup(&self, key: &Key, req: &Parts, now: SystemTime) -> Lookup {
        let Some(variants) = self.store.get(key) else {
            return Lookup::Miss { vary: false };
        };
        // The common case without the policy's full evaluation: a request with no
        // directives of its own, a variant that matches, a response still fresh.
        let plain = !req.headers.contains_key(header::CACHE_CONTROL)
            && !req.headers.contains_key(header::PRAGMA);
        let view = policy::request_view(&req.headers);
        // A part that cannot answer this request is as good as nothing stored.
        let mut only_parts = true;
        for stored in variants.iter() {
            if !stored.answers(&req.headers) {
                continue;
            }
            only_parts = false;
            if plain && now < stored.fresh_until && stored.same_variant(&req.headers) {
                return Lookup::Fresh(stored.clone());
            }
            // The policy compares the fields `Vary` names as they were stored:
            // normalised (see `policy::vary_value`).
            let view = policy::vary_view(&view, &stored.headers);
            let preq = PolicyRequest {
                method: &Method::GET,
                uri: &req.uri,
                headers: &view,
            };
            match stored.policy.before_request(&preq, now) {
                BeforeRequest::Fresh(_) => return Lookup::Fresh(stored.clone()),
                BeforeRequest::Stale {
                    request,
                    matches: true,
                } => return Lookup::Stale(stored.clone(), Box::new(request)),
                BeforeRequest::Stale { matches: false, .. } => {}
            }
        }
        Lookup::Miss { vary: !only_parts }
    }

    /// Stores a complete response, replacing the variant with the same secondary key.
    pub fn insert(&self, key: Key, stored: Stored) {
        self.insert_arc(key, Arc::new(stored));
    }

    pub fn insert_arc(&self, key: Key, stored: Arc<Stored>) {
        let stored = match stored.part {
            Some(_) => match self.with_stored_part(&key, stored) {
                Some(s) => s,
                None => return,
            },
            None => stored,
        };
        // Larger than the whole cache (a huge head): it would only evict everything.
        if stored.weight > self.settings.max_size {
            return;
        }
        let mut list: Vec<Arc<Stored>> = Vec::with_capacity(2);
        list.push(stored.clone());
        if let Some(old) = self.store.get(&key) {
            list.extend(
                old.iter()
                    .filter(|o| o.secondary != stored.secondary)
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        self.store.insert(key, Arc::new(list));
        // Evict now rather than on some later call: the bound holds at every insert.
        self.store.run_pending_tasks();
    }

    /// What storing a part (a 206) amounts to, given what the key holds for its
    /// variant: the part combined with a stored part of the same whole; nothing when a
    /// complete response of the same whole is stored (it answers every range already)
    /// or the part's body is not what its `Content-Range` says; otherwise the part,
    /// which replaces what was stored.
    fn with_stored_part(&self, key: &Key, part: Arc<Stored>) -> Option<Arc<Stored>> {
        if !part.consistent() {
            return None;
        }
        let Some(variants) = self.store.get(key) else {
            return Some(part);
        };
        let Some(old) = variants.iter().find(|o| o.secondary == part.secondary) else {
            return Some(part);
        };
        if old.part.is_none() {
            let same = |name: header::HeaderName| {
                old.headers.get(&name).is_some()
                    && old.headers.get(&name) == part.headers.get(&name)
            };
            return (!same(header::ETAG)).then_some(part);
        }
        Some(part.combined_with(old).map_or(part, Arc::new))
    }

    /// Drops every response stored for the key (RFC 9111 4.4).
    pub fn invalidate(&self, key: &Key) {
        self.store.invalidate(key);
    }

    /// Drops the responses whose host (and path, by prefix) match; how many.
    pub fn purge(&self, host: Option<&str>, path_prefix: Option<&str>) -> usize {
        let host = host.map(str::to_ascii_lowercase);
        let mut dropped = 0;
        for (key, variants) in self.store.iter() {
            let host_ok = host.as_deref().is_none_or(|h| {
                key.host.as_ref() == h
                    || key.host.rsplit_once(':').is_some_and(|(name, _)| name == h)
            });
            let path_ok = path_prefix.is_none_or(|p| key.path.starts_with(p));
            if host_ok && path_ok {
                self.store.invalidate(key.as_ref());
                dropped += variants.len();
            }
        }
        self.store.run_pending_tasks();
        dropped
    }

    /// Bytes of stored responses (headers and bookkeeping counted).
    pub fn size(&self) -> u64 {
        self.store.run_pending_tasks();
        self.store.weighted_size()
    }

    /// URIs with stored responses.
    pub fn keys(&self) -> u64 {
        self.store.run_pending_tasks();
        self.store.entry_count()
    }

    /// Joins the upstream request for `key` in flight, or starts one.
    pub fn join(&self, key: &Key) -> Join {
        let Ok(mut map) = self.inflight.lock() else {
            // A poisoned map: every request goes upstream on its own.
            let (tx, _) = watch::channel(None);
            return Join::Lead(Flight {
                key: key.clone(),
                inflight: Arc::default(),
                fill: tx,
            });
        };
        if let Some(rx) = map.get(key) {
            return Join::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Join::Lead(Flight {
            key: key.clone(),
            inflight: self.inflight.clone(),
            fill: tx,
        })
    }
}

/// Waits until the flight has its response head (or `limit` passed): the response
/// being stored, or `None` when there is none to share (the flight ended without one,
/// or is still waiting for its origin).
pub async fn wait(
    mut rx: watch::Receiver<Option<Arc<Fill>>>,
    limit: Duration,
) -> Option<Arc<Fill>> {
    match tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await {
        Ok(Ok(fill)) => fill.clone(),
        // Ended without a fill, or out of time.
        _ => None,
    }
}

#[cfg(test)]
mod tests;
