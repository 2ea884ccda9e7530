//! `listener.error_pages`: files served in place of fulcrum's own short error bodies,
//! read when the configuration is loaded (and so again at every reload).

use std::collections::BTreeMap;

use bytes::Bytes;
use toml::Spanned;

use super::validate::Validator;

/// The largest error page accepted.
pub(super) const MAX_ERROR_PAGE: u64 = 1024 * 1024;

/// The media type of a page, from its file's extension.
const TYPES: [(&str, &str); 5] = [
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("json", "application/json"),
    ("txt", "text/plain; charset=utf-8"),
    ("xml", "application/xml"),
];

/// One status's page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPage {
    /// 400 to 599.
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Validator<'_> {
    pub(super) fn error_pages(
        &mut self,
        key: &str,
        pages: &Spanned<BTreeMap<String, String>>,
    ) -> Vec<ErrorPage> {
        let mut out = Vec::new();
        for (status, file) in pages.get_ref() {
            let k = format!("{key}.{status}");
            let span = Some(pages.span());
            let code = match status.parse::<u16>() {
                Ok(c) if (400..=599).contains(&c) => c,
                _ => {
                    self.err(span, k, "must be an error status, 400 to 599");
                    continue;
                }
            };
            let path = self.dir().join(file);
            let extension = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let Some((_, content_type)) =
                TYPES.iter().find(|(e, _)| Some(*e) == extension.as_deref())
            else {
                self.err(
                    span,
                    k,
                    format!(
                        "{} must end in .html, .htm, .json, .txt or .xml (its Content-Type)",
                        path.display()
                    ),
                );
                continue;
            };
            // One open, at most 1 MiB and a byte read: a file that grows (or a FIFO)
            // between a size check and the read cannot make the load unbounded.
            let body = std::fs::File::open(&path).and_then(|f| {
                let mut body = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(f, MAX_ERROR_PAGE + 1),
                    &mut body,
                )?;
                Ok(body)
            });
            if body.as_ref().is_ok_and(|b| b.len() as u64 > MAX_ERROR_PAGE) {
                self.err(span, k, format!("{} is larger than 1 MiB", path.display()));
                continue;
            }
            match body {
                Ok(body) => out.push(ErrorPage {
                    status: code,
                    content_type,
                    body: Bytes::from(body),
                }),
                Err(e) => self.err(span, k, format!("{} cannot be read: {e}", path.display())),
            }
        }
        out
    }
}
