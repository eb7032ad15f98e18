//! TLS for QUIC: a self-signed certificate from `node.key`, and verifiers
//! that trust a public key, not a certificate authority.
//!
//! Both sides present an Ed25519 certificate made by rcgen from their node
//! key. The client accepts the server only if the certificate's key is the
//! NodeId it dialled; the server requires a client certificate and accepts
//! any Ed25519 key (membership is proved after the handshake, by `Hello`),
//! and the connection then knows the client's NodeId. Both refuse
//! intermediates, TLS 1.2 and every signature scheme but Ed25519.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::id::NodeId;
use crate::wire::ALPN;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the key's 32 bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// The DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The TLS server name every node uses; identity comes from the key, not the name.
pub const SERVER_NAME: &str = "p2pfs.invalid";

/// A TLS setup that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused to make the certificate.
    #[error("making the node's TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("configuring TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// This node's TLS identity: its certificate and private key.
pub struct Identity {
    cert: CertificateDer<'static>,
    /// The node key's PKCS#8 form, which holds its secret seed.
    pkcs8: Vec<u8>,
}

/// Shows the certificate's key, never the secret seed.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let node = node_id_of(&self.cert).map_or_else(|| "?".to_owned(), |n| n.short(16));
        write!(f, "Identity(node {node}, secret key hidden)")
    }
}

impl Identity {
    /// A self-signed certificate for the Ed25519 key with this secret seed.
    pub fn from_node_key(seed: &[u8; 32]) -> Result<Self, TlsError> {
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(seed);
        let der = PrivatePkcs8KeyDer::from(pkcs8.clone());
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        let cert = params.self_signed(&key_pair)?;
        Ok(Self { cert: cert.der().clone(), pkcs8 })
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }
}

/// The NodeId a certificate's key is, if it is a well-formed certificate of an Ed25519 key.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX)?;
    Some(NodeId(key.try_into().ok()?))
}

/// rustls with ring, TLS 1.3 only, AES-128-GCM preferred (the fastest here
/// with AES-NI), Ed25519 signatures only.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| match suite.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    provider.cipher_suites.retain(|suite| suite.version() == &rustls::version::TLS13);
    Arc::new(provider)
}

/// The client side: trusts exactly one key, the NodeId it dials.
pub fn client_config(identity: &Identity, expected: NodeId) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer { expected, algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain(), identity.key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The server side: requires a client certificate of any Ed25519 key.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AnyNodeClient { algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain(), identity.key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

fn refuse(reason: &str) -> rustls::Error {
    rustls::Error::General(reason.to_owned())
}

/// Checks what both verifiers check: one certificate, of an Ed25519 key.
fn certified_node(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<NodeId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(refuse("p2pfs peers present one self-signed certificate; intermediates are refused"));
    }
    node_id_of(end_entity).ok_or_else(|| refuse("the peer's certificate is not of an Ed25519 node key"))
}

fn verify_ed25519(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(refuse("p2pfs peers sign with Ed25519 only"));
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
}

#[derive(Debug)]
struct PinnedServer {
    expected: NodeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let node = certified_node(end_entity, intermediates)?;
        if node != self.expected {
            return Err(refuse(&format!(
                "the peer presented key {} but we dialled node {}: refusing a possible impostor",
                node.short(16),
                self.expected.short(16)
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(refuse("TLS 1.2 is refused"))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[derive(Debug)]
struct AnyNodeClient {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyNodeClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        certified_node(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(refuse("TLS 1.2 is refused"))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_node_key() {
        let seed = [7u8; 32];
        let identity = Identity::from_node_key(&seed).unwrap();
        let expected = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        assert_eq!(node_id_of(&identity.cert), Some(NodeId(expected)));
    }

    #[test]
    fn debug_output_never_shows_the_secret_seed() {
        let seed = [0x5a; 32];
        let shown = format!("{:?}", Identity::from_node_key(&seed).unwrap());
        assert!(!shown.contains("5a5a") && !shown.contains("90, 90"), "{shown}");
        assert!(shown.contains("hidden"), "{shown}");
    }

    #[test]
    fn garbage_is_not_a_node_certificate() {
        assert_eq!(node_id_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])), None);
    }
}
