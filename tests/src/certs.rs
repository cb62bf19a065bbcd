//! Certificates made for a test with rcgen: a CA, and the server and client certificates it
//! signs (for the device listener's TLS and for PostgreSQL's).

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A certificate and its private key.
pub struct Issued {
    /// The certificate.
    pub cert: Certificate,
    /// Its private key.
    pub key: KeyPair,
}

/// A self-signed CA named `name`.
pub fn ca(name: &str) -> Issued {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Issued {
        cert: params.self_signed(&key).expect("CA"),
        key,
    }
}

impl Issued {
    /// A server certificate for `names` (host names, or IP addresses), signed by this CA.
    pub fn server(&self, names: &[&str]) -> Issued {
        let names = names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>();
        self.sign(CertificateParams::new(names).expect("params"))
    }

    /// A client certificate whose common name is `name` (a device id, a database role),
    /// signed by this CA.
    pub fn client(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        Issued {
            cert: params
                .signed_by(&key, &self.cert, &self.key)
                .expect("certificate"),
            key,
        }
    }
}
