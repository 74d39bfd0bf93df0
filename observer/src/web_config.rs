//! `--web.config.file`: the Prometheus exporter-toolkit's web configuration file (TLS, basic
//! auth and response headers for the metrics endpoint), read as strictly as the toolkit reads
//! it: an unknown key is an error. What the toolkit offers and observer does not is refused by
//! name, never ignored. The file and the certificates it names are read once, at start.
use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr as _,
    sync::Arc,
};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, de::IgnoredAny};

use crate::{basic_auth::BasicAuth, tls};

/// What the endpoint enforces; the default (no file) is plain HTTP, open to all.
#[derive(Clone, Default)]
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// None: no authentication.
    pub auth: Option<Arc<BasicAuth>>,
    /// Added to every response.
    pub headers: HeaderMap,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth)
            .field("headers", &self.headers)
            .finish()
    }
}

/// Why a web configuration file cannot be used: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("{0}")]
    Read(std::io::Error),
    #[error("{0}")]
    Syntax(String),
    #[error("`{key}` is not supported by observer: {why}")]
    Unsupported { key: String, why: &'static str },
    #[error("`{key}`: {why}")]
    Invalid { key: String, why: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("no randomness from the system for the password cache's key")]
    Random,
}

/// Reads and checks the file, then loads the certificates it names.
pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
    let text = std::fs::read_to_string(path).map_err(WebConfigError::Read)?;
    // Relative paths in the file are relative to its directory, as the toolkit has them.
    let dir = path.parent().unwrap_or(Path::new(""));
    let settings = parse(&text, dir)?;
    Ok(WebConfig {
        tls: settings.tls.as_ref().map(tls::server_config).transpose()?,
        auth: BasicAuth::new(settings.users)
            .map_err(|_| WebConfigError::Random)?
            .map(Arc::new),
        headers: settings.headers,
    })
}

/// The file's settings, checked, with paths made absolute from `dir`: everything but the
/// certificates' contents.
#[derive(Debug, Default)]
pub struct Settings {
    pub tls: Option<tls::Settings>,
    pub users: BTreeMap<String, String>,
    pub headers: HeaderMap,
}

// The file as the toolkit defines it (prometheus/exporter-toolkit, docs/web-configuration.md).
// Keys observer refuses are read as IgnoredAny so that they can be named.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, deserialize_with = "given_even_empty")]
    tls_server_config: Option<TlsSection>,
    http_server_config: Option<HttpSection>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<IgnoredAny>,
    curve_preferences: Option<IgnoredAny>,
    prefer_server_cipher_suites: Option<IgnoredAny>,
    client_allowed_sans: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// A section given with nothing in it (`tls_server_config:`) is there all the same: asking for
/// TLS without a certificate is an error, not plain HTTP as the toolkit has it.
fn given_even_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// The headers the toolkit lets a file set, and the values it allows (none listed: any).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Parses and checks the file's text; `dir` is its directory.
pub fn parse(text: &str, dir: &Path) -> Result<Settings, WebConfigError> {
    let options = serde_saphyr::options! { with_snippet: false };
    let file: Option<File> = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        WebConfigError::Syntax(one_line(
            &e.render_with_formatter(&serde_saphyr::UserMessageFormatter),
        ))
    })?;
    // A file of nothing but comments is the toolkit's "no TLS, no auth".
    let Some(file) = file else {
        return Ok(Settings::default());
    };
    if file.rate_limit.is_some() {
        return Err(unsupported(
            "rate_limit",
            "the endpoint bounds its clients by connections instead (README, Metrics)",
        ));
    }
    Ok(Settings {
        tls: file
            .tls_server_config
            .map(|t| tls_settings(t, dir))
            .transpose()?,
        users: users(file.basic_auth_users.unwrap_or_default())?,
        headers: match file.http_server_config {
            Some(h) => http(h)?,
            None => HeaderMap::new(),
        },
    })
}

