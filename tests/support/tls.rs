//! Certificates made at test time (rcgen): a private CA, the leaves it
//! signs, and clients that trust only that CA. Nothing leaves loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A private certificate authority, trusted by nothing on the system.
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM-encoded, and the certificate's DER.
pub struct Leaf {
    /// The certificate alone (the chain a server presents: the CA is the root).
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER-encoded: what a client sees in the handshake.
    pub der: CertificateDer<'static>,
}

/// Which HTTP versions a TLS test client offers in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// `h2` and `http/1.1` (a server that offers `h2` gets HTTP/2).
    H2,
    /// `http/1.1` only.
    Http11,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A fresh CA with its own key.
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "corral test CA");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM-encoded (a `ca_file`).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses) with
    /// serial number `serial`, valid now.
    pub fn issue(&self, names: &[&str], serial: u8) -> Leaf {
        self.issue_with(names, serial, |_| {})
    }

    /// A server certificate for `names` whose validity ended in 2001.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, 1, |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn issue_with(
        &self,
        names: &[&str],
        serial: u8,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.serial_number = Some(SerialNumber::from_slice(&[serial]));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        adjust(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A reqwest client that trusts this CA alone and offers `offer`.
    pub fn https_client(&self, offer: Offer) -> reqwest::Client {
        corral::tls::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(self.pem().as_bytes()).expect("CA as reqwest's");
        let builder = reqwest::Client::builder().no_proxy().tls_certs_only([ca]);
        let builder = match offer {
            Offer::H2 => builder,
            Offer::Http11 => builder.http1_only(),
        };
        builder.build().expect("https client builds")
    }

    /// Opens a TLS connection to `addr` (verifying the server's certificate
    /// for `name` against this CA alone), offering `http/1.1`.
    pub async fn connect(&self, addr: SocketAddr, name: &str) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("CA as a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let stream = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .expect("TLS handshake")
    }
}

/// The certificate a TLS connection's server presented.
pub fn peer_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// The serial number of a DER certificate: the content octets of the
/// `serialNumber` INTEGER, the first field of `tbsCertificate` after the
/// optional `[0] version` (RFC 5280 §4.1).
pub fn serial_of(der: &[u8]) -> Vec<u8> {
    /// Splits the DER element at the start of `input` into (tag, content, rest).
    fn element(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (length, header) = match input[1] {
            short if short < 0x80 => (usize::from(short), 2),
            long => {
                let octets = usize::from(long & 0x7f);
                let length = input[2..2 + octets]
                    .iter()
                    .fold(0usize, |n, b| (n << 8) | usize::from(*b));
                (length, 2 + octets)
            }
        };
        (
            tag,
            &input[header..header + length],
            &input[header + length..],
        )
    }
    let (_, certificate, _) = element(der);
    let (_, tbs, _) = element(certificate);
    let (tag, content, rest) = element(tbs);
    let (_, serial, _) = if tag == 0xa0 {
        element(rest)
    } else {
        (tag, content, rest)
    };
    serial.to_vec()
}
