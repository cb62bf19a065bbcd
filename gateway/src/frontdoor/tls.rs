//! Optional TLS on the device listener (`[broker.tls]`), with rustls.
//!
//! Fed by the config's PEM files at start (a bad file is an error naming its key, exit code 2)
//! and by each accepted TCP connection; feeds the session a TLS stream plus the client
//! certificate's CN, which is the device id when `client_ca` is set. Client certificates are
//! optional even then: a device without one authenticates with username/password as usual.

use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::pem::{read_certs, read_key};
use crate::config::TlsConfig;

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("config key {key}: {message}")]
pub struct TlsError {
    /// `broker.tls.cert`, `broker.tls.key` or `broker.tls.client_ca`.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A loaded TLS server configuration.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads the certificate chain, key and optional client CA.
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        let error = |key: &'static str| move |message: String| TlsError { key, message };
        let certs = read_certs(&config.cert).map_err(error("broker.tls.cert"))?;
        let key = read_key(&config.key).map_err(error("broker.tls.key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("broker.tls.cert")(e.to_string()))?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path).map_err(error("broker.tls.client_ca"))? {
                    roots
                        .add(cert)
                        .map_err(|e| error("broker.tls.client_ca")(e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| error("broker.tls.client_ca")(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let server = builder
            .with_single_cert(certs, key)
            .map_err(|e| error("broker.tls.key")(e.to_string()))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Completes the handshake; returns the stream and the client certificate's CN, if any.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let stream = self.acceptor.accept(stream).await?;
        let cn = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| common_name(cert));
        Ok((stream, cn))
    }
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
