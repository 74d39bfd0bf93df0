//! Certificates for the endpoint's TLS, made with Debian's `openssl` command in a directory of
//! their own (removed on drop): a CA, a server certificate it signed for 127.0.0.1 and
//! localhost, a client certificate it signed, and a client certificate of another CA.
use std::path::PathBuf;

use crate::{output_of, sandbox::TempDir};

pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: TempDir::new("pki"),
        };
        pki.ca("ca");
        pki.signed(
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.signed("client", "ca", "extendedKeyUsage=clientAuth\n");
        pki.ca("other-ca");
        pki.signed("stranger", "other-ca", "extendedKeyUsage=clientAuth\n");
        pki
    }

    /// A file in the directory: `NAME.crt` or `NAME.key` for `ca`, `server`, `client`, and
    /// `stranger` (a client of `other-ca`).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn file(&self, file: String) -> String {
        self.path(&file).display().to_string()
    }

    /// A self-signed CA, `NAME.crt` and `NAME.key` (P-256).
    fn ca(&self, name: &str) {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-noenc",
            "-days",
            "2",
            "-subj",
            &format!("/CN=observer test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &self.file(format!("{name}.key")),
            "-out",
            &self.file(format!("{name}.crt")),
        ]);
    }

    /// A certificate and key, `NAME.crt` and `NAME.key`, signed by CA `ca`, with the
    /// extensions `ext` (openssl's extension file syntax).
    fn signed(&self, name: &str, ca: &str, ext: &str) {
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-noenc",
            "-subj",
            &format!("/CN=observer test {name}"),
            "-keyout",
            &self.file(format!("{name}.key")),
            "-out",
            &self.file(format!("{name}.csr")),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &self.file(format!("{name}.csr")),
            "-CA",
            &self.file(format!("{ca}.crt")),
            "-CAkey",
            &self.file(format!("{ca}.key")),
            "-CAcreateserial",
            "-extfile",
            &self.file(format!("{name}.ext")),
            "-out",
            &self.file(format!("{name}.crt")),
        ]);
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn openssl(args: &[&str]) {
    output_of("openssl", args);
}

/// A bcrypt hash of `password` at cost 10, as `htpasswd -nbBC 10` (apache2-utils) makes it.
pub fn bcrypt_hash(password: &str) -> String {
    let out = output_of("htpasswd", &["-nbBC", "10", "user", password]);
    String::from_utf8(out)
        .expect("htpasswd output")
        .trim()
        .strip_prefix("user:")
        .expect("htpasswd -n prints user:HASH")
        .to_string()
}
