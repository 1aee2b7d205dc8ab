//! rustls plumbing both sides share: the process's crypto provider, PEM
//! loading (certificate chains, private keys, CA bundles) with a reason a
//! person can act on, the server certificate a listener presents (swappable
//! while it serves), and what a rejected origin certificate was rejected for.
//!
//! Everything here uses rustls' own types and checks (`PemObject` parsing,
//! `CertifiedKey::keys_match`, the `CertificateError` a verifier returns); this
//! module only names the outcomes. The crypto provider is *ring*, never
//! aws-lc-rs: it builds in about half the time, and corral needs nothing that
//! only aws-lc-rs offers.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ServerConfig};

use crate::config::{Config, PlacedProblem, TlsFiles};

/// The ALPN protocols a TLS listener offers, in preference order.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Makes ring the process's default rustls crypto provider, unless one is
/// installed already (by an earlier call, or by a program embedding corral).
///
/// reqwest builds its TLS configuration from the process default and panics
/// when there is none, so this runs before any client is built. Idempotent
/// and cheap after the first call.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Why a certificate, key or CA bundle file could not be used. Displays
/// without the file's path: the caller names the setting and the path.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    /// The file holds no PEM section of the kind expected, or a malformed one.
    #[error("{what}: {reason}")]
    Parse {
        /// What was looked for (`no PEM certificate`, say).
        what: &'static str,
        /// rustls-pki-types' reason.
        reason: String,
    },
    /// The private key is of a kind the crypto provider cannot sign with.
    #[error("the private key cannot be used: {0}")]
    UnusableKey(#[source] rustls::Error),
    /// The private key is not the one the certificate was issued for.
    #[error("the private key does not match the certificate in {}", cert_file.display())]
    KeyMismatch {
        /// The certificate file the key was checked against.
        cert_file: PathBuf,
    },
    /// rustls could not tell whether the key matches the certificate; corral
    /// never serves a pair it cannot vouch for.
    #[error("cannot check that the private key matches the certificate: {0}")]
    UncheckedKey(#[source] rustls::Error),
}

/// A certificate chain and its private key, loaded and checked: the chain
/// parses, the key is usable, and the key is the certificate's.
#[derive(Debug, Clone)]
pub struct ServerCertificate {
    certified: Arc<CertifiedKey>,
}

/// Which of the two files of a pair a [`TlsFileError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    /// The certificate chain.
    Cert,
    /// The private key.
    Key,
}

impl ServerCertificate {
    /// Loads the PEM certificate chain in `cert_file` (end entity first) and
    /// the PEM private key (PKCS#8, PKCS#1 or SEC1) in `key_file`.
    ///
    /// # Errors
    /// The file at fault and why: unreadable, no PEM certificate or key in
    /// it, a key the provider cannot use, or a key that does not match.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<ServerCertificate, (PairFile, TlsFileError)> {
        let chain = load_certificates(cert_file).map_err(|e| (PairFile::Cert, e))?;
        let key_pem =
            std::fs::read(key_file).map_err(|e| (PairFile::Key, TlsFileError::Read(e)))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            (
                PairFile::Key,
                TlsFileError::Parse {
                    what: "no PEM private key",
                    reason: e.to_string(),
                },
            )
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| (PairFile::Key, TlsFileError::UnusableKey(e)))?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) => Ok(ServerCertificate {
                certified: Arc::new(certified),
            }),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err((
                PairFile::Key,
                TlsFileError::KeyMismatch {
                    cert_file: cert_file.to_owned(),
                },
            )),
            Err(error) => Err((PairFile::Key, TlsFileError::UncheckedKey(error))),
        }
    }

    /// The end-entity certificate, DER-encoded.
    pub fn end_entity(&self) -> Option<&CertificateDer<'static>> {
        self.certified.cert.first()
    }
}

/// The certificates the listeners present, loaded from `[server.tls]` and
/// `[admin.tls]`.
#[derive(Debug, Clone, Default)]
pub struct ListenerCertificates {
    /// The proxy listener's, when it terminates TLS.
    pub server: Option<ServerCertificate>,
    /// The admin listener's, when it terminates TLS.
    pub admin: Option<ServerCertificate>,
}

