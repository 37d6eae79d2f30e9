//! TLS (`rediss://`, `ssl: true`) with rustls. Certificates come as redis-rb's `ssl_params`
//! give them: CA certificates (the Ruby side reads `ca_file`/`ca_path`, else the system's
//! trust store as OpenSSL's defaults would; the Mozilla roots of webpki-roots only when none
//! can be read), an optional client certificate and key for servers that authenticate
//! clients, `verify_hostname: false` to accept a certificate for another name, and
//! `verify_mode` NONE to skip verification (a test setup; never in production).

use crate::fork::ForkSafeMutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme, StreamOwned,
};
use std::io::{self, BufReader, Read};
use std::net::TcpStream;
use std::sync::{Arc, LazyLock};

#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM of the CA certificates to trust; none: the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of a client certificate and its key, for servers that ask for one.
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
    pub verify: bool,
    /// Whether the certificate must name the host connected to (OpenSSL's `verify_hostname`).
    pub verify_hostname: bool,
}

impl std::fmt::Debug for TlsConfig {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_cert", &self.cert_pem.is_some())
            .field("verify", &self.verify)
            .field("verify_hostname", &self.verify_hostname)
            .finish()
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects over `sock` (whose read and write timeouts bound the handshake). A read interrupted
/// by a signal asks `stop` whether to give up (`Interrupted`) or go on.
pub fn connect(
    sock: TcpStream,
    host: &str,
    tls: &TlsConfig,
    stop: &dyn Fn() -> bool,
) -> io::Result<TlsStream> {
    let config = cached_client_config(tls)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| invalid(&format!("server name {host}: {e}")))?;
    let conn = ClientConnection::new(config, name).map_err(|e| invalid(&e.to_string()))?;
    let mut stream = StreamOwned::new(conn, sock);
    // Handshake now, so a certificate problem is a failure to connect, not of the first command.
    // By hand rather than with rustls' `complete_io`, which retries a read interrupted by a
    // signal itself: the caller could then never stop a handshake that hangs.
    while stream.conn.is_handshaking() {
        flush_records(&mut stream, stop)?;
        if stream.conn.is_handshaking() {
            read_records(&mut stream, stop)?;
        }
    }
    flush_records(&mut stream, stop)?;
    Ok(stream)
}

/// Reads decrypted bytes. A read of the socket interrupted by a signal returns `Interrupted`
/// to the caller (which asks its cancel token whether to go on), as a plain socket's read does;
/// rustls' own `Read` would retry it and never let the caller stop.
pub fn read(stream: &mut TlsStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.conn.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        flush_records(stream, &|| true)?;
        if stream.conn.read_tls(&mut stream.sock)? == 0 {
            // Closed without close_notify: the reader says so on the next round.
            stream.conn.process_new_packets().map_err(tls_error)?;
            return match stream.conn.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                done => done,
            };
        }
        stream.conn.process_new_packets().map_err(tls_error)?;
    }
}

/// Sends what rustls has queued (handshake messages, alerts). A write interrupted by a signal
/// asks `stop` whether to give up.
fn flush_records(stream: &mut TlsStream, stop: &dyn Fn() -> bool) -> io::Result<()> {
    while stream.conn.wants_write() {
        match stream.conn.write_tls(&mut stream.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !stop() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_records(stream: &mut TlsStream, stop: &dyn Fn() -> bool) -> io::Result<()> {
    loop {
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(_) => {
                stream.conn.process_new_packets().map_err(tls_error)?;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !stop() => {}
            Err(e) => return Err(e),
        }
    }
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// Built configurations, by the settings they were built from: every new connection of a store
/// would otherwise parse its PEM files again. A process has a handful of TLS setups.
static CLIENT_CONFIGS: LazyLock<ForkSafeMutex<Vec<BuiltConfig>>> =
    LazyLock::new(|| ForkSafeMutex::new(Vec::new()));
type BuiltConfig = (TlsConfig, Arc<ClientConfig>);
const CACHED_CONFIGS: usize = 16;

fn cached_client_config(tls: &TlsConfig) -> io::Result<Arc<ClientConfig>> {
    if let Some((_, config)) = CLIENT_CONFIGS.lock().iter().find(|(key, _)| key == tls) {
        return Ok(Arc::clone(config));
    }
    let config = Arc::new(client_config(tls)?);
    let mut cache = CLIENT_CONFIGS.lock();
    if cache.len() >= CACHED_CONFIGS {
        cache.remove(0);
    }
    cache.push((tls.clone(), Arc::clone(&config)));
    Ok(config)
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
        if tls.verify_hostname {
            builder.with_root_certificates(roots)
        } else {
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(&e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyHostName(chain)))
        }
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

/// `verify_hostname: false`: the chain must lead to a trusted CA and be valid, whatever name
/// the certificate gives.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
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
