//! TLS (`rediss://`, `ssl: true`) with rustls. Certificates come as redis-rb's `ssl_params`
//! give them: a CA file (else the Mozilla roots of webpki-roots), an optional client
//! certificate and key for servers that authenticate clients, and `verify_mode` NONE to skip
//! verification (a test setup; never in production).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::sync::Arc;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM of the CA certificates to trust; none: the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of a client certificate and its key, for servers that ask for one.
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
    pub verify: bool,
}

impl std::fmt::Debug for TlsConfig {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_cert", &self.cert_pem.is_some())
            .field("verify", &self.verify)
            .finish()
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

pub fn connect(sock: TcpStream, host: &str, tls: &TlsConfig) -> io::Result<TlsStream> {
    let config = client_config(tls)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| invalid(&format!("server name {host}: {e}")))?;
    let conn =
        ClientConnection::new(Arc::new(config), name).map_err(|e| invalid(&e.to_string()))?;
    let mut stream = StreamOwned::new(conn, sock);
    // Handshake now, so a certificate problem is a failure to connect, not of the first command.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

fn client_config(tls: &TlsConfig) -> io::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e.to_string()))?;
    let builder = if tls.verify {
        let mut roots = RootCertStore::empty();
        match &tls.ca_pem {
            Some(pem) => {
                for cert in rustls_pemfile::certs(&mut BufReader::new(pem.as_slice())) {
                    roots.add(cert?).map_err(|e| invalid(&e.to_string()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    match (&tls.cert_pem, &tls.key_pem) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut BufReader::new(cert.as_slice()))
                .collect::<Result<Vec<_>, _>>()?;
            let key: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut BufReader::new(key.as_slice()))?
                    .ok_or_else(|| invalid("no private key in ssl_params[:key]"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid(&e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("TLS: {what}"))
}

/// `verify_mode: OpenSSL::SSL::VERIFY_NONE`: accepts any certificate, still checks signatures.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
