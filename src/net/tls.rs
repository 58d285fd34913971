//! TLS configurations for both binaries: the server's (a certificate from
//! PEM files, or a self-signed one made at start) and the load generator's
//! (a CA file, the system-free default of trusting nothing, or no checks at
//! all for benchmarks).
//!
//! The crypto provider is *ring*: it builds with a C compiler alone (no
//! cmake, no Go, no NASM), which is all a fresh machine here has. TLS 1.2
//! and 1.3 are on; session resumption is on both ways (stateless tickets
//! from a per-process key, plus a session-id cache for TLS 1.2 clients that
//! do not take tickets).

/// The TLS library, for code that builds on these configurations.
pub use rustls;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// TLS 1.2 sessions a server remembers for resumption by session id.
const SESSION_CACHE: usize = 4096;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The server's provider: AES-128-GCM preferred over AES-256-GCM, whatever
/// the client lists first (both are sound; 128-bit AES takes 10 rounds
/// instead of 14, which shows on large messages), `ChaCha20` for clients
/// without AES hardware last, as *ring* orders them.
fn server_provider() -> Arc<CryptoProvider> {
    let mut p = ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ if s.version() == &rustls::version::TLS13 => 2,
        _ => 5,
    };
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

/// The server's certificate: from `--tls-cert`/`--tls-key`, or made now.
pub enum Identity<'a> {
    /// PEM files: the chain (leaf first) and its private key.
    Files {
        /// The certificate chain.
        cert: &'a Path,
        /// The private key.
        key: &'a Path,
    },
    /// A self-signed certificate for this host name.
    SelfSigned(&'a str),
}

/// A server configuration for `identity`. Errors are one line for a person
/// (`cannot read /x.pem: no such file or directory`, `the key does not
/// match the certificate`).
pub fn server_config(identity: &Identity<'_>) -> Result<Arc<ServerConfig>, String> {
    let (chain, key) = match identity {
        Identity::Files { cert, key } => load(cert, key)?,
        Identity::SelfSigned(host) => self_signed(host)?,
    };
    let mut config = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => "the key does not match the certificate".into(),
            e => format!("unusable certificate or key: {e}"),
        })?;
    config.ignore_client_order = true;
    config.ticketer = ring::Ticketer::new().map_err(|e| e.to_string())?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    // One ticket is enough for a client that reconnects; rustls's default
    // of four costs four encryptions per full handshake.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

fn load(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let pem_error = |path: &Path, e: rustls::pki_types::pem::Error| match e {
        rustls::pki_types::pem::Error::Io(e) => {
            format!(
                "cannot read {}: {}",
                path.display(),
                crate::net::plain_error(&e)
            )
        }
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PEM certificate or key found", path.display())
        }
        e => format!("{}: {e}", path.display()),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, e))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
    Ok((chain, key))
}

fn self_signed(
    host: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let made = rcgen::generate_simple_self_signed(vec![host.to_string()])
        .map_err(|e| format!("cannot make a certificate for {host}: {e}"))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|e| format!("cannot make a certificate for {host}: {e}"))?;
    Ok((vec![made.cert.der().clone()], key))
}

/// A self-signed certificate and key for `host`, as PEM (tests, examples).
pub fn self_signed_pem(host: &str) -> Result<(String, String), String> {
    let made = rcgen::generate_simple_self_signed(vec![host.to_string()])
        .map_err(|e| format!("cannot make a certificate for {host}: {e}"))?;
    Ok((made.cert.pem(), made.signing_key.serialize_pem()))
}

/// Whom a client trusts.
pub enum Trust<'a> {
    /// Certificates issued by the CAs in this PEM file.
    Ca(&'a Path),
    /// Anyone: no certificate checks at all (benchmarks against a sink's
    /// self-signed certificate). Signatures are still verified, so the
    /// handshake costs what a checked one does.
    Anyone,
}

/// A client configuration; `resumption` off makes every handshake full.
pub fn client_config(trust: &Trust<'_>, resumption: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut config = match trust {
        Trust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no PEM certificate found", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Anyone => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The name a client asks for (SNI, certificate check).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|_| format!("not a usable TLS name: {host}"))
}

/// Accepts any certificate, checks signatures (`--insecure`).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
