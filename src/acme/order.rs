//! One order with the CA: the account (created once, kept in storage), the
//! challenges answered, the CSR, the certificate chain.

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use super::challenge::Challenges;
use super::client::AcmeHttp;
use super::store::Store;
use crate::config::{Acme, AcmeChallenge};

/// Why no certificate came, and how long to wait before the next attempt.
#[derive(Debug)]
pub struct Failure {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The directory did not answer (connection, timeout) or answered 5xx: it may
    /// be back soon, and nothing counted against this account.
    Unreachable,
    /// The CA refused (validation failed, bad request): try again much later.
    Refused,
    RateLimited,
    /// The storage directory failed.
    Storage,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    pub fn unreachable(m: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Unreachable,
            message: m.into(),
        }
    }

    pub fn refused(m: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Refused,
            message: m.into(),
        }
    }

    pub fn storage(m: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Storage,
            message: m.into(),
        }
    }

    /// The `result` label of `fulcrum_acme_orders_total`.
    pub fn result(&self) -> &'static str {
        match self.kind {
            Kind::Unreachable => "unreachable",
            Kind::Refused | Kind::Storage => "failed",
            Kind::RateLimited => "rate_limited",
        }
    }

    /// The wait before attempt `failures + 1`: doubling from 1 s up to a minute
    /// while the directory is unreachable; from a minute up to 6 hours after a
    /// refusal (CAs limit failed validations per hour); an hour when rate-limited.
    pub fn back_off(&self, failures: u32) -> Duration {
        let doubling = |base: u64, cap: u64| {
            Duration::from_secs(
                base.saturating_mul(1 << failures.saturating_sub(1).min(20))
                    .min(cap),
            )
        };
        match self.kind {
            Kind::Unreachable | Kind::Storage => doubling(1, 60),
            Kind::Refused => doubling(60, 6 * 3600),
            Kind::RateLimited => Duration::from_secs(3600),
        }
    }
}

impl From<instant_acme::Error> for Failure {
    fn from(e: instant_acme::Error) -> Failure {
        use instant_acme::Error as E;
        let message = e.to_string();
        let kind = match &e {
            E::Api(p)
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":rateLimited")) =>
            {
                Kind::RateLimited
            }
            E::Api(p) if p.status.is_some_and(|s| s >= 500) => Kind::Unreachable,
            E::Api(_) | E::Unsupported(_) | E::KeyRejected | E::Crypto => Kind::Refused,
            E::Other(_) | E::Hyper(_) | E::Http(_) | E::Timeout(_) => Kind::Unreachable,
            // A directory whose answers do not parse is not (yet) a CA to talk to.
            _ => Kind::Unreachable,
        };
        Failure { kind, message }
    }
}

/// The account as stored: its credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

fn http(settings: &Acme) -> Result<Box<AcmeHttp>, Failure> {
    AcmeHttp::new(settings.ca.as_deref())
        .map(Box::new)
        .map_err(Failure::refused)
}

/// The stored account of this directory, or a new one (stored at once).
async fn account(settings: &Acme, store: &Store) -> Result<Account, Failure> {
    if let Some(stored) = store
        .read_account()
        .and_then(|b| serde_json::from_slice::<StoredAccount>(&b).ok())
        .filter(|s| s.directory == settings.directory)
    {
        return Ok(Account::builder_with_http(http(settings)?)
            .from_credentials(stored.credentials)
            .await?);
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = settings
        .eab
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.key));
    let (account, credentials) = Account::builder_with_http(http(settings)?)
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            eab.as_ref(),
        )
        .await?;
    let json = serde_json::to_vec(&StoredAccount {
        directory: settings.directory.clone(),
        credentials,
    })
    .map_err(|e| Failure::storage(e.to_string()))?;
    store
        .write_account(&json)
        .map_err(|e| Failure::storage(format!("saving the account: {e}")))?;
    Ok(account)
}

/// The CA's suggested renewal window for `leaf` (ARI, RFC 9773): its start and end
/// (seconds since the Unix epoch) and when to ask again; `None` when the directory
/// offers no renewal information.
pub(super) async fn renewal_window(
    settings: &Acme,
    store: &Store,
    leaf: &rustls::pki_types::CertificateDer<'_>,
) -> Result<Option<(i64, i64, Duration)>, Failure> {
    // Without an Authority Key Identifier (CAs always set one), there is nothing to
    // ask about.
    let Ok(id) = instant_acme::CertificateIdentifier::try_from(leaf) else {
        return Ok(None);
    };
    let account = account(settings, store).await?;
    match account.renewal_info(&id).await {
        Ok((info, retry)) => Ok(Some((
            info.suggested_window.start.unix_timestamp(),
            info.suggested_window.end.unix_timestamp(),
            retry,
        ))),
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Takes the answers out again however the order ends.
struct Answers<'a> {
    challenges: &'a Challenges,
    http: Vec<String>,
    alpn: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.http {
            self.challenges.remove_http(t);
        }
        for n in &self.alpn {
            self.challenges.remove_alpn(n);
        }
    }
}

/// Orders a certificate for `names`: (chain PEM, private key PEM). `replaces`: the
/// certificate this one renews, when the CA's renewal information made it due (the
/// CA learns it was replaced, RFC 9773 section 5).
pub(super) async fn obtain(
    settings: &Acme,
    names: &[String],
    challenges: &Challenges,
    store: &Store,
    replaces: Option<instant_acme::CertificateIdentifier<'static>>,
) -> Result<(String, String), Failure> {
    let account = account(settings, store).await?;
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(id) = replaces {
        new_order = new_order.replaces(id);
    }
    let mut order = account.new_order(&new_order).await?;
    let kind = match settings.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut answers = Answers {
        challenges,
        http: Vec::new(),
        alpn: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(Failure::refused(format!(
                    "authorization for {} is {other:?}",
                    authorization.identifier()
                )))
            }
        }
        let mut ch = authorization.challenge(kind.clone()).ok_or_else(|| {
            Failure::refused(format!(
                "the CA offers no {} challenge",
                settings.challenge.name()
            ))
        })?;
        let key_authorization = ch.key_authorization();
        match settings.challenge {
            AcmeChallenge::Http01 => {
                let token = ch.token.clone();
                challenges
                    .put_http(&token, key_authorization.as_str())
                    .map_err(|e| Failure::storage(format!("challenge answer: {e}")))?;
                answers.http.push(token);
            }
            AcmeChallenge::TlsAlpn01 => {
                let name = ch.identifier().to_string();
                challenges
                    .put_alpn(&name, key_authorization.as_str())
                    .map_err(|e| Failure::storage(format!("challenge answer: {e}")))?;
                answers.alpn.push(name);
            }
        }
        ch.set_ready().await?;
    }
    let status = order
        .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90)))
        .await?;
    if status != OrderStatus::Ready {
        let why = order
            .state()
            .error
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "no reason given".into());
        // The CA says why in the failed challenge.
        let mut detail = String::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(a)) = authorizations.next().await {
            if let Some(e) = a.challenges.iter().find_map(|c| c.error.as_ref()) {
                detail = format!("({}: {e})", a.identifier());
                break;
            }
        }
        return Err(Failure::refused(format!(
            "order is {status:?}: {why} {detail}"
        )));
    }
    let key_pem = order.finalize().await?;
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
        .await?;
    drop(answers);
    Ok((chain, key_pem))
}