fn tls_settings(t: TlsSection, dir: &Path) -> Result<tls::Settings, WebConfigError> {
    let refused = [
        (
            t.cipher_suites.is_some(),
            "cipher_suites",
            "rustls offers only its own safe suites",
        ),
        (
            t.curve_preferences.is_some(),
            "curve_preferences",
            "rustls offers only its own safe groups",
        ),
        (
            t.prefer_server_cipher_suites.is_some(),
            "prefer_server_cipher_suites",
            "rustls offers only its own safe suites",
        ),
        (
            t.client_allowed_sans.is_some(),
            "client_allowed_sans",
            "client certificates are checked against client_ca_file only",
        ),
    ];
    if let Some((_, key, why)) = refused.into_iter().find(|(given, _, _)| *given) {
        return Err(unsupported(&format!("tls_server_config.{key}"), why));
    }
    let cert = pem("cert", t.cert, t.cert_file, dir)?.ok_or_else(|| {
        invalid(
            "tls_server_config",
            "needs cert_file (or cert) and key_file (or key)",
        )
    })?;
    let key = pem("key", t.key, t.key_file, dir)?.ok_or_else(|| {
        invalid(
            "tls_server_config",
            "needs key_file (or key) with cert_file (or cert)",
        )
    })?;
    let ca = pem("client_ca", t.client_ca, t.client_ca_file, dir)?;
    let auth = given(t.client_auth_type);
    let client_auth = match (auth.as_deref().unwrap_or("NoClientCert"), ca) {
        ("NoClientCert", None) => tls::ClientAuth::None,
        ("NoClientCert", Some(_)) => {
            return Err(invalid(
                "tls_server_config.client_ca_file",
                "a client CA is given but client_auth_type is NoClientCert",
            ));
        }
        ("VerifyClientCertIfGiven", Some(ca)) => tls::ClientAuth::VerifyIfGiven(ca),
        ("RequireAndVerifyClientCert", Some(ca)) => tls::ClientAuth::Require(ca),
        (kind @ ("VerifyClientCertIfGiven" | "RequireAndVerifyClientCert"), None) => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                format!("{kind} needs client_ca_file (or client_ca) to verify against"),
            ));
        }
        (kind @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert"), _) => {
            return Err(unsupported(
                &format!("tls_server_config.client_auth_type: {kind}"),
                "it accepts a client certificate that nobody verified; use \
                 RequireAndVerifyClientCert with client_ca_file",
            ));
        }
        (other, _) => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                format!(
                    "`{other}` is not one of NoClientCert, VerifyClientCertIfGiven, \
                     RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    let min = version("min_version", t.min_version)?.unwrap_or(tls::Version::Tls12);
    let max = version("max_version", t.max_version)?.unwrap_or(tls::Version::Tls13);
    if min > max {
        return Err(invalid(
            "tls_server_config.min_version",
            "is above max_version",
        ));
    }
    Ok(tls::Settings {
        cert,
        key,
        client_auth,
        min,
        max,
    })
}

/// A PEM given inline (`name`) or as a file (`name_file`, relative to `dir`), or neither.
fn pem(
    name: &str,
    inline: Option<String>,
    file: Option<String>,
    dir: &Path,
) -> Result<Option<tls::Pem>, WebConfigError> {
    match (given(inline), given(file)) {
        (Some(_), Some(_)) => Err(invalid(
            &format!("tls_server_config.{name}"),
            format!("give {name} or {name}_file, not both"),
        )),
        (Some(text), None) => Ok(Some(tls::Pem::Inline {
            key: format!("tls_server_config.{name}"),
            text,
        })),
        (None, Some(path)) => Ok(Some(tls::Pem::File {
            key: format!("tls_server_config.{name}_file"),
            path: dir.join(PathBuf::from(path)),
        })),
        (None, None) => Ok(None),
    }
}

fn version(key: &str, v: Option<String>) -> Result<Option<tls::Version>, WebConfigError> {
    match given(v).as_deref() {
        None => Ok(None),
        Some("TLS12") => Ok(Some(tls::Version::Tls12)),
        Some("TLS13") => Ok(Some(tls::Version::Tls13)),
        Some(old @ ("TLS10" | "TLS11")) => Err(unsupported(
            &format!("tls_server_config.{key}: {old}"),
            "rustls speaks TLS12 and TLS13 only",
        )),
        Some(other) => Err(invalid(
            &format!("tls_server_config.{key}"),
            format!("`{other}` is not TLS12 or TLS13"),
        )),
    }
}

