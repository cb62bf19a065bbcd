//! The PEM files a config names (certificates, CAs, private keys), read the one way for every
//! part that takes them: the device listener's `[broker.tls]` and the store's `store.url`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn open(path: &Path) -> Result<BufReader<File>, String> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificates in the PEM file at `path`: at least one, or an error saying why not.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`, or an error saying why there is none.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{} holds no PEM private key", path.display()))
}

/// The system's trusted CA certificates, as OpenSSL finds them (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set, else the distribution's store): at least one, or an error.
pub fn system_certs() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "system: no CA certificate in the system's store (SSL_CERT_FILE, SSL_CERT_DIR or \
             the distribution's, e.g. /etc/ssl/certs){}",
            match errors.is_empty() {
                true => String::new(),
                false => format!(": {}", errors.join("; ")),
            }
        ));
    }
    Ok(found.certs)
}
