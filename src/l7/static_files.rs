//! `static` routes: files from a directory, GET and HEAD only. Path resolution,
//! `index.html`, Content-Type, ETag/Last-Modified with 304s and Range with 206 come
//! from hyper-staticfile; this module adds the route's prefix removal and refuses any
//! file whose real path (after symlinks) lies outside the directory.

use std::borrow::Cow;
use std::path::PathBuf;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use hyper_staticfile::{AcceptEncoding, ResolveResult, Resolver, ResponseBuilder};
use tracing::debug;

use super::body::ResponseBody;
use super::error::plain;

#[derive(Debug)]
pub struct StaticDir {
    root: PathBuf,
    /// `root` with symlinks resolved, when it could be.
    canonical: Option<PathBuf>,
}

impl StaticDir {
    pub fn new(root: PathBuf) -> Self {
        let canonical = std::fs::canonicalize(&root).ok();
        StaticDir { root, canonical }
    }

    fn resolver(&self) -> Resolver {
        let mut r = Resolver::new(&self.root);
        r.allowed_encodings = AcceptEncoding::none();
        r
    }
}

fn error(status: StatusCode) -> Response<ResponseBody> {
    plain(status).map(|b| ResponseBody::Full(Some(b)))
}

pub async fn serve(
    dir: &StaticDir,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    strip_prefix: Option<&str>,
) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = uri.path();
    let (prefix, rest) = match strip_prefix.and_then(|p| path.strip_prefix(p).map(|r| (p, r))) {
        Some((p, r)) => (p.trim_end_matches('/'), r),
        None => ("", path),
    };
    let rel: Cow<'_, str> = if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(format!("/{rest}"))
    };
    let result = match dir
        .resolver()
        .resolve_path(&rel, AcceptEncoding::none())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            debug!(path = %rel, error = %e, "static file not readable");
            return error(StatusCode::NOT_FOUND);
        }
    };
    let result = match result {
        ResolveResult::Found(file) => {
            let inside = match (
                &dir.canonical,
                tokio::fs::canonicalize(dir.root.join(&file.path)).await,
            ) {
                (Some(root), Ok(real)) => real.starts_with(root),
                _ => false,
            };
            if !inside {
                debug!(path = %rel, "static file outside the directory refused");
                return error(StatusCode::NOT_FOUND);
            }
            ResolveResult::Found(file)
        }
        ResolveResult::IsDirectory { redirect_to } => ResolveResult::IsDirectory {
            redirect_to: format!("{prefix}{redirect_to}"),
        },
        ResolveResult::NotFound | ResolveResult::MethodNotMatched => {
            return error(StatusCode::NOT_FOUND)
        }
        ResolveResult::PermissionDenied => return error(StatusCode::FORBIDDEN),
    };
    match ResponseBuilder::new()
        .request_parts(method, uri, headers)
        .build(result)
    {
        Ok(r) => r.map(ResponseBody::Static),
        Err(e) => {
            debug!(error = %e, "static response could not be built");
            error(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}