impl ListenerCertificates {
    /// Loads and checks every certificate and key `config` names.
    ///
    /// # Errors
    /// Every file that cannot be used, at the position of its setting (for
    /// [`Config::refuse`]).
    pub fn load(config: &Config) -> Result<ListenerCertificates, Vec<PlacedProblem>> {
        let mut problems = Vec::new();
        let mut load = |table: &str, files: Option<&TlsFiles>| {
            let files = files?;
            let (cert, key) = (&files.cert_file, &files.key_file);
            match ServerCertificate::load(cert.get_ref(), key.get_ref()) {
                Ok(certificate) => Some(certificate),
                Err((file, error)) => {
                    let (setting, path) = match file {
                        PairFile::Cert => ("cert_file", cert),
                        PairFile::Key => ("key_file", key),
                    };
                    problems.push((
                        path.span(),
                        format!("{table}.{setting} {}: {error}", path.get_ref().display()),
                    ));
                    None
                }
            }
        };
        let server = load("server.tls", config.server.tls.as_ref());
        let admin = load("admin.tls", config.admin.tls.as_ref());
        if problems.is_empty() {
            Ok(ListenerCertificates { server, admin })
        } else {
            Err(problems)
        }
    }
}

/// Reads every PEM certificate in `path`, in file order.
///
/// # Errors
/// The file is unreadable, holds a malformed PEM section, or holds no
/// certificate at all.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = std::fs::read(path).map_err(TlsFileError::Read)?;
    let parse_error = |reason: String| TlsFileError::Parse {
        what: "no PEM certificate",
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(parse_error("no CERTIFICATE section found".to_owned()));
    }
    Ok(certificates)
}

/// The certificate a TLS listener presents, replaceable while it serves: a
/// handshake reads whichever certificate is current when it starts, so a
/// replacement reaches new connections and leaves open ones untouched.
#[derive(Debug)]
struct CurrentCertificate(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A listener's TLS side: the rustls server configuration (TLS 1.2 and 1.3,
/// ALPN `h2` then `http/1.1`) and the certificate it presents. Cheap to
/// clone; clones share the certificate, so a [`replace`](Self::replace)
/// through one is seen by every handshake that starts afterwards.
#[derive(Clone)]
pub struct TlsTerminator {
    config: Arc<ServerConfig>,
    current: Arc<CurrentCertificate>,
}

impl fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTerminator").finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// A terminator presenting `certificate`.
    ///
    /// # Errors
    /// Only if ring cannot offer TLS 1.2 and 1.3, which it always can.
    pub fn new(certificate: &ServerCertificate) -> Result<TlsTerminator, rustls::Error> {
        let current = Arc::new(CurrentCertificate(ArcSwap::new(Arc::clone(
            &certificate.certified,
        ))));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(TlsTerminator {
            config: Arc::new(config),
            current,
        })
    }

    /// Presents `certificate` to every connection whose handshake starts
    /// from now on; connections already open keep the one they got.
    pub fn replace(&self, certificate: &ServerCertificate) {
        self.current.0.store(Arc::clone(&certificate.certified));
    }

    /// An acceptor for one listener's connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}

/// The TLS sides of corral's two listeners, built from
/// [`ListenerCertificates`]. Cheap to clone; clones share the certificates.
#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    /// The proxy listener's, when it terminates TLS.
    pub server: Option<TlsTerminator>,
    /// The admin listener's, when it terminates TLS.
    pub admin: Option<TlsTerminator>,
}

impl ListenerTls {
    /// Terminators presenting `certificates`.
    ///
    /// # Errors
    /// Only if ring cannot offer TLS 1.2 and 1.3, which it always can.
    pub fn new(certificates: &ListenerCertificates) -> Result<ListenerTls, rustls::Error> {
        let build = |certificate: &Option<ServerCertificate>| {
            certificate.as_ref().map(TlsTerminator::new).transpose()
        };
        Ok(ListenerTls {
            server: build(&certificates.server)?,
            admin: build(&certificates.admin)?,
        })
    }

    /// Presents `certificates` on new connections of the listeners that
    /// terminate TLS. A listener cannot start or stop terminating TLS while
    /// it runs: such a change is returned, in words, for the reload report.
    pub fn replace(&self, certificates: &ListenerCertificates) -> Vec<String> {
        let mut ignored = Vec::new();
        for (table, terminator, certificate) in [
            ("server.tls", &self.server, &certificates.server),
            ("admin.tls", &self.admin, &certificates.admin),
        ] {
            match (terminator, certificate) {
                (Some(terminator), Some(certificate)) => terminator.replace(certificate),
                (None, None) => {}
                (None, Some(_)) => ignored.push(format!(
                    "{table} added (the listener speaks plaintext until a restart)"
                )),
                (Some(_), None) => ignored.push(format!(
                    "{table} removed (the listener keeps its certificate until a restart)"
                )),
            }
        }
        ignored
    }
}

