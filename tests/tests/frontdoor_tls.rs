//! TLS on the device listener (`[broker.tls]`) with certificates generated here: a client
//! certificate's CN is the device id.

use std::sync::Arc;

use crate::frontdoor_support::{connack_code, connect5, WAIT};
use roost_tests::certs::{self, Issued};
use roost_tests::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

struct Pki {
    ca: Issued,
    dir: tempfile::TempDir,
    client: Issued,
}

fn pki() -> Pki {
    let ca = certs::ca("roost test CA");
    let server = ca.server(&["localhost"]);
    let client = ca.client("tls-dev");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("server.pem"), server.cert.pem()).expect("write");
    std::fs::write(dir.path().join("server.key"), server.key.serialize_pem()).expect("write");
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).expect("write");
    Pki { ca, dir, client }
}

/// Connects over TLS (with the client certificate when `with_cert`), sends a v5 CONNECT as
/// `client_id` and returns the CONNACK code.
async fn connack(gateway: &Gateway, pki: &Pki, with_cert: bool, client_id: &str) -> u8 {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if with_cert {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.client.key.serialize_der()));
        builder
            .with_client_auth_cert(vec![pki.client.cert.der().clone()], key)
            .expect("client cert")
    } else {
        builder.with_no_client_auth()
    };
    let tcp = TcpStream::connect(gateway.mqtt).await.expect("tcp");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(&connect5(client_id, None, None))
        .await
        .expect("write");
    let mut connack = [0u8; 5];
    tokio::time::timeout(WAIT, tls.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    connack_code(&connack)
}

#[tokio::test]
async fn client_certificates_name_the_device() {
    let pki = pki();
    let path = |name: &str| pki.dir.path().join(name).display().to_string();
    let gateway = Gateway::start_with(&format!(
        "[auth]\nallow_anonymous = false\n[broker.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        path("server.pem"),
        path("server.key"),
        path("ca.pem"),
    ));
    assert_eq!(connack(&gateway, &pki, true, "tls-dev").await, 0);
    assert_eq!(connack(&gateway, &pki, true, "someone-else").await, 0x87);
    assert_eq!(connack(&gateway, &pki, false, "tls-dev").await, 0x87);
}
