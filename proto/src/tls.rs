//! The wire's security: mutual TLS between coordinator and agents (and agent to agent, which
//! carries snapshots), or plain TCP only when asked for explicitly.
//!
//! One cluster CA signs a certificate per part. Every certificate names its part (`CN`, and a
//! DNS SAN) and carries the cluster name [`CLUSTER_NAME`] as a DNS SAN too, which is the name
//! clients verify: any certificate from the cluster's CA is a cluster member, whatever address
//! it is reached at (addresses change; the CA is the trust boundary). Servers require a client
//! certificate from the same CA.
//!
//! A TLS directory holds `ca.pem`, `<name>.pem` and `<name>-key.pem` (see [`issue_into`], which
//! `ferry certs` and `ferry up` use).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The name every certificate carries and every client verifies.
pub const CLUSTER_NAME: &str = "ferry";

/// A part's TLS material.
pub struct Tls {
    pub name: String,
    /// Where it was loaded from (CRIU's page server reads the files itself).
    pub dir: PathBuf,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({})", self.name)
    }
}

/// How gRPC connections are secured.
#[derive(Clone, Debug)]
pub enum Wire {
    Tls(Arc<Tls>),
    /// Plain TCP: only with an explicit `--insecure`.
    Insecure,
}

/// Sets a key file to mode 0600 when group or others have any access to it.
fn private_key(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return Ok(()) }; // read() says why
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            format!(
                "{} has mode {mode:o} (others may read it) and cannot be set to 0600: {e}",
                path.display()
            )
        })?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {}: {e} (create the cluster's certificates with `ferry certs --dir {} --name NAME`)",
            path.display(),
            path.parent().map(|p| p.display().to_string()).unwrap_or_default()
        )
    })
}

impl Tls {
    /// Loads `ca.pem`, `NAME.pem` and `NAME-key.pem` from `dir`. A key others may read (an
    /// older `ferry certs`, a careless copy) is set to mode 0600 first, or refused when that
    /// fails; the directory is set to 0700 when it can be.
    pub fn load(dir: &Path, name: &str) -> Result<Tls, String> {
        let key = dir.join(format!("{name}-key.pem"));
        private_key(&key)?;
        let _ = private_dir(dir);
        let tls = Tls {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            ca: read(&dir.join("ca.pem"))?,
            cert: read(&dir.join(format!("{name}.pem")))?,
            key: read(&dir.join(format!("{name}-key.pem")))?,
        };
        for (what, pem) in [("ca.pem", &tls.ca), ("certificate", &tls.cert), ("key", &tls.key)] {
            if !pem.starts_with(b"-----BEGIN") {
                return Err(format!("{what} in {} is not PEM", dir.display()));
            }
        }
        Ok(tls)
    }

    /// The files: (CA certificate, this part's certificate, its key).
    pub fn files(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.dir.join("ca.pem"),
            self.dir.join(format!("{}.pem", self.name)),
            self.dir.join(format!("{}-key.pem", self.name)),
        )
    }

    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(CLUSTER_NAME)
    }
}

impl Wire {
    /// `--tls-dir DIR` with certificate `name`, or plain TCP with `insecure`; neither is an error
    /// that says how to get certificates.
    pub fn from_flags(dir: Option<&Path>, name: &str, insecure: bool) -> Result<Wire, String> {
        match (dir, insecure) {
            (Some(_), true) => Err("--tls-dir and --insecure exclude each other".into()),
            (Some(d), false) => {
                let wire = Wire::Tls(Arc::new(Tls::load(d, name)?));
                // Parse the certificates now, so bad ones stop the part at start-up.
                wire.server().map_err(|e| format!("{e} (from {})", d.display()))?;
                Ok(wire)
            }
            (None, true) => Ok(Wire::Insecure),
            (None, false) => Err(
                "gRPC needs mutual TLS: give --tls-dir DIR (ca.pem, NAME.pem, NAME-key.pem, made by `ferry certs`), or --insecure for plain TCP".into(),
            ),
        }
    }

    pub fn tls(&self) -> Option<&Tls> {
        match self {
            Wire::Tls(t) => Some(t),
            Wire::Insecure => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Wire::Tls(_))
    }

    /// The URL scheme peers use to reach a server with this wire.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// `addr` (`http://` or `https://HOST:PORT`) with the scheme this wire uses: tonic only does
    /// TLS for `https://`, so a TLS wire must never dial `http://` (that would be plain TCP).
    pub fn url(&self, addr: &str) -> String {
        let rest =
            addr.strip_prefix("https://").or_else(|| addr.strip_prefix("http://")).unwrap_or(addr);
        format!("{}://{rest}", self.scheme())
    }

    /// An endpoint to `addr`, secured as this wire says.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let url = self.url(addr);
        let e =
            Endpoint::from_shared(url.clone()).map_err(|e| format!("bad address {url:?}: {e}"))?;
        match self {
            Wire::Tls(t) => {
                e.tls_config(t.client_config()).map_err(|e| format!("TLS for {url}: {e}"))
            }
            Wire::Insecure => Ok(e),
        }
    }

    /// A server builder secured as this wire says.
    pub fn server(&self) -> Result<tonic::transport::Server, String> {
        let b = tonic::transport::Server::builder();
        match self {
            Wire::Tls(t) => b.tls_config(t.server_config()).map_err(|e| format!("TLS server: {e}")),
            Wire::Insecure => Ok(b),
        }
    }
}

