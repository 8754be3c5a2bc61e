//! Certificates and mutual TLS. A certificate's role is a DNS name in its subject
//! alternative names, set by `culvert proxy certs` and checked by the server after the CA
//! chain is verified:
//!
//! * the server: `server.culvert` (clients and connectors verify this name, whatever
//!   address they dial), plus any `--server-name`;
//! * a client: `client.culvert`;
//! * a connector: `<id>.connector.culvert` — so a client certificate cannot register as
//!   a connector, and one connector cannot register as, or answer dials meant for, another.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The name every server certificate holds and every peer verifies.
pub const SERVER_NAME: &str = "server.culvert";
/// The name a client certificate holds.
pub const CLIENT_NAME: &str = "client.culvert";

/// The name a connector's certificate holds.
pub fn connector_name(id: &str) -> String {
    format!("{id}.connector.culvert")
}

/// A connector id: 1–63 of `[a-z0-9-]`, not starting or ending with `-` (it is a DNS label).
pub fn check_connector_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if !ok {
        bail!(
            "connector id {id:?}: use 1-63 lowercase letters, digits and inner dashes (it is part of a certificate name)"
        );
    }
    Ok(())
}

/// The certificate, key and CA files of one party.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs every party (PEM).
    pub ca: PathBuf,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

impl TlsFiles {
    fn identity(&self) -> Result<(Identity, Certificate)> {
        if self.cert.as_os_str().is_empty()
            || self.key.as_os_str().is_empty()
            || self.ca.as_os_str().is_empty()
        {
            bail!(
                "TLS needs --tls-cert, --tls-key and --tls-ca (make them with `culvert proxy certs --out DIR`)"
            );
        }
        let cert = read(&self.cert, "certificate")?;
        let key = read(&self.key, "private key")?;
        let ca = read(&self.ca, "CA certificate")?;
        Ok((Identity::from_pem(cert, key), Certificate::from_pem(ca)))
    }