/// Why an origin's certificate was refused, as rustls' verifier said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateProblem {
    /// No trusted root issued it (a private CA not in `ca_file`, a self-signed one).
    UnknownIssuer,
    /// It does not name the origin URL's host.
    NameMismatch,
    /// Its validity period has ended.
    Expired,
    /// Its validity period has not begun.
    NotYetValid,
    /// It was revoked.
    Revoked,
    /// Anything else the verifier refused (a bad signature, a wrong key
    /// usage, an unparsable certificate).
    Invalid,
}

impl CertificateProblem {
    /// Stable label for metrics and `Cache-Status` details.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateProblem::UnknownIssuer => "tls_unknown_issuer",
            CertificateProblem::NameMismatch => "tls_name_mismatch",
            CertificateProblem::Expired => "tls_expired",
            CertificateProblem::NotYetValid => "tls_not_yet_valid",
            CertificateProblem::Revoked => "tls_revoked",
            CertificateProblem::Invalid => "tls_invalid_certificate",
        }
    }

    /// What went wrong, in words, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            CertificateProblem::UnknownIssuer => "unknown issuer",
            CertificateProblem::NameMismatch => "name mismatch",
            CertificateProblem::Expired => "expired",
            CertificateProblem::NotYetValid => "not yet valid",
            CertificateProblem::Revoked => "revoked",
            CertificateProblem::Invalid => "invalid certificate",
        }
    }

    /// The problem a rustls certificate error names.
    pub fn of(error: &CertificateError) -> CertificateProblem {
        match error {
            CertificateError::UnknownIssuer => CertificateProblem::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                CertificateProblem::NameMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertificateProblem::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertificateProblem::NotYetValid
            }
            CertificateError::Revoked => CertificateProblem::Revoked,
            _ => CertificateProblem::Invalid,
        }
    }

    /// The certificate problem somewhere in `error`'s chain of causes, if
    /// the failure was a refused certificate. `std::io::Error` hides the
    /// error it wraps from `source()`, and TLS streams report rustls' errors
    /// wrapped in one, so each I/O error's inner error is looked at too.
    pub fn find(error: &(dyn StdError + 'static)) -> Option<CertificateProblem> {
        let mut cause = Some(error);
        while let Some(current) = cause {
            if let Some(rustls::Error::InvalidCertificate(certificate)) =
                current.downcast_ref::<rustls::Error>()
            {
                return Some(CertificateProblem::of(certificate));
            }
            cause = match current.downcast_ref::<std::io::Error>() {
                Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
                None => current.source(),
            };
        }
        None
    }
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_the_provider_twice_is_harmless() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn a_certificate_error_wrapped_in_io_errors_is_found() {
        let rustls_error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let outer = std::io::Error::other(io);
        assert_eq!(
            CertificateProblem::find(&outer),
            Some(CertificateProblem::UnknownIssuer)
        );
        let unrelated = std::io::Error::other("connection refused");
        assert_eq!(CertificateProblem::find(&unrelated), None);
    }

    #[test]
    fn each_certificate_error_names_its_problem() {
        assert_eq!(
            CertificateProblem::of(&CertificateError::NotValidForName),
            CertificateProblem::NameMismatch
        );
        assert_eq!(
            CertificateProblem::of(&CertificateError::Expired),
            CertificateProblem::Expired
        );
        assert_eq!(
            CertificateProblem::of(&CertificateError::BadSignature),
            CertificateProblem::Invalid
        );
    }

    #[test]
    fn missing_and_empty_files_are_refused_with_a_reason() {
        let missing = Path::new("/nonexistent/corral-cert.pem");
        assert!(matches!(
            load_certificates(missing),
            Err(TlsFileError::Read(_))
        ));
        let dir = std::env::temp_dir().join(format!("corral-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = load_certificates(&empty).unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let (file, _) = ServerCertificate::load(&empty, &empty).unwrap_err();
        assert_eq!(file, PairFile::Cert);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
