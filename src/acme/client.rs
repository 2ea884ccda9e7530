//! The HTTPS client the ACME protocol runs over: the system's roots plus `acme.ca`,
//! every request (body included) bounded in time and size.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};

/// One request to the CA, answer read whole, takes at most this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most an answer of the CA may hold (certificate chains are a few KiB).
const MAX_BODY: usize = 1 << 20;

pub struct AcmeHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    pub fn new(
        extra_roots: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<AcmeHttp, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        for cert in extra_roots.into_iter().flatten() {
            roots.add(cert.clone()).map_err(|e| e.to_string())?;
        }
        if roots.is_empty() {
            return Err("no root certificates to verify the ACME directory: set acme.ca".into());
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(REQUEST_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

/// A failed request, as instant-acme passes it on.
fn failed(what: impl Into<String>) -> Error {
    Error::Other(what.into().into())
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let client = self.client.clone();
        Box::pin(async move {
            let exchange = async {
                let rsp = client
                    .request(req)
                    .await
                    .map_err(|e| failed(format!("unreachable: {e}")))?;
                let (parts, body) = rsp.into_parts();
                let body = http_body_util::Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| failed(format!("unreachable: reading the answer: {e}")))?
                    .to_bytes();
                Ok(BytesResponse {
                    parts,
                    body: Box::new(body),
                })
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(r) => r,
                Err(_) => Err(failed("unreachable: no answer in time")),
            }
        })
    }
}
