//! Keys on disk, OS randomness, and stretching the passphrase.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use culvert_core::keys::decode_key;
use culvert_core::{Psk, PublicKey, StaticSecret};

/// How a passphrase becomes the handshake PSK (Argon2id, one lane, a salt per version:
/// every node must derive the same key from the same passphrase). The parameters are part
/// of the protocol: both ends use the same version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kdf {
    /// 19 MiB, 2 passes (OWASP's recommendation): a daemon starts in under 32 MB, on a
    /// 64 MB router too.
    #[default]
    V2,
    /// 64 MiB, 3 passes (RFC 9106's second choice): what culvert used until v2, for
    /// networks whose nodes are not all updated yet.
    V1,
}

impl Kdf {
    /// Memory (KiB), passes, salt.
    fn params(self) -> (u32, u32, &'static [u8]) {
        match self {
            Self::V2 => (19 * 1024, 2, b"culvert passphrase v2"),
            Self::V1 => (64 * 1024, 3, b"culvert passphrase v1"),
        }
    }
}

/// Bytes from the OS random source.
pub(crate) fn os_random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut f = fs::File::open("/dev/urandom").expect("/dev/urandom exists on Linux");
    std::io::Read::read_exact(&mut f, &mut out).expect("/dev/urandom never runs dry");
    out
}

/// A new random private key.
pub(crate) fn generate() -> StaticSecret {
    StaticSecret::from_bytes(os_random())
}

/// Reads a base64 private key file; refuses one that others may read, as ssh does.
pub(crate) fn load(path: &Path) -> Result<StaticSecret> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path)
        .with_context(|| format!("reading private key file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "private key file {p} can be read by others (mode {mode:o}): `chmod 600 {p}` (and \
             make a new key if others may have read it; `culvert genkey --out FILE` writes one \
             with mode 0600)",
            p = path.display()
        );
    }
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading private key file {}", path.display()))?;
    let bytes =
        decode_key(&text).with_context(|| format!("private key file {}", path.display()))?;
    Ok(StaticSecret::from_bytes(bytes))
}

/// Creates `path` readable by its owner only (0600), in a directory only its owner can
/// enter (0700, made if missing); refuses to overwrite.
pub(crate) fn create_private(path: &Path) -> Result<fs::File> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Where `culvert init --passphrase-file` got its passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassphraseSource {
    /// The file held one (another node's).
    Read,
    /// It did not exist: a new one was made and written there.
    Made,
}

/// A new random passphrase (24 random bytes, base64: 192 bits).
pub(crate) fn new_passphrase() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(os_random::<24>())
}

