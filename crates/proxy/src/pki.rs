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
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

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
    pub fn server(&self) -> Result<ServerTlsConfig> {
        let (id, ca) = self.identity()?;
        Ok(ServerTlsConfig::new().identity(id).client_ca_root(ca))
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

/// `culvert proxy certs`: a CA, and a certificate and key for the server, a client, and
/// each connector id, in `out`.
pub fn generate(
    out: &Path,
    server_names: &[String],
    connectors: &[String],
) -> Result<Vec<PathBuf>> {
    for id in connectors {
        check_connector_id(id)?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "culvert proxy CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: &str, secret: bool| -> Result<()> {
        let path = out.join(name);
        write_file(&path, text, secret)?;
        written.push(path);
        Ok(())
    };
    write("ca.pem", &ca.pem(), false)?;
    let mut leaf =
        |file: &str, names: Vec<String>, purpose: ExtendedKeyUsagePurpose| -> Result<()> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(names.clone())
                .with_context(|| format!("certificate names {names:?}"))?;
            p.distinguished_name
                .push(DnType::CommonName, names[0].clone());
            p.extended_key_usages = vec![purpose];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = p.signed_by(&key, &ca, &ca_key)?;
            write(&format!("{file}.pem"), &cert.pem(), false)?;
            write(&format!("{file}-key.pem"), &key.serialize_pem(), true)
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
