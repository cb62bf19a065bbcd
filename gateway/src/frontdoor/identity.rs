//! Identity: turns a CONNECT (and a TLS client certificate, if any) into a [`Principal`] or a
//! CONNACK refusal code.
//!
//! Fed by the session after the CONNECT was parsed; reads credentials through the store's
//! [`CredentialReader`] (its own read-only connection: the CLI's writes are visible to the very
//! next CONNECT). Order of checks:
//!
//! 1. the client id must follow the id rule → else 0x85 (3.1.1: rc 2); an empty client id
//!    (the broker assigns one) is allowed for operators and anonymous loopback viewers only;
//! 2. MQTT 5 enhanced authentication is not supported → 0x8C (3.1.1: rc 5);
//! 3. a client certificate's CN is the device id; the client id must equal it → else 0x87;
//! 4. a user name must name a credential whose hash matches the password → else 0x86 (rc 4);
//!    a device's client id must equal its name → else 0x85. A device secret (one SHA-256) is
//!    checked at once; an operator's password (argon2) and a name nobody has go through the
//!    login guard ([`super::login`]): throttled per source and name, checked on the bounded
//!    password pool, refused with 0x9F (rc 3) when throttled or when the pool is full;
//! 5. no credentials: anonymous, if `[auth]` allows it on this listener → else 0x87 (rc 5).

use std::path::Path;
use std::sync::Arc;

use super::acl::Principal;
use super::login::{Attempt, LoginGuard, Refusal};
use super::secrets;
use crate::config::AuthConfig;
use crate::store::credentials::{CredentialReader, Kind};
use crate::store::StoreError;
use crate::wire::ids::is_valid_id;
use crate::wire::packet::ConnectInfo;
use crate::wire::DeviceId;

/// The front door's view of who may connect.
#[derive(Debug, Clone)]
pub struct Identity {
    auth: AuthConfig,
    listener_loopback: bool,
    reader: CredentialReader,
    guard: Arc<LoginGuard>,
}

impl Identity {
    /// Opens the credentials reader on `db_path` (creating the file and table if missing);
    /// slow password checks go through `guard`.
    pub fn open(
        db_path: &Path,
        auth: AuthConfig,
        listener_loopback: bool,
        guard: Arc<LoginGuard>,
    ) -> Result<Identity, StoreError> {
        Ok(Identity {
            auth,
            listener_loopback,
            reader: CredentialReader::open(db_path)?,
            guard,
        })
    }

    /// Who this CONNECT is, or why it is refused.
    pub async fn authenticate(
        &self,
        connect: &ConnectInfo,
        cert_cn: Option<&str>,
        attempt: Attempt,
    ) -> Result<Principal, Refusal> {
        if connect.client_id.is_empty() {
            return self.without_client_id(connect, attempt).await;
        }
        if !is_valid_id(&connect.client_id) {
            return Err(Refusal::BadClientId);
        }
        if connect.auth_method {
            return Err(Refusal::BadAuthMethod);
        }
        if let Some(cn) = cert_cn {
            return match DeviceId::parse(cn) {
                Some(device) if device.as_str() == connect.client_id => {
                    Ok(Principal::Device(device))
                }
                _ => Err(Refusal::NotAuthorized),
            };
        }
        match (&connect.username, &connect.password) {
            (Some(username), Some(password)) => {
                self.password(username, password, &connect.client_id, attempt)
                    .await
            }
            (Some(_), None) | (None, Some(_)) => Err(Refusal::BadPassword),
            (None, None) => self.anonymous(&connect.client_id),
        }
    }

    /// A user name and password: a device's secret is checked here, at once; an operator's
    /// password (slow) and a name nobody has go through the login guard.
    async fn password(
        &self,
        username: &str,
        password: &str,
        client_id: &str,
        attempt: Attempt,
    ) -> Result<Principal, Refusal> {
        let reader = self.reader.clone();
        let name = username.to_owned();
        let found = tokio::task::spawn_blocking(move || lookup(&reader, &name))
            .await
            .unwrap_or(Err(Refusal::Unavailable))?;
        match found {
            Some((Kind::Device, hash)) if !secrets::is_slow(&hash) => {
                if !secrets::verify(&hash, password) {
                    return Err(Refusal::BadSecret);
                }
                match DeviceId::parse(username) {
                    Some(device) if username == client_id => Ok(Principal::Device(device)),
                    _ => Err(Refusal::BadClientId),
                }
            }
            Some((kind, hash)) => {
                let presented = password.to_owned();
                self.guard
                    .check_password(attempt, username, Some(hash), presented)
                    .await?;
                match kind {
                    Kind::Operator => Ok(Principal::Operator(username.to_owned())),
                    Kind::Device => match DeviceId::parse(username) {
                        Some(device) if username == client_id => Ok(Principal::Device(device)),
                        _ => Err(Refusal::BadClientId),
                    },
                }
            }
            None => {
                // Nobody has this name, so the guard never lets it through.
                let unknown = self
                    .guard
                    .check_password(attempt, username, None, String::new());
                unknown.await?;
                Err(Refusal::UnknownUser)
            }
        }
    }

    /// An empty client id: an operator, or an anonymous viewer on a loopback listener.
    async fn without_client_id(
        &self,
        connect: &ConnectInfo,
        attempt: Attempt,
    ) -> Result<Principal, Refusal> {
        if connect.username.is_none() && connect.password.is_none() {
            let allowed = self.auth.allow_anonymous && self.listener_loopback;
            return if allowed {
                Ok(Principal::Viewer)
            } else {
                Err(Refusal::BadClientId)
            };
        }
        let mut named = connect.clone();
        named.client_id = connect.username.clone().unwrap_or_default();
        match Box::pin(self.authenticate(&named, None, attempt)).await? {
            operator @ Principal::Operator(_) => Ok(operator),
            _ => Err(Refusal::BadClientId),
        }
    }

    fn anonymous(&self, client_id: &str) -> Result<Principal, Refusal> {
        let allowed = self.auth.allow_anonymous
            && (self.listener_loopback || self.auth.allow_anonymous_remote);
        match DeviceId::parse(client_id) {
            Some(device) if allowed => Ok(Principal::Anonymous {
                device,
                operator_view: self.listener_loopback,
            }),
            _ => Err(Refusal::NotAuthorized),
        }
    }
}

/// The stored credential of `username`, if any.
fn lookup(reader: &CredentialReader, username: &str) -> Result<Option<(Kind, String)>, Refusal> {
    reader.lookup(username).map_err(|error| {
        tracing::error!(%error, "credentials lookup failed");
        Refusal::Unavailable
    })
}
