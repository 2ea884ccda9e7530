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
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most an answer of the CA may hold (certificate chains are a few KiB).
const MAX_BODY: usize = 1 << 20;

pub(super) struct AcmeHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    pub(super) fn new(
        extra_roots: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<AcmeHttp, String> {
        let connector = crate::tls::outbound_connector(extra_roots, false, REQUEST_TIMEOUT)
            .map_err(|e| format!("the ACME directory cannot be verified: {e}; set acme.ca"))?;
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
