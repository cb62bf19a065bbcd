//! TLS for the store's connections, as `store.url`'s `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` ask ([`crate::config::postgres_tls`]): rustls (ring) through `tokio-postgres-rustls`.
//! As with libpq, `prefer` and `require` without `sslrootcert` encrypt and check only that the
//! server holds the key of the certificate it shows (the handshake's signature), not who signed
//! it; with `sslrootcert` the certificate must chain to those CAs, and `verify-full` must also
//! name the host connected to. With `sslcert` and `sslkey` the gateway shows that certificate
//! when the server asks for one.

use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{pem, root_certs, PgTls, Roots, SslMode};
use crate::store::StoreError;

/// The connector for `tls`; `None` for `sslmode=disable`.
pub fn connector(tls: &PgTls) -> Result<Option<MakeRustlsConnect>, StoreError> {
    if tls.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(crypto::ring::default_provider());
    let chain = match &tls.root {
        None => None,
        Some(root) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root)?), provider.clone())
                .build()
                .map_err(|error| refused(format!("sslrootcert: {error}")))?,
        ),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.mode, chain) {
        (SslMode::VerifyFull, Some(chain)) => chain,
        (_, chain) => Arc::new(Lenient {
            chain,
            provider: provider.clone(),
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| StoreError::Sql(format!("TLS: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = pem::read_certs(cert).map_err(|why| refused(format!("sslcert: {why}")))?;
            let key = pem::read_key(key).map_err(|why| refused(format!("sslkey: {why}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| refused(format!("sslcert and sslkey: {error}")))?
        }
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// What was wrong with the server's certificate, when `error` (a failed connection) is its not
/// passing the check `sslrootcert` asks for: a deployment's mistake, not a passing fault.
pub fn certificate_refused(error: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        // An I/O error's `source` skips the error it wraps: look at that one too.
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(error), inner].into_iter().flatten() {
            if let Some(problem @ rustls::Error::InvalidCertificate(_)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                return Some(problem.to_string());
            }
        }
        source = error.source();
    }
    None
}

fn refused(text: String) -> StoreError {
    StoreError::Refused(text)
}

/// The CA certificates `root` names. A file's must all parse; the system's store may hold
/// some that do not (as distributions' do), which are skipped.
fn roots(root: &Roots) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    let certificates = root_certs(root).map_err(refused)?;
    match root {
        Roots::File(_) => {
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|error| refused(format!("sslrootcert: {error}")))?;
            }
        }
        Roots::System => {
            roots.add_parsable_certificates(certificates);
        }
    }
    if roots.is_empty() {
        return Err(refused(
            "sslrootcert: no CA certificate could be parsed".into(),
        ));
    }
    Ok(roots)
}

/// `verify-ca` (the chain checked against `sslrootcert`, not the name), and `prefer` or
/// `require` without `sslrootcert` (no check of the certificate, libpq's meaning). Either way
/// the handshake's signatures are checked, so the server holds the key of the certificate it
/// shows.
#[derive(Debug)]
struct Lenient {
    /// The chain's check (`verify-ca`); `None`: any certificate.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            checked => checked,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
