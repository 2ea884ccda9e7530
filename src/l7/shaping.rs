//! A route's path rewrite and redirect at run time, compiled from the configuration
//! once per generation.

use std::borrow::Cow;

use http::{header, HeaderValue, Response, StatusCode, Uri};

use crate::config::{Part, Redirect, Rewrite};

use super::body::ResponseBody;
use super::error;

/// `route.rewrite`, ready to apply.
#[derive(Debug)]
pub enum PathRewrite {
    Prefix { prefix: String, to: String },
    Regex { regex: regex::Regex, to: String },
}

impl PathRewrite {
    /// `None` only for a regex that no longer compiles (the configuration was checked
    /// with the same limits, so this does not happen).
    pub fn compile(r: &Rewrite) -> Option<PathRewrite> {
        Some(match r {
            Rewrite::Prefix { prefix, to } => PathRewrite::Prefix {
                prefix: prefix.clone(),
                to: to.clone(),
            },
            Rewrite::Regex { regex, to } => PathRewrite::Regex {
                regex: crate::config::compile_rewrite_regex(regex).ok()?,
                to: to.clone(),
            },
        })
    }

    /// The path the upstream gets; `path` itself when the rule does not apply.
    pub fn apply<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let out = match self {
            PathRewrite::Prefix { prefix, to } => match path.strip_prefix(prefix.as_str()) {
                // Whole segments only: `/app` takes `/app` and `/app/x`, not `/apple`.
                Some(rest) if rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/') => {
                    let mut p = String::with_capacity(to.len() + rest.len());
                    p.push_str(to);
                    p.push_str(rest);
                    Cow::Owned(p)
                }
                _ => Cow::Borrowed(path),
            },
            PathRewrite::Regex { regex, to } => regex.replace(path, to.as_str()),
        };
        // `to = "/"` with a prefix that did not end in a slash, or a group that
        // expanded to nothing: a path always starts with one slash.
        match out {
            Cow::Owned(p) if !p.starts_with('/') => Cow::Owned(format!("/{p}")),
            Cow::Owned(p) if p.starts_with("//") => {
                Cow::Owned(format!("/{}", p.trim_start_matches('/')))
            }
            other => other,
        }
    }
}

/// The `Location` of a redirect for this request.
fn location(to: &[Part], uri: &Uri, host: Option<&str>) -> String {
    let (path, query) = (uri.path(), uri.query());
    let mut out = String::with_capacity(64);
    for part in to {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Path => out.push_str(path),
            Part::Query => out.push_str(query.unwrap_or("")),
            Part::Uri => {
                out.push_str(path);
                if let Some(q) = query {
                    out.push('?');
                    out.push_str(q);
                }
            }
            Part::Host => out.push_str(host.unwrap_or("")),
        }
    }
    // A target that starts with the request's path (`to = "{uri}"`) must stay on this
    // site: `//evil.example/x` (with `merge_slashes = false`) would be read as another
    // host. Leading slashes and backslashes become one slash.
    if out.starts_with("//") || out.starts_with("/\\") {
        let rest = out.trim_start_matches(['/', '\\']);
        out = format!("/{rest}");
    }
    out
}

/// The redirect response; a `Location` that is not a valid header value (a host or
/// path a client made up) is a 400.
pub(super) fn redirect(
    r: &Redirect,
    uri: &Uri,
    host: Option<&str>,
) -> Option<Response<ResponseBody>> {
    let value = HeaderValue::try_from(location(&r.to, uri, host)).ok()?;
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
    let mut response = error::plain(status).map(|b| ResponseBody::Full(Some(b)));
    response.headers_mut().insert(header::LOCATION, value);
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rewrite;

    fn rw(r: Rewrite) -> PathRewrite {
        PathRewrite::compile(&r).unwrap()
    }

    #[test]
    fn a_prefix_is_replaced_and_other_paths_pass() {
        let r = rw(Rewrite::Prefix {
            prefix: "/api/v2/".into(),
            to: "/".into(),
        });
        assert_eq!(r.apply("/api/v2/users/7"), "/users/7");
        assert_eq!(r.apply("/api/v2/"), "/");
        assert_eq!(r.apply("/api/v1/users"), "/api/v1/users");
        assert!(matches!(r.apply("/other"), Cow::Borrowed(_)));
        let r = rw(Rewrite::Prefix {
            prefix: "/app".into(),
            to: "/".into(),
        });
        assert_eq!(r.apply("/app/x"), "/x", "one slash, never two");
        assert_eq!(r.apply("/app"), "/");
        assert_eq!(r.apply("/apple"), "/apple", "whole segments only");
        let r = rw(Rewrite::Prefix {
            prefix: "/old/".into(),
            to: "/new/".into(),
        });
        assert_eq!(r.apply("/old/a/b"), "/new/a/b");
    }

    #[test]
    fn a_regex_replaces_its_first_match_with_groups() {
        let r = rw(Rewrite::Regex {
            regex: "^/old/(.*)$".into(),
            to: "/new/$1".into(),
        });
        assert_eq!(r.apply("/old/a/b"), "/new/a/b");
        assert_eq!(r.apply("/older"), "/older");
        let r = rw(Rewrite::Regex {
            regex: "^/u/(?P<id>[0-9]+)/profile$".into(),
            to: "/profiles/${id}".into(),
        });
        assert_eq!(r.apply("/u/42/profile"), "/profiles/42");
        let r = rw(Rewrite::Regex {
            regex: "^/([a-z]*)/x$".into(),
            to: "$1".into(),
        });
        assert_eq!(r.apply("/abc/x"), "/abc", "a path starts with a slash");
        assert_eq!(r.apply("//x"), "/", "an empty group is still a path");
        let r = rw(Rewrite::Regex {
            regex: "^/r(.*)$".into(),
            to: "/$1".into(),
        });
        assert_eq!(
            r.apply("/r//evil"),
            "/evil",
            "one leading slash, never more"
        );
    }

    #[test]
    fn locations_fill_in_the_request() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let to = crate::config::redirect_template("https://{host}{path}|{query}|{uri}").unwrap();
        assert_eq!(
            location(&to, &uri, Some("example.com")),
            "https://example.com/a/b|x=1|/a/b?x=1"
        );
        let bare: Uri = "/a".parse().unwrap();
        assert_eq!(location(&to, &bare, Some("h")), "https://h/a||/a");
        // A path never makes the target another host.
        let own = crate::config::redirect_template("{uri}").unwrap();
        let sneaky: Uri = "//evil.example/x?y=1".parse().unwrap();
        assert_eq!(location(&own, &sneaky, None), "/evil.example/x?y=1");
    }
}
