//! `--web.config.file`: TLS and basic auth on the metrics endpoint, from a file in the Prometheus
//! exporter-toolkit's format, with certificates made by openssl and hashes by htpasswd, as
//! curl and a real Prometheus see it; and the files observer refuses, refused before anything
//! is loaded.
use observer_tests::{
    curl::{Got, curl},
    net::{Mode, Server, hold},
    observer::{Observer, loaded_program_ids, run_to_exit},
    pki::{Pki, bcrypt_hash},
    prometheus::Prometheus,
    require_root,
};

const PASSWORD: &str = "correct horse";

/// Writes a web configuration file into the PKI's directory (so that it names the certificates
/// by relative paths, which are relative to the file); returns its path.
fn web_config(pki: &Pki, name: &str, text: &str) -> String {
    let path = pki.path(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `cert_file` and `key_file` of the server's certificate, relative to the file.
const SERVER_TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

fn assert_unauthorized(got: &Got, what: &str) {
    assert_eq!(got.status, 401, "{what}: {got:?}");
    assert_eq!(
        got.header("WWW-Authenticate"),
        Some("Basic"),
        "{what}: {got:?}"
    );
    assert!(!got.body.contains("observer_"), "{what}: {got:?}");
}

#[test]
fn tls_and_basic_auth_from_a_web_config_file() {
    require_root();
    let pki = Pki::new();
    let config = web_config(
        &pki,
        "web.yml",
        &format!(
            "{SERVER_TLS}http_server_config:\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  prometheus: {}\n",
            bcrypt_hash(PASSWORD)
        ),
    );
    let o = Observer::start(&["--port", "9", "--web.config.file", &config]);
    let addr = o.metrics.unwrap();
    assert!(
        o.stderr()
            .contains(&format!("metrics at https://{addr}/metrics")),
        "{}",
        o.stderr()
    );
    let ca = pki.path("ca.crt").display().to_string();
    let url = format!("https://{addr}/metrics");
    let right = format!("prometheus:{PASSWORD}");

    // The right password: 200 and the metrics, with the file's header.
    let ok = curl(&["--cacert", &ca, "-u", &right, &url]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(
        ok.body.contains("# TYPE observer_build_info gauge"),
        "{ok:?}"
    );
    assert_eq!(ok.header("X-Frame-Options"), Some("deny"), "{ok:?}");
    // By name as by address: the certificate names both.
    let port = addr.port();
    let by_name = curl(&[
        "--cacert",
        &ca,
        "-u",
        &right,
        &format!("https://localhost:{port}/metrics"),
    ]);
    assert_eq!(by_name.status, 200, "{by_name:?}");

    // A wrong password, an unknown user, none at all: 401 asking for basic auth, on every path.
    let wrong = curl(&["--cacert", &ca, "-u", "prometheus:wrong", &url]);
    assert_unauthorized(&wrong, "a wrong password");
    assert_eq!(wrong.header("X-Frame-Options"), Some("deny"), "{wrong:?}");
    let unknown = curl(&["--cacert", &ca, "-u", &format!("nobody:{PASSWORD}"), &url]);
    assert_unauthorized(&unknown, "an unknown user");
    assert_unauthorized(&curl(&["--cacert", &ca, &url]), "no password");
    for path in ["/", "/nothing-here"] {
        let got = curl(&["--cacert", &ca, &format!("https://{addr}{path}")]);
        assert_unauthorized(&got, path);
    }
    let head = curl(&["--cacert", &ca, "-u", &right, "-I", &url]);
    assert_eq!(head.status, 200, "HEAD: {head:?}");

    // Plain HTTP to the TLS port gets no HTTP answer at all.
    let plain = curl(&["-u", &right, &format!("http://{addr}/metrics")]);
    assert_eq!(plain.status, 0, "plain HTTP: {plain:?}");
    assert_ne!(plain.exit, 0, "plain HTTP: {plain:?}");
    // Nor does a client that does not trust the test's CA: the certificate is the file's.
    let untrusted = curl(&["-u", &right, &url]);
    assert_eq!(untrusted.status, 0, "{untrusted:?}");
    assert_eq!(
        untrusted.exit, 60,
        "curl: peer certificate not verified: {untrusted:?}"
    );
    // No warning: the passwords go over TLS.
    assert!(
        observer_tests::observer::warnings(&o.stderr()).is_empty(),
        "{}",
        o.stderr()
    );
}

#[test]
fn tls_alone_serves_every_client_that_trusts_it_and_keeps_to_its_versions() {
    require_root();
    let pki = Pki::new();
    let ca = pki.path("ca.crt").display().to_string();
    let config = web_config(&pki, "tls.yml", SERVER_TLS);
    let o = Observer::start(&["--port", "9", "--web.config.file", &config]);
    let url = format!("https://{}/metrics", o.metrics.unwrap());
    let got = curl(&["--cacert", &ca, &url]);
    assert_eq!(
        got.status, 200,
        "no basic_auth_users: no password asked; {got:?}"
    );
    assert!(got.body.contains("observer_build_info"), "{got:?}");
    // TLS 1.2 and 1.3 by default, as the toolkit has them.
    for version in ["1.2", "1.3"] {
        let got = curl(&["--cacert", &ca, "--tls-max", version, &url]);
        assert_eq!(got.status, 200, "TLS {version}: {got:?}");
    }
    drop(o);

    let config = web_config(
        &pki,
        "tls13.yml",
        &format!("{SERVER_TLS}  min_version: TLS13\n"),
    );
    let o = Observer::start(&["--port", "9", "--web.config.file", &config]);
    let url = format!("https://{}/metrics", o.metrics.unwrap());
    let old = curl(&["--cacert", &ca, "--tls-max", "1.2", &url]);
    assert_eq!(old.status, 0, "TLS 1.2 under min_version TLS13: {old:?}");
    assert_eq!(curl(&["--cacert", &ca, &url]).status, 200);
}

#[test]
fn client_certificates_verified_against_the_files_ca() {
    require_root();
    let pki = Pki::new();
    let ca = pki.path("ca.crt").display().to_string();
    let client = [
        "--cert",
        &pki.path("client.crt").display().to_string(),
        "--key",
        &pki.path("client.key").display().to_string(),
    ]
    .map(str::to_string);
    let stranger = [
        "--cert",
        &pki.path("stranger.crt").display().to_string(),
        "--key",
        &pki.path("stranger.key").display().to_string(),
    ]
    .map(str::to_string);
    let get = |url: &str, cert: Option<&[String; 4]>| {
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend(cert.into_iter().flatten().map(String::as_str));
        args.push(url);
        curl(&args)
    };
    for (kind, without) in [
        ("RequireAndVerifyClientCert", 0),
        ("VerifyClientCertIfGiven", 200),
    ] {
        let config = web_config(
            &pki,
            &format!("{kind}.yml"),
            &format!("{SERVER_TLS}  client_auth_type: {kind}\n  client_ca_file: ca.crt\n"),
        );
        let o = Observer::start(&["--port", "9", "--web.config.file", &config]);
        let url = format!("https://{}/metrics", o.metrics.unwrap());
        let signed = get(&url, Some(&client));
        assert_eq!(
            signed.status, 200,
            "{kind}, a client the CA signed: {signed:?}"
        );
        let other = get(&url, Some(&stranger));
        assert_eq!(other.status, 0, "{kind}, another CA's client: {other:?}");
        let none = get(&url, None);
        assert_eq!(none.status, without, "{kind}, no certificate: {none:?}");
    }
}

#[test]
fn a_web_config_observer_cannot_use_is_one_line_before_anything_is_loaded() {
    require_root();
    let pki = Pki::new();
    let hash = bcrypt_hash(PASSWORD);
    let cases = [
        (
            "unknown key",
            format!("{SERVER_TLS}  cert_path: x\n"),
            "`cert_path`",
        ),
        (
            "toolkit key observer does not support",
            format!("{SERVER_TLS}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            "`tls_server_config.cipher_suites` is not supported",
        ),
        (
            "missing certificate file",
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n".into(),
            "`tls_server_config.cert_file`",
        ),
        (
            "a key that is not the certificate's",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n".into(),
            "not the private key of the certificate",
        ),
        (
            "bad hash",
            "basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n".into(),
            "`basic_auth_users.prometheus`",
        ),
        (
            "HTTP/2",
            format!(
                "basic_auth_users:\n  prometheus: {hash}\nhttp_server_config:\n  http2: true\n"
            ),
            "http2",
        ),
    ];
    let before = loaded_program_ids();
    for (what, text, named) in &cases {
        let config = web_config(&pki, "bad.yml", text);
        let (code, err) = run_to_exit(&["--port", "9", "--web.config.file", &config]);
        assert_eq!(code, Some(2), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(
            err.starts_with(&format!("observer: --web.config.file {config}: ")),
            "{what}: {err}"
        );
        assert!(err.contains(named), "{what}: {named} in {err}");
    }
    let missing = pki.path("no-such.yml").display().to_string();
    let (code, err) = run_to_exit(&["--port", "9", "--web.config.file", &missing]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("No such file"), "{err}");
    let after = loaded_program_ids();
    assert!(
        after.is_subset(&before),
        "no program loaded: {:?} new",
        after.difference(&before).collect::<Vec<_>>()
    );
}

#[test]
fn a_real_prometheus_scrapes_through_tls_and_basic_auth() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let pki = Pki::new();
    let config = web_config(
        &pki,
        "web.yml",
        &format!(
            "{SERVER_TLS}basic_auth_users:\n  prometheus: {}\n",
            bcrypt_hash(PASSWORD)
        ),
    );
    let o = Observer::start(&["--port", &port.to_string(), "--web.config.file", &config]);
    let _held = hold(server.addrs[0], 5);
    let ca = pki.path("ca.crt").display().to_string();
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    \
             basic_auth:\n      username: prometheus\n      password: '{password}'\n    \
             static_configs:\n      - targets: ['{}']\n",
            o.metrics.unwrap()
        )
    };
    let prometheus = Prometheus::start(&(job("observer", PASSWORD) + &job("wrong", "hunter2")));
    assert_eq!(prometheus.settle(r#"up{job="observer"}"#, "1"), Ok(()));
    assert_eq!(
        prometheus.settle(
            &format!(
                r#"observer_tcp_connections{{job="observer",port="{port}",state="established"}}"#
            ),
            "5"
        ),
        Ok(())
    );
    // The same target with a wrong password is down, and none of its series got in.
    assert_eq!(prometheus.settle(r#"up{job="wrong"}"#, "0"), Ok(()));
    assert!(
        prometheus
            .query(r#"observer_build_info{job="wrong"}"#)
            .is_empty(),
        "a refused scrape stored nothing"
    );
}
