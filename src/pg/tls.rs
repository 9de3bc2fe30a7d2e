//! TLS for the sessions, with libpq's meaning of `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`: the URL's TLS settings are taken out before
//! tokio-postgres parses the rest, and rustls (with the `ring` provider)
//! does the handshake.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first; TLS if the server refuses plaintext.
    Allow,
    /// TLS if the server offers it (libpq's default), without verification.
    Prefer,
    /// TLS or nothing, without verification (unless a root certificate is
    /// given, which makes it `verify-ca`).
    Require,
    /// TLS, the certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted certificate authorities come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's bundle.
    System,
}

/// The TLS settings of a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    root: Option<RootCert>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// A URL without its TLS settings, and the settings.
#[derive(Debug)]
pub(crate) struct SplitUrl {
    pub(crate) rest: String,
    pub(crate) tls: TlsSettings,
}

/// A URL whose TLS settings cannot be used, as a lower-case clause.
#[derive(Debug)]
pub(crate) struct BadSetting(pub(crate) String);

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a
/// `postgresql://` URL or a `key=value` string.
pub(crate) fn split_url(url: &str) -> Result<SplitUrl, BadSetting> {
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if url.starts_with("postgresql://") || url.starts_with("postgres://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if KEYS.contains(&key) {
                        found.push((key.to_owned(), percent_decode(value)));
                    } else {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (key, value, raw) in key_values(url)? {
            if KEYS.contains(&key.as_str()) {
                found.push((key, value));
            } else {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    let mut tls = TlsSettings {
        mode: SslMode::Prefer,
        root: None,
        cert: None,
        key: None,
    };
    for (key, value) in found {
        match key.as_str() {
            "sslmode" => {
                tls.mode = SslMode::parse(&value).ok_or_else(|| {
                    BadSetting(format!(
                        "sslmode `{value}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                    ))
                })?;
            }
            "sslrootcert" if value == "system" => tls.root = Some(RootCert::System),
            "sslrootcert" => tls.root = Some(RootCert::File(value.into())),
            "sslcert" => tls.cert = Some(value.into()),
            _ => tls.key = Some(value.into()),
        }
    }
    if tls.root == Some(RootCert::System) && tls.mode != SslMode::VerifyFull {
        // As libpq: the system's authorities vouch for names, not for a CA.
        return Err(BadSetting(format!(
            "sslrootcert=system needs sslmode=verify-full, not {}",
            tls.mode.as_str()
        )));
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(BadSetting(
            "sslcert and sslkey must be given together".to_owned(),
        ));
    }
    Ok(SplitUrl { rest, tls })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pairs of a libpq `key=value` string: (key, unquoted value, the pair
/// as written).
fn key_values(s: &str) -> Result<Vec<(String, String, String)>, BadSetting> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Ok(out);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(BadSetting(format!("`{key}` has no `=value`")));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let mut end = s.len();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((i, '\'')) => {
                        end = i + 1;
                        break;
                    }
                    Some((_, c)) => value.push(c),
                    None => {
                        return Err(BadSetting(format!(
                            "the value of `{key}` has no closing quote"
                        )))
                    }
                }
            }
        } else {
            while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
                end = i + c.len_utf8();
            }
            if let Some(&(i, _)) = chars.peek() {
                end = end.min(i);
            }
        }
        out.push((key, value, s[start..end].to_owned()));
    }
}

/// A TLS setup that could not be built, as a lower-case clause, with the
/// file error when there is one.
#[derive(Debug)]
pub(crate) struct SetupError {
    pub(crate) reason: String,
    pub(crate) source: Option<io::Error>,
}

fn pem_error(what: &str, path: &Path, err: rustls::pki_types::pem::Error) -> SetupError {
    let source = match err {
        rustls::pki_types::pem::Error::Io(e) => Some(e),
        other => Some(io::Error::new(
            io::ErrorKind::InvalidData,
            other.to_string(),
        )),
    };
    SetupError {
        reason: format!("cannot read {what} `{}`", path.display()),
        source,
    }
}

/// The certificate authorities for `verify-*`: `sslrootcert`, or libpq's
/// default `~/.postgresql/root.crt`.
fn roots(tls: &TlsSettings) -> Result<Option<RootCertStore>, SetupError> {
    let path = match &tls.root {
        Some(RootCert::File(path)) => path.clone(),
        Some(RootCert::System) => system_bundle().ok_or_else(|| SetupError {
            reason: "sslrootcert=system: no certificate bundle found (looked at $SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt, /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/cert.pem)".to_owned(),
            source: None,
        })?,
        None => {
            let default = std::env::var_os("HOME")
                .map(|home| Path::new(&home).join(".postgresql/root.crt"))
                .filter(|p| p.exists());
            match default {
                Some(path) => path,
                None if tls.mode >= SslMode::VerifyCa => {
                    return Err(SetupError {
                        reason: format!(
                            "sslmode={} needs the certificate authority: set sslrootcert=/path/to/ca.crt (or sslrootcert=system for the system's authorities with verify-full)",
                            tls.mode.as_str()
                        ),
                        source: None,
                    })
                }
                None => return Ok(None),
            }
        }
    };
    let mut store = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(&path).map_err(|e| pem_error("sslrootcert", &path, e))?;
    for cert in certs {
        let cert = cert.map_err(|e| pem_error("sslrootcert", &path, e))?;
        // A bundle may hold certificates webpki cannot use; the rest count.
        let _ = store.add(cert);
    }
    if store.is_empty() {
        return Err(SetupError {
            reason: format!(
                "sslrootcert `{}` holds no usable certificate",
                path.display()
            ),
            source: None,
        });
    }
    Ok(Some(store))
}

fn system_bundle() -> Option<PathBuf> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    env.into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

/// Checks the server's certificate as the mode says: not at all (the
/// encryption-only modes, as libpq), the chain, or the chain and the name.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    roots: Option<RootCertStore>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.check_name {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The connector a session uses; with `sslmode=disable` it is never asked
/// to connect.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    config: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub(crate) fn new(tls: &TlsSettings) -> Result<Connector, SetupError> {
        // ring has no post-quantum key exchange (hence the deprecation);
        // aws-lc-rs would add cmake and a far longer build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // As libpq: only `require` and stronger look at a root certificate.
        let roots = if tls.mode >= SslMode::Require {
            roots(tls)?
        } else {
            None
        };
        let verifier = Verifier {
            provider: provider.clone(),
            roots,
            check_name: tls.mode == SslMode::VerifyFull,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SetupError {
                reason: format!("cannot set up TLS: {e}"),
                source: None,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| pem_error("sslcert", cert, e))?;
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("sslkey", key, e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| SetupError {
                        reason: format!("sslcert and sslkey do not form a usable pair: {e}"),
                        source: None,
                    })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Connector {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = OneConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<OneConnect, Self::Error> {
        Ok(OneConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// The connector for one host.
#[derive(Debug)]
pub(crate) struct OneConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for OneConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let stream = connector.connect(self.name, stream).await?;
            Ok(Stream(Box::new(stream)))
        })
    }
}

/// A TLS stream to the server.
#[derive(Debug)]
pub(crate) struct Stream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding needs the certificate's hash algorithm,
        // which would take an X.509 parser; authentication works without.
        ChannelBinding::none()
    }
}

