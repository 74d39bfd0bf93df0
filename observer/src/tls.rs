//! The endpoint's TLS: a rustls server configuration (ring's cryptography, no OpenSSL) from
//! the PEM certificate, key and client CA that the web configuration file names, read once.
use std::{path::PathBuf, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion, crypto::CryptoProvider,
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// What `tls_server_config` asks for, checked (`web_config`), the PEMs not yet read.
#[derive(Debug)]
pub struct Settings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub min: Version,
    pub max: Version,
}

/// PEM text given in the file itself or in a file of its own; `key` names where, for errors.
#[derive(Debug)]
pub enum Pem {
    Inline { key: String, text: String },
    File { key: String, path: PathBuf },
}

/// Which client certificates the endpoint asks for, and the CAs that must have signed them.
#[derive(Debug)]
pub enum ClientAuth {
    None,
    VerifyIfGiven(Pem),
    Require(Pem),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Tls12,
    Tls13,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {why}")]
    Pem { what: String, why: String },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
}

/// The server configuration: the certificate chain and key (which must match), the client
/// verifier, the protocol versions, and HTTP/1.1 offered through ALPN.
pub fn server_config(s: &Settings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&s.cert)?;
    let key = private_key(&s.key)?;
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (Version::Tls12, &rustls::version::TLS12),
        (Version::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (s.min..=s.max).contains(v))
    .map(|(_, v)| v)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|source| TlsError::Rustls {
            what: "tls_server_config.min_version/max_version",
            source,
        })?;
    let builder = match &s.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::VerifyIfGiven(ca) => {
            builder.with_client_cert_verifier(client_verifier(ca, provider, false)?)
        }
        ClientAuth::Require(ca) => {
            builder.with_client_cert_verifier(client_verifier(ca, provider, true)?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => TlsError::Pem {
            what: s.key.describe(),
            why: format!(
                "not the private key of the certificate in {}",
                s.cert.describe()
            ),
        },
        source => TlsError::Rustls {
            what: "tls_server_config: the certificate and key",
            source,
        },
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn client_verifier(
    ca: &Pem,
    provider: Arc<CryptoProvider>,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: ca.describe(),
            why: format!("not a CA certificate: {e}"),
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| TlsError::Pem {
        what: ca.describe(),
        why: e.to_string(),
    })
}

fn certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = pem.read()?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem.error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem.error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn private_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = pem.read()?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem.error("no PEM private key in it".into()),
        e => pem.error(e.to_string()),
    })
}

impl Pem {
    fn read(&self) -> Result<Vec<u8>, TlsError> {
        match self {
            Pem::Inline { text, .. } => Ok(text.clone().into_bytes()),
            Pem::File { path, .. } => std::fs::read(path).map_err(|e| self.error(e.to_string())),
        }
    }

    fn describe(&self) -> String {
        match self {
            Pem::Inline { key, .. } => format!("`{key}`"),
            Pem::File { key, path } => format!("`{key}` {}", path.display()),
        }
    }

    fn error(&self, why: String) -> TlsError {
        TlsError::Pem {
            what: self.describe(),
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};

    use super::*;

    /// A CA, and a server certificate for localhost that it signed: (CA PEM, cert PEM, key PEM).
    fn pems() -> (String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    fn inline(key: &str, text: &str) -> Pem {
        Pem::Inline {
            key: key.into(),
            text: text.into(),
        }
    }

    fn settings(cert: &str, key: &str, client_auth: ClientAuth) -> Settings {
        Settings {
            cert: inline("tls_server_config.cert", cert),
            key: inline("tls_server_config.key", key),
            client_auth,
            min: Version::Tls12,
            max: Version::Tls13,
        }
    }

    #[test]
    fn a_matching_certificate_and_key_make_a_server() {
        let (ca, cert, key) = pems();
        let c = server_config(&settings(&cert, &key, ClientAuth::None)).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let c = server_config(&settings(
            &cert,
            &key,
            ClientAuth::Require(inline("ca", &ca)),
        ));
        assert!(c.is_ok());
        // TLS 1.3 only.
        let mut s = settings(&cert, &key, ClientAuth::VerifyIfGiven(inline("ca", &ca)));
        s.min = Version::Tls13;
        assert!(server_config(&s).is_ok());
    }

    #[test]
    fn what_cannot_serve_is_named() {
        let (_, cert, key) = pems();
        let (_, other_cert, _) = pems();
        let err = |s: Settings| server_config(&s).unwrap_err().to_string();
        let e = err(settings(&other_cert, &key, ClientAuth::None));
        assert_eq!(
            e,
            "`tls_server_config.key`: not the private key of the certificate in `tls_server_config.cert`"
        );
        let e = err(settings(&key, &key, ClientAuth::None));
        assert!(
            e.contains("`tls_server_config.cert`: no PEM certificate"),
            "{e}"
        );
        let e = err(settings(&cert, &cert, ClientAuth::None));
        assert!(
            e.contains("`tls_server_config.key`: no PEM private key"),
            "{e}"
        );
        let e = err(settings(
            &cert,
            &key,
            ClientAuth::Require(inline("client_ca", &key)),
        ));
        assert!(e.contains("`client_ca`: no PEM certificate"), "{e}");
        let mut s = settings(&cert, &key, ClientAuth::None);
        s.key = Pem::File {
            key: "tls_server_config.key_file".into(),
            path: "/nonexistent/server.key".into(),
        };
        let e = err(s);
        assert!(
            e.contains("`tls_server_config.key_file` /nonexistent/server.key: No such file"),
            "{e}"
        );
    }
}