    /// The server's side: its identity, and client certificates required from the CA.
    /// A rustls configuration rather than tonic's: the server runs its own TLS accept
    /// loop ([`crate::server`]), so that one bad connection cannot end it.
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let certs = CertificateDer::pem_slice_iter(&read(&self.cert, "certificate")?)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("certificate {}: not PEM", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key, "private key")?)
            .with_context(|| format!("private key {}: not PEM", self.key.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read(&self.ca, "CA certificate")?) {
            let ca =
                ca.with_context(|| format!("CA certificate {}: not PEM", self.ca.display()))?;
            roots
                .add(ca)
                .with_context(|| format!("CA certificate {}", self.ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .context("client certificate verifier")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .with_context(|| format!("certificate {} with its key", self.cert.display()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client's or connector's side: its identity, the server verified as
    /// [`SERVER_NAME`] under the CA.
    pub fn client(&self) -> Result<ClientTlsConfig> {
        let (id, ca) = self.identity()?;
        Ok(ClientTlsConfig::new()
            .identity(id)
            .ca_certificate(ca)
            .domain_name(SERVER_NAME))
    }
}

/// Whether the peer's (already chain-verified) leaf certificate holds `name`.
pub fn peer_holds(certs: Option<&Arc<Vec<CertificateDer<'static>>>>, name: &str) -> bool {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// How long the CA made by `culvert proxy certs` is valid.
const CA_DAYS: i64 = 3650;

/// What `culvert proxy certs` did with one file.
#[derive(Debug)]
pub enum Written {
    /// Made now.
    New(PathBuf),
    /// There already, signed by the CA in the same directory: kept as it was.
    Kept(PathBuf),
}

/// `culvert proxy certs`: a CA, and a certificate and key for the server, a client, and
/// each connector id, in `out`, valid for `days`. A directory that already holds a CA and
/// its key (`ca.pem`, `ca-key.pem`) keeps them and the certificates made before, and gains
/// only what is missing: a connector added later chains to the CA everyone already trusts.
pub fn generate(
    out: &Path,
    server_names: &[String],
    connectors: &[String],
    days: u32,
) -> Result<Vec<Written>> {
    for id in connectors {
        check_connector_id(id)?;
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out)
            .with_context(|| format!("creating {}", out.display()))?;
    }
    check_private_dir(out)?;
    let (ca_file, ca_key_file) = (out.join("ca.pem"), out.join("ca-key.pem"));
    let reuse = pair_exists(&ca_file, &ca_key_file)?;
    let ca_key = if reuse {
        let pem = read_own_secret(&ca_key_file)?;
        KeyPair::from_pem(&pem).with_context(|| format!("{}", ca_key_file.display()))?
    } else {
        KeyPair::generate()?
    };
    // The issuer of every leaf: the CA's name and key. With the key kept, signing with a
    // certificate rebuilt from both is signing as the CA in ca.pem.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "culvert proxy CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    ca_params.not_before = now - time::Duration::days(1);
    ca_params.not_after = now + time::Duration::days(CA_DAYS);
    let ca = ca_params.self_signed(&ca_key)?;
    let mut written = Vec::new();
    if !reuse {
        write_file(&ca_file, &ca.pem(), false)?;
        write_file(&ca_key_file, &ca_key.serialize_pem(), true)?;
        written.extend([Written::New(ca_file), Written::New(ca_key_file)]);
    }
    let mut leaf =
        |file: &str, names: Vec<String>, purpose: ExtendedKeyUsagePurpose| -> Result<()> {
            let (cert_file, key_file) = (
                out.join(format!("{file}.pem")),
                out.join(format!("{file}-key.pem")),
            );
            if pair_exists(&cert_file, &key_file)? {
                if !reuse {
                    bail!(
                        "{} and its key are there but the CA that signed them is not: move \
                         them away, or put back ca.pem and ca-key.pem",
                        cert_file.display()
                    );
                }
                written.push(Written::Kept(cert_file));
                return Ok(());
            }
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(names.clone())
                .with_context(|| format!("certificate names {names:?}"))?;
            p.distinguished_name
                .push(DnType::CommonName, names[0].clone());
            p.extended_key_usages = vec![purpose];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(i64::from(days));
            let cert = p.signed_by(&key, &ca, &ca_key)?;
            write_file(&cert_file, &cert.pem(), false)?;
            write_file(&key_file, &key.serialize_pem(), true)?;
            written.extend([Written::New(cert_file), Written::New(key_file)]);
            Ok(())
        };
    let mut names = vec![SERVER_NAME.to_string()];
    names.extend(server_names.iter().cloned());
    leaf("server", names, ExtendedKeyUsagePurpose::ServerAuth)?;
    leaf(
        "client",
        vec![CLIENT_NAME.into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    for id in connectors {
        leaf(
            &format!("connector-{id}"),
            vec![connector_name(id)],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
    }
    Ok(written)
}

/// Creates `path` (never through a link, never over a file already there: a key file
/// someone else made keeps its owner and mode) and writes `text`.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Whether both files of a certificate and its key are there; one without the other is
/// an error (a half-planted pair is never completed).
fn pair_exists(cert: &Path, key: &Path) -> Result<bool> {
    match (
        std::fs::symlink_metadata(cert).is_ok(),
        std::fs::symlink_metadata(key).is_ok(),
    ) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) | (false, true) => bail!(
            "only one of {} and {} is there: remove it, or bring back the other",
            cert.display(),
            key.display()
        ),
    }
}

/// Refuses an output directory another local user can write: whoever can put files
/// there can plant a CA of their own, which every certificate made later would chain to.
fn check_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    let me = culvert_sys::privilege::euid();
    if meta.mode() & 0o022 != 0 || (meta.uid() != me && meta.uid() != 0) {
        bail!(
            "{} can be written by another user (owner uid {}, mode {:o}): keys and the CA \
             made or reused there could be theirs; use a directory of your own (chmod 700)",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Reads a private key that must be ours alone: a regular file (not a link) of this user
/// with no permissions for group or others.
fn read_own_secret(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {} (not through a link)", path.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.uid() != culvert_sys::privilege::euid() || meta.mode() & 0o077 != 0 {
        bail!(
            "{} is not a private key file of this user (owner uid {}, mode {:o}): refusing \
             to sign with a key someone else may have planted or read",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("culvert-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        p
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Hardening finding 11: a local user who can write the output directory plants a
    /// link where a key will be written, a key file of their own, or a CA pair whose key
    /// they know. `certs` writes through no link, over no file, and signs with no key
    /// that is not the caller's alone.
    #[test]
    fn certs_never_write_through_links_nor_sign_with_a_planted_ca() {
        let dir = scratch("plant");
        let out = dir.join("out");
        // A directory others may write: refused outright.
        std::fs::create_dir(&out).unwrap();
        chmod(&out, 0o777);
        assert!(
            generate(&out, &[], &[], 30).is_err(),
            "a world-writable directory"
        );
        chmod(&out, 0o700);
        // A link where the server's key goes (to a file the attacker wants to read).
        let stolen = dir.join("stolen");
        std::fs::write(&stolen, "").unwrap();
        chmod(&stolen, 0o644);
        std::os::unix::fs::symlink(&stolen, out.join("server-key.pem")).unwrap();
        assert!(
            generate(&out, &[], &[], 30).is_err(),
            "wrote through a link"
        );
        assert_eq!(
            std::fs::read_to_string(&stolen).unwrap(),
            "",
            "a key went into the link"
        );
        std::fs::remove_dir_all(&out).unwrap();
        // A real run, then the CA key made readable (or another's): never reused.
        let out = dir.join("out2");
        generate(&out, &[], &[], 30).unwrap();
        let key = out.join("ca-key.pem");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        chmod(&key, 0o644);
        let e = generate(&out, &[], &["x".into()], 30).unwrap_err();
        assert!(format!("{e:#}").contains("not a private key file"), "{e:#}");
        chmod(&key, 0o600);
        if culvert_sys::privilege::euid() == 0 {
            std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
            assert!(
                generate(&out, &[], &["x".into()], 30).is_err(),
                "a key of nobody's"
            );
            std::os::unix::fs::chown(&key, Some(0), None).unwrap();
        }
        // A CA key replaced by a link to one the attacker made: refused.
        let planted = dir.join("planted-key.pem");
        std::fs::copy(&key, &planted).unwrap();
        std::fs::remove_file(&key).unwrap();
        std::os::unix::fs::symlink(&planted, &key).unwrap();
        assert!(
            generate(&out, &[], &["y".into()], 30).is_err(),
            "read a CA key through a link"
        );
        std::fs::remove_file(&key).unwrap();
        std::fs::rename(&planted, &key).unwrap();
        // Half a pair is never completed.
        std::fs::remove_file(out.join("client-key.pem")).unwrap();
        assert!(
            generate(&out, &[], &[], 30).is_err(),
            "completed half a pair"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
