//! `Vary`: the request fields a stored response was chosen by, and whether a new
//! request matches them (RFC 9111 4.1).

use super::split_list;
use http::{header, HeaderMap, HeaderName, HeaderValue};

/// The names listed by `Vary`, lower case.
pub fn vary_names(response: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// The request's values of the fields `Vary` names: the secondary key (RFC 9111 4.1),
/// each as received and normalised (see [`vary_value`]). Two keys are the same when
/// their normalised values are.
#[derive(Debug, Clone)]
pub struct SecondaryKey(pub(super) Vec<(HeaderName, Vec<HeaderValue>, Option<HeaderValue>)>);

impl SecondaryKey {
    pub fn of(response: &HeaderMap, request: &HeaderMap) -> SecondaryKey {
        let mut names: Vec<HeaderName> = vary_names(response)
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        SecondaryKey(
            names
                .into_iter()
                .map(|n| {
                    let raw = request.get_all(&n).iter().cloned().collect();
                    let normal = vary_value(request, &n);
                    (n, raw, normal)
                })
                .collect(),
        )
    }

    /// Whether a request with these fields selects the same variant: the same values
    /// as received (no work), or the same once normalised.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.0.iter().all(|(name, raw, normal)| {
            request.get_all(name).iter().eq(raw.iter()) || vary_value(request, name) == *normal
        })
    }
}

impl PartialEq for SecondaryKey {
    fn eq(&self, other: &SecondaryKey) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.0 == b.0 && a.2 == b.2)
    }
}

/// Fields whose list elements are case-insensitive tokens whose order says nothing
/// beyond their q-values (RFC 9110 12.5.3, 12.5.4; and `Accept-Charset`).
pub(super) const CASELESS_UNORDERED: [&str; 3] =
    ["accept-encoding", "accept-language", "accept-charset"];

/// What a request's field is compared by when `Vary` names it (RFC 9111 4.1): its
/// lines combined into one list, each element without the whitespace around it; for
/// `Accept-Encoding`, `Accept-Language` and `Accept-Charset`, also in lower case,
/// without whitespace inside (`de; q=0.5` is `de;q=0.5`), and in sorted order. `None`
/// when the request has no such field (which only matches another without it).
pub fn vary_value(request: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut lines = request.get_all(name).iter().peekable();
    lines.peek()?;
    let caseless = CASELESS_UNORDERED.contains(&name.as_str());
    let mut elements: Vec<Vec<u8>> = Vec::new();
    for line in lines {
        match line.to_str() {
            Ok(text) => elements.extend(split_list(text).map(|e| {
                let e = e.trim();
                if caseless {
                    e.bytes()
                        .filter(|b| !b.is_ascii_whitespace())
                        .map(|b| b.to_ascii_lowercase())
                        .collect()
                } else {
                    e.as_bytes().to_vec()
                }
            })),
            // Opaque bytes: compared as they are.
            Err(_) => elements.push(line.as_bytes().to_vec()),
        }
    }
    if caseless {
        elements.sort();
    }
    HeaderValue::from_bytes(&elements.join(&b","[..])).ok()
}

/// The request as the policy compares it with a stored one: each field the response's
/// `Vary` names replaced by its [`vary_value`].
pub fn vary_view<'a>(
    request: &'a HeaderMap,
    response: &HeaderMap,
) -> std::borrow::Cow<'a, HeaderMap> {
    let mut out: Option<HeaderMap> = None;
    for name in vary_names(response) {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        let normal = vary_value(request, &name);
        let mut current = request.get_all(&name).iter();
        let same = match (&normal, current.next()) {
            (None, None) => true,
            (Some(n), Some(first)) => n == first && current.next().is_none(),
            _ => false,
        };
        if same {
            continue;
        }
        let out = out.get_or_insert_with(|| request.clone());
        out.remove(&name);
        if let Some(v) = normal {
            out.insert(name, v);
        }
    }
    match out {
        Some(o) => std::borrow::Cow::Owned(o),
        None => std::borrow::Cow::Borrowed(request),
    }
}