/// The TLS cause of a failed connect, as a lower-case clause, if TLS is
/// what failed.
pub(crate) fn tls_cause(
    err: &tokio_postgres::Error,
    host: &str,
    tls: &TlsSettings,
) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(rustls_err) = s.downcast_ref::<rustls::Error>() {
            return Some(describe(rustls_err, host, tls));
        }
        if let Some(io_err) = s.downcast_ref::<io::Error>() {
            if let Some(inner) = io_err
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
            {
                return Some(describe(inner, host, tls));
            }
        }
        if s.to_string() == "server does not support TLS" {
            return Some(format!(
                "the server does not offer TLS, and sslmode={} forbids plaintext; enable ssl on the server, or lower sslmode",
                tls.mode.as_str()
            ));
        }
        source = s.source();
    }
    None
}

fn describe(err: &rustls::Error, host: &str, tls: &TlsSettings) -> String {
    use rustls::CertificateError as C;
    let root = match &tls.root {
        Some(RootCert::File(p)) => format!("sslrootcert `{}`", p.display()),
        Some(RootCert::System) => "the system's certificate authorities".to_owned(),
        None => "`~/.postgresql/root.crt`".to_owned(),
    };
    match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the server's certificate is not signed by a certificate authority in {root}; point sslrootcert at the authority that signed it"
        ),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!(
                "the server's certificate does not name the host `{host}` (sslmode=verify-full checks it); connect by a name the certificate lists, or use sslmode=verify-ca"
            )
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_owned()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet (check this host's clock)".to_owned()
        }
        other => format!("the TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_tls_settings_and_keep_the_rest() {
        let split = split_url(
            "postgresql://app@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            split.rest,
            "postgresql://app@db:5432/app?application_name=x"
        );
        assert_eq!(split.tls.mode, SslMode::VerifyFull);
        assert_eq!(split.tls.root, Some(RootCert::File("/etc/ca.pem".into())));
        let split = split_url("postgresql://db/app?sslmode=verify-ca").unwrap();
        assert_eq!(split.rest, "postgresql://db/app");
        assert_eq!(split.tls.mode, SslMode::VerifyCa);
        let split =
            split_url("host=db sslmode = require  user='a b' sslrootcert='/x y/ca.crt'").unwrap();
        assert_eq!(split.rest, "host=db user='a b'");
        assert_eq!(split.tls.mode, SslMode::Require);
        assert_eq!(split.tls.root, Some(RootCert::File("/x y/ca.crt".into())));
    }

    #[test]
    fn libpq_defaults_and_refusals() {
        assert_eq!(split_url("host=db").unwrap().tls.mode, SslMode::Prefer);
        assert_eq!(
            split_url("postgresql://db").unwrap().tls.mode,
            SslMode::Prefer
        );
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            let tls = split_url(&format!("host=db sslmode={mode}")).unwrap().tls;
            assert_eq!(tls.mode.as_str(), mode);
        }
        let bad = split_url("host=db sslmode=verify").unwrap_err();
        assert!(bad.0.contains("verify-full"), "{}", bad.0);
        assert!(split_url("host=db sslrootcert=system sslmode=require").is_err());
        assert!(split_url("host=db sslcert=/a.crt").is_err());
        assert!(split_url("host=db user='unterminated").is_err());
    }

    #[test]
    fn only_require_and_stronger_read_the_authority() {
        // A missing file is an error only where it would be used.
        for (mode, used) in [("prefer", false), ("allow", false), ("require", true)] {
            let url = format!("host=db sslmode={mode} sslrootcert=/nonexistent/ca.crt");
            let tls = split_url(&url).unwrap().tls;
            assert_eq!(Connector::new(&tls).is_err(), used, "{mode}");
        }
    }

    #[test]
    fn verify_modes_without_an_authority_are_refused_before_connecting() {
        let tls = split_url("host=db sslmode=verify-full").unwrap().tls;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if home.is_some_and(|h| h.join(".postgresql/root.crt").exists()) {
            return;
        }
        let err = Connector::new(&tls).unwrap_err();
        assert!(err.reason.contains("sslrootcert"), "{}", err.reason);
    }
}
