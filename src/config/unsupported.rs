//! Keys of capabilities fulcrum does not have yet. The parser accepts them, so that
//! `fulcrum check` can name each one and refuse it with "not supported yet" rather
//! than call it unknown; none is ever silently ignored.

use std::ops::Range;

use super::raw::{Later, RawListenerTls};
use super::validate::Validator;

fn at(v: &Later) -> Option<Range<usize>> {
    v.as_ref().map(|s| s.span())
}

impl Validator<'_> {
    fn refuse(&mut self, prefix: &str, keys: &[(&str, Option<Range<usize>>)]) {
        for (name, span) in keys {
            if let Some(span) = span {
                let key = if prefix.is_empty() {
                    (*name).to_string()
                } else {
                    format!("{prefix}.{name}")
                };
                self.err(Some(span.clone()), key, "not supported yet");
            }
        }
    }

    pub(super) fn unsupported_listener_tls(&mut self, key: &str, t: &RawListenerTls) {
        self.refuse(key, &[("http3_0rtt", at(&t.http3_0rtt))]);
    }
}