/// The users, each hash checked to be bcrypt's (as the toolkit does at start).
fn users(users: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, WebConfigError> {
    for (user, hash) in &users {
        let key = || format!("basic_auth_users.{user}");
        if user.contains(':') {
            return Err(invalid(
                &key(),
                "a user name cannot hold `:`, which basic auth puts between name and password",
            ));
        }
        let parts = bcrypt::HashParts::from_str(hash).map_err(|e| {
            invalid(
                &key(),
                format!("not a bcrypt hash like htpasswd -nbB makes ({e})"),
            )
        })?;
        if !(4..=31).contains(&parts.get_cost()) {
            return Err(invalid(
                &key(),
                format!("bcrypt cost {} is outside 4 to 31", parts.get_cost()),
            ));
        }
    }
    Ok(users)
}

fn http(h: HttpSection) -> Result<HeaderMap, WebConfigError> {
    if h.http2 == Some(true) {
        return Err(unsupported(
            "http_server_config.http2: true",
            "the endpoint speaks HTTP/1.1 (TLS clients agree on it through ALPN); use \
             http2: false or leave it out",
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in h.headers.unwrap_or_default() {
        let key = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = HEADERS.iter().find(|(n, _)| *n == name) else {
            return Err(invalid(
                &key,
                format!(
                    "not a header the file can set (one of {})",
                    HEADERS.map(|(n, _)| n).join(", ")
                ),
            ));
        };
        // Blank: unset, as the toolkit documents.
        if value.is_empty() {
            continue;
        }
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(invalid(
                &key,
                format!("`{value}` is not one of {}", allowed.join(", ")),
            ));
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| invalid(&key, format!("`{value}` is not a header value")))?;
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a listed header name");
        headers.insert(name, value);
    }
    Ok(headers)
}

/// An empty string is the toolkit's "not given".
fn given(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn unsupported(key: &str, why: &'static str) -> WebConfigError {
    WebConfigError::Unsupported {
        key: key.into(),
        why,
    }
}

fn invalid(key: &str, why: impl Into<String>) -> WebConfigError {
    WebConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Settings, WebConfigError> {
        parse(text, Path::new("/etc/observer"))
    }

    /// The error's line, which must be one line that names `key`.
    fn refused(text: &str, key: &str) -> String {
        let e = settings(text).expect_err(text).to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.contains(key), "{key} named in: {e}");
        e
    }

    const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

    #[test]
    fn an_empty_file_is_plain_http_open_to_all() {
        for text in ["", "# nothing yet\n", "---\n"] {
            let s = settings(text).unwrap();
            assert!(s.tls.is_none() && s.users.is_empty() && s.headers.is_empty());
        }
    }

    #[test]
    fn the_toolkit_format_is_read() {
        let s = settings(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
             Strict-Transport-Security: max-age=31536000\n    X-XSS-Protection: ''\n\
             basic_auth_users:\n  prometheus: '{HASH}'\n"
        ))
        .unwrap();
        let tls = s.tls.unwrap();
        // Relative to the file's directory, as the toolkit has it; absolute stays.
        assert!(
            matches!(&tls.cert, tls::Pem::File { path, key } if path == Path::new("/etc/observer/server.crt") && key == "tls_server_config.cert_file")
        );
        assert!(
            matches!(&tls.key, tls::Pem::File { path, .. } if path == Path::new("/abs/server.key"))
        );
        assert!(
            matches!(&tls.client_auth, tls::ClientAuth::Require(tls::Pem::File { path, .. }) if path == Path::new("/etc/observer/ca.crt"))
        );
        assert_eq!(
            (tls.min, tls.max),
            (tls::Version::Tls13, tls::Version::Tls13)
        );
        assert_eq!(s.users.get("prometheus").map(String::as_str), Some(HASH));
        assert_eq!(s.headers.get("x-frame-options").unwrap(), "deny");
        assert_eq!(
            s.headers.get("strict-transport-security").unwrap(),
            "max-age=31536000"
        );
        assert!(s.headers.get("x-xss-protection").is_none(), "blank: unset");
    }

    #[test]
    fn defaults_as_the_toolkit_has_them() {
        let s = settings("tls_server_config:\n  cert: PEM\n  key: PEM\n").unwrap();
        let tls = s.tls.unwrap();
        assert!(matches!(tls.cert, tls::Pem::Inline { .. }));
        assert!(matches!(tls.client_auth, tls::ClientAuth::None));
        assert_eq!(
            (tls.min, tls.max),
            (tls::Version::Tls12, tls::Version::Tls13)
        );
        let s = settings(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca: PEM\n",
        )
        .unwrap();
        assert!(matches!(
            s.tls.unwrap().client_auth,
            tls::ClientAuth::VerifyIfGiven(tls::Pem::Inline { .. })
        ));
    }

    #[test]
    fn unknown_keys_are_errors_that_name_them() {
        refused("tls_server_config:\n  certfile: a\n", "certfile");
        refused("basic_auth:\n  u: x\n", "basic_auth");
        refused("http_server_config:\n  header:\n    X: y\n", "header");
        // A key given twice, as the toolkit's strict YAML refuses it.
        refused(
            &format!("basic_auth_users:\n  u: '{HASH}'\nbasic_auth_users:\n  v: '{HASH}'\n"),
            "basic_auth_users",
        );
        let e = settings("tls_server_config: [a, b]\n").unwrap_err();
        assert!(matches!(e, WebConfigError::Syntax(_)), "{e}");
    }

    #[test]
    fn what_observer_does_not_support_is_refused_by_name() {
        let tls = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        for (extra, key) in [
            (
                "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "tls_server_config.cipher_suites",
            ),
            (
                "  curve_preferences: [X25519]\n",
                "tls_server_config.curve_preferences",
            ),
            (
                "  prefer_server_cipher_suites: false\n",
                "prefer_server_cipher_suites",
            ),
            (
                "  client_allowed_sans: [a.example]\n",
                "client_allowed_sans",
            ),
            ("  min_version: TLS11\n", "min_version: TLS11"),
            ("  max_version: TLS10\n", "max_version: TLS10"),
            (
                "  client_auth_type: RequireAnyClientCert\n  client_ca_file: c\n",
                "RequireAnyClientCert",
            ),
            (
                "  client_auth_type: RequestClientCert\n",
                "RequestClientCert",
            ),
        ] {
            let e = refused(&format!("{tls}{extra}"), key);
            assert!(e.contains("not supported"), "{e}");
        }
        refused("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit");
        refused("http_server_config:\n  http2: true\n", "http2");
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let tls = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        for (text, key) in [
            (
                "tls_server_config:\n  key_file: b\n".to_string(),
                "tls_server_config",
            ),
            (
                "tls_server_config:\n  cert_file: a\n".into(),
                "tls_server_config",
            ),
            // The toolkit's "TLS off" when all is blank: refused, not silently plain HTTP.
            ("tls_server_config: {}\n".into(), "tls_server_config"),
            ("tls_server_config:\n".into(), "tls_server_config"),
            (
                "tls_server_config:\n  cert_file: ''\n".into(),
                "tls_server_config",
            ),
            (format!("{tls}  cert: PEM\n"), "tls_server_config.cert"),
            (format!("{tls}  client_ca_file: c\n"), "client_ca_file"),
            (
                format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
                "client_auth_type",
            ),
            (
                format!("{tls}  client_auth_type: Sometimes\n"),
                "client_auth_type",
            ),
            (
                format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"),
                "min_version",
            ),
            (format!("{tls}  min_version: SSL3\n"), "min_version"),
            (
                "basic_auth_users:\n  u: plain\n".into(),
                "basic_auth_users.u",
            ),
            (
                format!(
                    "basic_auth_users:\n  u: '{}'\n",
                    HASH.replace("$10$", "$03$")
                ),
                "basic_auth_users.u",
            ),
            (
                format!("basic_auth_users:\n  'a:b': '{HASH}'\n"),
                "basic_auth_users.a:b",
            ),
            (
                "http_server_config:\n  headers:\n    Server: observer\n".into(),
                "headers.Server",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".into(),
                "headers.X-Frame-Options",
            ),
        ] {
            refused(&text, key);
        }
        // The hash itself never shows in the error.
        let e = refused(
            "basic_auth_users:\n  u: $2y$10$short\n",
            "basic_auth_users.u",
        );
        assert!(!e.contains("short"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named_by_load() {
        let e = load(Path::new("/nonexistent/web.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("No such file"), "{e}");
    }
}