/// The network's passphrase in `file`, or a new one written there (0600) when it does not
/// exist.
pub(crate) fn shared_passphrase(file: &Path) -> Result<(String, Option<PassphraseSource>)> {
    match fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => {
            Ok((text.trim().to_owned(), Some(PassphraseSource::Read)))
        }
        Ok(_) => bail!("{} is empty: it should hold the passphrase", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let passphrase = new_passphrase();
            let mut f = create_private(file)?;
            writeln!(f, "{passphrase}").with_context(|| format!("writing {}", file.display()))?;
            Ok((passphrase, Some(PassphraseSource::Made)))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Writes a private key readable by its owner only (0600), refusing to overwrite.
pub(crate) fn store(path: &Path, secret: &StaticSecret) -> Result<()> {
    let mut f = create_private(path)?;
    writeln!(f, "{}", secret.to_base64().as_str())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The key of this instance: the configured file, or one generated once and kept in the
/// state directory, so restarts keep the identity and no two instances share one.
pub(crate) fn resolve(
    configured: Option<&Path>,
    state_dir: &Path,
) -> Result<(StaticSecret, Option<PathBuf>)> {
    if let Some(p) = configured {
        return Ok((load(p)?, None));
    }
    let path = state_dir.join("identity.key");
    match read_state_file(&path) {
        Ok(text) => {
            let bytes = decode_key(&text)
                .with_context(|| format!("private key file {}", path.display()))?;
            return Ok((StaticSecret::from_bytes(bytes), None));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret = generate();
    store(&path, &secret)?;
    Ok((secret, Some(path)))
}

/// The file in a client's state directory that pins the servers it met (passphrase
/// mode): one `SERVER KEY` line per configured server name.
pub(crate) const KNOWN_SERVERS: &str = "known_servers";

/// The key pinned for `server` (as configured) in `state_dir`, if any.
pub(crate) fn known_server(state_dir: &Path, server: &str) -> Result<Option<PublicKey>> {
    let path = state_dir.join(KNOWN_SERVERS);
    let text = match read_state_file(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for line in text.lines() {
        if let Some((name, key)) = line.trim().split_once(' ')
            && name == server
        {
            return key
                .trim()
                .parse()
                .map(Some)
                .with_context(|| format!("{}: bad key for {server}", path.display()));
        }
    }
    Ok(None)
}

/// Pins `key` for `server` in `state_dir` (replacing an older line for it).
pub(crate) fn remember_server(state_dir: &Path, server: &str, key: &PublicKey) -> Result<()> {
    let path = state_dir.join(KNOWN_SERVERS);
    let mut lines = read_lines_except(&path, Some(server))?;
    lines.push(format!("{server} {key}"));
    write_private(&path, &lines)
}

/// Forgets the key pinned for `server`, or every pinned key; returns how many lines went.
pub(crate) fn forget_server(state_dir: &Path, server: Option<&str>) -> Result<usize> {
    let path = state_dir.join(KNOWN_SERVERS);
    let all = read_lines_except(&path, None)?;
    let kept = match server {
        Some(s) => read_lines_except(&path, Some(s))?,
        None => Vec::new(),
    };
    if kept.len() != all.len() {
        write_private(&path, &kept)?;
    }
    Ok(all.len() - kept.len())
}

fn read_lines_except(path: &Path, server: Option<&str>) -> Result<Vec<String>> {
    match read_state_file(path) {
        Ok(t) => Ok(t
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| server.is_none_or(|s| l.split_once(' ').is_none_or(|(n, _)| n != s)))
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Reads a file of the state directory: never through a link, only a regular file with
/// one name and of a sane size. A root start reads what the unprivileged daemon's user
/// could have put there (the directory is that user's after the first start).
fn read_state_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::MetadataExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 || meta.len() > 64 * 1024 {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "not a regular file with one name and at most 64 KiB: not trusted",
        ));
    }
    let mut text = String::new();
    (&f).read_to_string(&mut text)?;
    Ok(text)
}

/// Replaces `path` with `lines` (mode 0600), through a temporary file and a rename.
fn write_private(path: &Path, lines: &[String]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = create_private(&tmp)?;
    for l in lines {
        writeln!(f, "{l}").with_context(|| format!("writing {}", tmp.display()))?;
    }
    f.sync_all().ok();
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// The default state directory of an instance: per network namespace and TUN name.
pub(crate) fn default_state_dir(netns: &str, tun: &str) -> PathBuf {
    PathBuf::from("/var/lib/culvert").join(netns).join(tun)
}

/// Stretches a passphrase into the handshake PSK with Argon2id, as `kdf` says.
pub(crate) fn stretch(passphrase: &str, kdf: Kdf) -> Result<Psk> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let (memory_kib, passes, salt) = kdf.params();
    let params = Params::new(memory_kib, passes, 1, Some(32))
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| anyhow::anyhow!("stretching the passphrase: {e}"))?;
    Ok(Psk::from_bytes(out))
}

/// `culvert pubkey`: the public key of the private key in `text`.
pub(crate) fn public_of(text: &str) -> Result<String> {
    let Ok(bytes) = decode_key(text) else {
        bail!(
            "stdin is not a private key: expected base64 of 32 bytes, as `culvert genkey` prints"
        );
    };
    Ok(StaticSecret::from_bytes(bytes).public_key().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretch_is_deterministic_and_keyed() {
        let a = stretch("correct horse", Kdf::V2).unwrap();
        assert_eq!(a, stretch("correct horse", Kdf::V2).unwrap());
        assert_ne!(a, stretch("correct horsf", Kdf::V2).unwrap());
        assert_ne!(
            a,
            stretch("correct horse", Kdf::V1).unwrap(),
            "versions differ"
        );
    }

    #[test]
    fn key_files_are_private_and_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("culvert-key-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (s, created) = resolve(None, &dir).unwrap();
        let path = created.unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, created) = resolve(None, &dir).unwrap();
        assert!(created.is_none());
        assert_eq!(s.public_key(), again.public_key());
        assert!(store(&path, &s).is_err(), "must not overwrite a key");
        assert_eq!(
            public_of(&s.to_base64()).unwrap(),
            s.public_key().to_string()
        );
        assert!(public_of("garbage").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn known_servers_pin_forget_and_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("culvert-known-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (a, b) = (generate().public_key(), generate().public_key());
        assert_eq!(known_server(&dir, "vpn:9000").unwrap(), None);
        remember_server(&dir, "vpn:9000", &a).unwrap();
        remember_server(&dir, "other:9000", &b).unwrap();
        remember_server(&dir, "vpn:9000", &b).unwrap();
        assert_eq!(known_server(&dir, "vpn:9000").unwrap(), Some(b));
        assert_eq!(known_server(&dir, "other:9000").unwrap(), Some(b));
        let mode = fs::metadata(dir.join(KNOWN_SERVERS))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(forget_server(&dir, Some("vpn:9000")).unwrap(), 1);
        assert_eq!(known_server(&dir, "vpn:9000").unwrap(), None);
        assert_eq!(forget_server(&dir, None).unwrap(), 1);
        assert_eq!(known_server(&dir, "other:9000").unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// First contact, item 11: a key written by `genkey --out` is 0600, and a key file
    /// others can read is refused, as ssh refuses one.
    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("culvert-keymode-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("server.key");
        store(&path, &generate()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(load(&path).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// First contact, item 9: `init server --passphrase-file F` makes the passphrase and
    /// writes it (0600); `init client --passphrase-file F` takes the same.
    #[test]
    fn init_shares_one_passphrase_through_a_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("culvert-shared-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let file = dir.join("key");
        let (made, how) = shared_passphrase(&file).unwrap();
        assert_eq!(how, Some(PassphraseSource::Made));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (read, how) = shared_passphrase(&file).unwrap();
        assert_eq!((read, how), (made.clone(), Some(PassphraseSource::Read)));
        assert!(made.len() >= 32);
        fs::remove_dir_all(&dir).unwrap();
    }
}