/// Replaces `path` with a new file of `text` created with `mode` (never widening an existing
/// file's mode: the old one is removed first). For keys and tokens, mode 0600.
pub fn write_fresh(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
}

/// Makes `dir` (and missing parents) a directory of mode 0700 — created so, or an existing one
/// set to it. For what holds keys, tokens and databases.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    if std::fs::metadata(dir)?.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn rcgen_err(e: rcgen::Error) -> String {
    format!("certificate generation failed: {e}")
}

/// Creates `ca.pem`/`ca-key.pem` in `dir` if they are not there, then issues `NAME.pem` and
/// `NAME-key.pem` signed by that CA, valid for `days`, naming `name`, [`CLUSTER_NAME`] and the
/// given addresses. Keys are written mode 0600, in a directory made (or set to) mode 0700.
/// Returns the files written.
pub fn issue_into(
    dir: &Path,
    name: &str,
    ips: &[IpAddr],
    days: i64,
) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
        || name == "ca"
    {
        return Err(format!(
            "certificate name {name:?} must be 1-64 letters, digits, '-', '_' or '.', and not \"ca\""
        ));
    }
    private_dir(dir).map_err(|e| format!("cannot create {} (mode 0700): {e}", dir.display()))?;
    let write = |file: &str, text: &str, private: bool| -> Result<PathBuf, String> {
        let path = dir.join(file);
        write_fresh(&path, text, if private { 0o600 } else { 0o644 })
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    };
    let now = time::OffsetDateTime::now_utc();
    let mut written = Vec::new();
    let (ca_pem, ca_key_pem) = match (
        std::fs::read_to_string(dir.join("ca.pem")),
        std::fs::read_to_string(dir.join("ca-key.pem")),
    ) {
        (Ok(c), Ok(k)) => (c, k),
        _ => {
            let key = KeyPair::generate().map_err(rcgen_err)?;
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "ferry cluster CA");
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(3650);
            let cert = p.self_signed(&key).map_err(rcgen_err)?;
            written.push(write("ca.pem", &cert.pem(), false)?);
            written.push(write("ca-key.pem", &key.serialize_pem(), true)?);
            (cert.pem(), key.serialize_pem())
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(rcgen_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(rcgen_err)?;
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let mut p = CertificateParams::new(vec![name.to_string(), CLUSTER_NAME.to_string()])
        .map_err(rcgen_err)?;
    p.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(days);
    let cert = p.signed_by(&key, &issuer).map_err(rcgen_err)?;
    written.push(write(&format!("{name}.pem"), &cert.pem(), false)?);
    written.push(write(&format!("{name}-key.pem"), &key.serialize_pem(), true)?);
    Ok(written)
}

/// The names a peer's certificate (DER) carries: its common name and DNS names, without the
/// cluster name every certificate has.
pub fn peer_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names.retain(|n| n != CLUSTER_NAME);
    names.sort();
    names.dedup();
    names
}

/// Whether a request may speak for node `node`: without TLS anyone may (the wire is explicitly
/// insecure); with TLS only a peer whose certificate names that node.
pub fn may_act_as<T>(
    wire: &Wire,
    req: &tonic::Request<T>,
    node: &str,
) -> Result<(), tonic::Status> {
    if !wire.is_tls() {
        return Ok(());
    }
    let certs = req.peer_certs();
    let names: Vec<String> =
        certs.iter().flat_map(|c| c.first()).flat_map(|c| peer_names(c.as_ref())).collect();
    if names.iter().any(|n| n == node) {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "this peer's certificate is for {} and cannot act as node {node:?}; issue one with `ferry certs --name {node}`",
            if names.is_empty() { "no node".to_string() } else { names.join(", ") }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_part_and_not_the_cluster() {
        let dir = std::env::temp_dir().join(format!("ferry-tls-unit-{}", std::process::id()));
        issue_into(&dir, "node7", &["10.0.0.7".parse().unwrap()], 1).unwrap();
        let pem = std::fs::read_to_string(dir.join("node7.pem")).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        assert_eq!(peer_names(&der), vec!["node7".to_string()]);
        assert!(issue_into(&dir, "../x", &[], 1).is_err());
        assert!(issue_into(&dir, "ca", &[], 1).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_and_their_directory_are_private_and_older_ones_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ferry-tls-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        issue_into(&dir, "node1", &[], 1).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        for key in ["ca-key.pem", "node1-key.pem"] {
            assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
        }
        // As an older version left them: a 0755 directory, a key others may read.
        let set = |p: &Path, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m));
        set(&dir, 0o755).unwrap();
        set(&dir.join("node1-key.pem"), 0o644).unwrap();
        Tls::load(&dir, "node1").unwrap();
        assert_eq!((mode(&dir), mode(&dir.join("node1-key.pem"))), (0o700, 0o600));
        set(&dir, 0o755).unwrap();
        issue_into(&dir, "node2", &[], 1).unwrap();
        assert_eq!(mode(&dir), 0o700, "issuing tightens the directory");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
