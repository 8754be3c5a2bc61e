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
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (ca_file, ca_key_file) = (out.join("ca.pem"), out.join("ca-key.pem"));
    let reuse = ca_file.exists() && ca_key_file.exists();
    let ca_key = if reuse {
        let pem = std::fs::read_to_string(&ca_key_file)
            .with_context(|| format!("reading {}", ca_key_file.display()))?;
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
            if reuse && cert_file.exists() && key_file.exists() {
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

fn write_file(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
