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
//!    a device's client id must equal its name → else 0x85;
//! 5. no credentials: anonymous, if `[auth]` allows it on this listener → else 0x87 (rc 5).

use std::path::Path;

use super::acl::Principal;
use super::secrets;
use crate::config::AuthConfig;
use crate::store::credentials::{CredentialReader, Kind};
use crate::store::StoreError;
use crate::wire::ids::is_valid_id;
use crate::wire::packet::outgoing::reason;
use crate::wire::packet::ConnectInfo;
use crate::wire::DeviceId;

/// The front door's view of who may connect.
#[derive(Debug, Clone)]
pub struct Identity {
    auth: AuthConfig,
    listener_loopback: bool,
    reader: CredentialReader,
}

impl Identity {
    /// Opens the credentials reader on `db_path` (creating the file and table if missing).
    pub fn open(
        db_path: &Path,
        auth: AuthConfig,
        listener_loopback: bool,
    ) -> Result<Identity, StoreError> {
        Ok(Identity {
            auth,
            listener_loopback,
            reader: CredentialReader::open(db_path)?,
        })
    }

    /// Who this CONNECT is, or the v5 reason code to refuse it with.
    pub async fn authenticate(
        &self,
        connect: &ConnectInfo,
        cert_cn: Option<&str>,
    ) -> Result<Principal, u8> {
        if connect.client_id.is_empty() {
            return self.without_client_id(connect).await;
        }
        if !is_valid_id(&connect.client_id) {
            return Err(reason::BAD_CLIENT_ID);
        }
        if connect.auth_method {
            return Err(reason::BAD_AUTH_METHOD);
        }
        if let Some(cn) = cert_cn {
            return match DeviceId::parse(cn) {
                Some(device) if device.as_str() == connect.client_id => {
                    Ok(Principal::Device(device))
                }
                _ => Err(reason::NOT_AUTHORIZED),
            };
        }
        match (&connect.username, &connect.password) {
            (Some(username), Some(password)) => {
                let reader = self.reader.clone();
                let (username, password) = (username.clone(), password.clone());
                let client_id = connect.client_id.clone();
                tokio::task::spawn_blocking(move || {
                    check_password(&reader, &username, &password, &client_id)
                })
                .await
                .unwrap_or(Err(reason::SERVER_UNAVAILABLE))
            }
            (Some(_), None) | (None, Some(_)) => Err(reason::BAD_CREDENTIALS),
            (None, None) => self.anonymous(&connect.client_id),
        }
    }

    /// An empty client id: an operator, or an anonymous viewer on a loopback listener.
    async fn without_client_id(&self, connect: &ConnectInfo) -> Result<Principal, u8> {
        if connect.username.is_none() && connect.password.is_none() {
            let allowed = self.auth.allow_anonymous && self.listener_loopback;
            return if allowed {
                Ok(Principal::Viewer)
            } else {
                Err(reason::BAD_CLIENT_ID)
            };
        }
        let mut named = connect.clone();
        named.client_id = connect.username.clone().unwrap_or_default();
        match Box::pin(self.authenticate(&named, None)).await? {
            operator @ Principal::Operator(_) => Ok(operator),
            _ => Err(reason::BAD_CLIENT_ID),
        }
    }

    fn anonymous(&self, client_id: &str) -> Result<Principal, u8> {
        let allowed = self.auth.allow_anonymous
            && (self.listener_loopback || self.auth.allow_anonymous_remote);
        match DeviceId::parse(client_id) {
            Some(device) if allowed => Ok(Principal::Anonymous {
                device,
                operator_view: self.listener_loopback,
            }),
            _ => Err(reason::NOT_AUTHORIZED),
        }
    }
}

fn check_password(
    reader: &CredentialReader,
    username: &str,
    password: &str,
    client_id: &str,
) -> Result<Principal, u8> {
    let found = reader.lookup(username);
    let (kind, hash) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return Err(reason::BAD_CREDENTIALS),
        Err(error) => {
            tracing::error!(%error, "credentials lookup failed");
            return Err(reason::SERVER_UNAVAILABLE);
        }
    };
    if !secrets::verify(&hash, password) {
        return Err(reason::BAD_CREDENTIALS);
    }
    match kind {
        Kind::Operator => Ok(Principal::Operator(username.to_owned())),
        Kind::Device => match DeviceId::parse(username) {
            Some(device) if username == client_id => Ok(Principal::Device(device)),
            _ => Err(reason::BAD_CLIENT_ID),
        },
    }
}
