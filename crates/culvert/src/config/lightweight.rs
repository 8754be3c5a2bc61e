//! lightweight-tunnel's command line and JSON file, read as culvert settings.
//!
//! Its users arrive with `lightweight-tunnel -m server -l 0.0.0.0:9000 -t 10.0.0.1/24 -k KEY`
//! and `-c config.json`. Both work as they are: Go-style flags (`-flag value`,
//! `-flag=value`, one dash or two) become entries under the JSON file's names, and one
//! translation turns entries from either place into culvert's keys. Every entry is mapped,
//! or accepted with a note of what culvert does instead (logged when the daemon starts), or
//! refused with the reason (`-tls`): none is silently ignored. culvert's own flags may
//! follow, Go-style too (`-allow-weak-key`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{ConfigError, RawConfig, err};

/// How a value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Switch,
    /// Comma-separated on the command line, an array of strings in the file.
    List,
}

/// lightweight-tunnel's flags (its current release and the one its README describes) and
/// the JSON key each sets.
const FLAGS: &[(&str, &str, Kind)] = &[
    ("m", "mode", Kind::Text),
    ("l", "local_addr", Kind::Text),
    ("r", "remote_addr", Kind::Text),
    ("t", "tunnel_addr", Kind::Text),
    ("k", "key", Kind::Text),
    ("mtu", "mtu", Kind::Number),
    ("fec-data", "fec_data", Kind::Number),
    ("fec-parity", "fec_parity", Kind::Number),
    ("send-queue", "send_queue_size", Kind::Number),
    ("recv-queue", "recv_queue_size", Kind::Number),
    ("multi-client", "multi_client", Kind::Switch),
    ("max-clients", "max_clients", Kind::Number),
    ("client-isolation", "client_isolation", Kind::Switch),
    ("tun-name", "tun_name", Kind::Text),
    ("routes", "routes", Kind::List),
    ("config-push-interval", "config_push_interval", Kind::Number),
    ("p2p", "p2p_enabled", Kind::Switch),
    ("p2p-port", "p2p_port", Kind::Number),
    ("mesh-routing", "enable_mesh_routing", Kind::Switch),
    ("max-hops", "max_hops", Kind::Number),
    ("route-update", "route_update_interval", Kind::Number),
    ("nat-detection", "enable_nat_detection", Kind::Switch),
    ("xdp", "enable_xdp", Kind::Switch),
    ("kernel-tune", "enable_kernel_tune", Kind::Switch),
    ("tls", "tls_enabled", Kind::Switch),
    ("tls-cert", "tls_cert_file", Kind::Text),
    ("tls-key", "tls_key_file", Kind::Text),
    ("tls-skip-verify", "tls_skip_verify", Kind::Switch),
];

/// Keys of lightweight-tunnel's file that no flag sets.
const FILE_ONLY: &[(&str, Kind)] = &[
    ("timeout", Kind::Number),
    ("keepalive", Kind::Number),
    ("p2p_timeout", Kind::Number),
    ("p2p_keepalive_interval", Kind::Number),
    ("route_advert_interval", Kind::Number),
    ("transport", Kind::Text),
];

/// Stand-ins for the server's address that lightweight-tunnel's examples and `-g` write.
const ADDRESS_PLACEHOLDERS: &[&str] = &["SERVER_IP", "服务器IP", "<服务器IP>", "<server-ip>"];

/// The largest overlay MTU whose packets fit a 1500-byte path under every header culvert
/// may add (FakeTCP, FEC parity, a relay hop); see `daemon::default_mtu`.
const MTU_THAT_FITS: u64 = 1354;

/// One setting as the operator wrote it.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: Value,
    from: Origin,
}

/// Where a setting was written.
#[derive(Debug, Clone)]
enum Origin {
    /// This flag (`-mtu`).
    Flag(String),
    /// The JSON file at this path.
    File(String),
}

impl Entry {
    /// Where it came from, for errors: `-mtu`, `mtu in config.json`.
    fn source(&self) -> String {
        match &self.from {
            Origin::Flag(f) => f.clone(),
            Origin::File(path) => format!("{} in {path}", self.key),
        }
    }

    /// The setting as written, for notes: `-send-queue 5000`, `"send_queue_size": 5000 in f`.
    fn shown(&self) -> String {
        match (&self.from, &self.value) {
            (Origin::Flag(f), Value::Bool(true)) => f.clone(),
            (Origin::Flag(f), Value::Bool(false)) => format!("{f}=false"),
            (Origin::Flag(f), Value::String(s)) => format!("{f} {s}"),
            (Origin::Flag(f), v) => format!("{f} {v}"),
            (Origin::File(path), v) => format!("\"{}\": {v} in {path}", self.key),
        }
    }
}

/// What a command line in lightweight-tunnel's form asks for.
#[derive(Debug)]
pub(crate) enum Invocation {
    /// Run a daemon with these settings; `native` holds culvert's own flags given beside
    /// them, for the ordinary parser.
    Run {
        server: bool,
        raw: Box<RawConfig>,
        native: Vec<OsString>,
    },
    Version,
    Usage,
    /// `-g FILE`: write a server and a client example.
    Generate(PathBuf),
}

/// Whether a command line whose first argument is `first` is lightweight-tunnel's: it
/// starts with a flag where culvert's starts with a subcommand (culvert's own `-h`,
/// `--help`, `-V` and `--version` excepted).
pub(crate) fn is_its_command_line(first: &OsStr) -> bool {
    let Some(a) = first.to_str() else {
        return false;
    };
    a.starts_with('-') && a.len() > 1 && !matches!(a, "-h" | "--help" | "-V" | "--version")
}

/// Parses the arguments after the program name.
pub(crate) fn parse(args: &[OsString]) -> Result<Invocation, ConfigError> {
    let mut flags = Vec::new();
    let mut native = Vec::new();
    let mut config = None;
    let mut after_switch: Option<String> = None;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(text) = arg.to_str() else {
            native.push(arg.clone());
            continue;
        };
        let body = text.strip_prefix("--").or_else(|| text.strip_prefix('-'));
        let Some(body) = body.filter(|b| !b.is_empty() && !b.starts_with('-')) else {
            if let (Some(switch), "true" | "false") = (&after_switch, text) {
                return Err(err(
                    "",
                    format!("{switch} is a switch: write {switch}={text}, not {switch} {text}"),
                ));
            }
            native.push(arg.clone());
            after_switch = None;
            continue;
        };
        after_switch = None;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let mut value = |kind: Kind| -> Result<String, ConfigError> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            if kind == Kind::Switch {
                return Ok("true".to_owned());
            }
            let v = args
                .get(i)
                .and_then(|v| v.to_str())
                .ok_or_else(|| err("", format!("-{name} needs a value")))?;
            i += 1;
            Ok(v.to_owned())
        };
        match name {
            "h" | "help" => return Ok(Invocation::Usage),
            "v" | "version" => return Ok(Invocation::Version),
            "g" => return Ok(Invocation::Generate(value(Kind::Text)?.into())),
            "c" | "config" => config = Some(PathBuf::from(value(Kind::Text)?)),
            _ => match FLAGS.iter().find(|(n, ..)| *n == name) {
                Some(&(_, key, kind)) => {
                    let flag = format!("-{name}");
                    if kind == Kind::Switch && inline.is_none() {
                        after_switch = Some(flag.clone());
                    }
                    let value = flag_value(&flag, kind, &value(kind)?)?;
                    flags.push(Entry {
                        key: key.to_owned(),
                        value,
                        from: Origin::Flag(flag),
                    });
                }
                // culvert's own flag: the ordinary parser reads it (and its value).
                None if text.starts_with("--") || name.chars().count() == 1 => {
                    native.push(arg.clone());
                }
                None => native.push(format!("-{text}").into()),
            },
        }
    }
    let mut entries = Vec::new();
    let mut overridden = None;
    if let Some(path) = &config {
        let text = read(path)?;
        if !is_json(&text) {
            return Err(err(
                "",
                format!(
                    "{}: with lightweight-tunnel's flags, -c takes its JSON file; for culvert's \
                     TOML run `culvert server -c FILE` or `culvert client -c FILE`",
                    path.display()
                ),
            ));
        }
        entries = file_entries(&text, path)?;
        overridden = flags.first().map(Entry::source);
    }
    entries.extend(flags);
    let server = role(&entries)?.unwrap_or(true);
    let mut raw = translate(entries, server)?;
    if let Some(flag) = overridden {
        raw.notes.insert(
            0,
            format!(
                "{flag} and the other flags beside -c override the file's keys \
                 (lightweight-tunnel ignored them)"
            ),
        );
    }
    Ok(Invocation::Run {
        server,
        raw: Box::new(raw),
        native,
    })
}

/// A flag's text as the JSON value the file would hold.
fn flag_value(flag: &str, kind: Kind, text: &str) -> Result<Value, ConfigError> {
    match kind {
        Kind::Text => Ok(Value::String(text.to_owned())),
        Kind::List => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )),
        Kind::Number => text
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| err("", format!("{flag} {text:?}: expected a whole number"))),
        // Go's strconv.ParseBool.
        Kind::Switch => match text {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Value::Bool(true)),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Value::Bool(false)),
            _ => Err(err("", format!("{flag}={text}: expected true or false"))),
        },
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        err(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })
}

/// Whether `text` is a JSON file (TOML cannot start with `{`).
pub(super) fn is_json(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with('{')
}

/// The settings of a JSON file (lightweight-tunnel's keys or culvert's) for a daemon of
/// the role given on the command line.
pub(super) fn from_file(text: &str, path: &Path, server: bool) -> Result<RawConfig, ConfigError> {
    let entries = file_entries(text, path)?;
    if let Some(mode) = role(&entries)?
        && mode != server
    {
        let is = if mode { "server" } else { "client" };
        return Err(err(
            "mode",
            format!(
                "{0} is a {is}'s file (\"mode\": \"{is}\"): run `culvert {is} -c {0}` or \
                 `culvert -c {0}`",
                path.display()
            ),
        ));
    }
    translate(entries, server)
}

fn file_entries(text: &str, path: &Path) -> Result<Vec<Entry>, ConfigError> {
    let origin = path.display();
    let text = text.trim_start_matches('\u{feff}');
    let value: Value = serde_json::from_str(text).map_err(|e| err("", format!("{origin}: {e}")))?;
    let Value::Object(map) = value else {
        return Err(err(
            "",
            format!("{origin}: expected a JSON object {{ ... }}"),
        ));
    };
    Ok(map
        .into_iter()
        .map(|(key, value)| Entry {
            key,
            value,
            from: Origin::File(origin.to_string()),
        })
        .collect())
}

/// The role the entries name (`"mode"`, `-m`): `Some(true)` for a server.
fn role(entries: &[Entry]) -> Result<Option<bool>, ConfigError> {
    let Some(e) = entries.iter().rev().find(|e| e.key == "mode") else {
        return Ok(None);
    };
    match e.value.as_str() {
        Some("server") => Ok(Some(true)),
        Some("client") => Ok(Some(false)),
        _ => Err(err("mode", format!("{}: use server or client", e.shown()))),
    }
}

/// The kind of value a lightweight-tunnel key holds; `None` for culvert's own keys.
fn kind_of(key: &str) -> Option<Kind> {
    FLAGS
        .iter()
        .find(|(_, k, _)| *k == key)
        .map(|&(_, _, kind)| kind)
        .or_else(|| FILE_ONLY.iter().find(|(k, _)| *k == key).map(|&(_, k)| k))
}

/// Turns entries (later ones override earlier ones) into culvert's settings.
fn translate(entries: Vec<Entry>, server: bool) -> Result<RawConfig, ConfigError> {
    let mut out = Map::new();
    let mut notes = Vec::new();
    let mut aliases = Vec::new();
    let mut fec = (None, None);
    let mut single_client = false;
    let mut last: Vec<Entry> = Vec::new();
    for e in entries {
        last.retain(|l| l.key != e.key);
        last.push(e);
    }
    for e in last {
        if let Some(kind) = kind_of(&e.key) {
            check_kind(&e, kind)?;
        }
        let mut note = |text: &str| notes.push(format!("{}: {text}", e.shown()));
        let source = e.source();
        let mut map = |to: &str, value: Value| {
            out.insert(to.to_owned(), value);
            aliases.push((to.to_owned(), source.clone()));
        };
        let on = e.value.as_bool() == Some(true);
        let n = e.value.as_u64().unwrap_or(0);
        match e.key.as_str() {
            "mode" => {}
            "local_addr" if server => map("listen", e.value),
            "remote_addr" if !server => {
                let addr = e.value.as_str().unwrap_or_default();
                if addr.is_empty() || ADDRESS_PLACEHOLDERS.iter().any(|p| addr.starts_with(p)) {
                    return Err(err(
                        "server",
                        format!(
                            "{}: still the example's placeholder; put the server's address \
                             (HOST:PORT)",
                            e.shown()
                        ),
                    ));
                }
                map("server", e.value);
            }
            "tunnel_addr" => map("address", e.value),
            "key" => {
                // lightweight-tunnel ran unencrypted without a key; culvert never does.
                if e.value.as_str().is_some_and(|k| !k.is_empty()) {
                    map("passphrase", e.value);
                }
            }
            "mtu" if n == 0 => {}
            "mtu" => {
                if n > MTU_THAT_FITS {
                    note(&format!(
                        "above the {MTU_THAT_FITS} bytes that fit a 1500-byte path under culvert's \
                         headers; larger packets rely on fragmentation and culvert's path MTU \
                         discovery (leave it out for the size that fits)"
                    ));
                }
                map("mtu", e.value);
            }
            "fec_data" => fec.0 = Some((n, e.source())),
            "fec_parity" => fec.1 = Some((n, e.source())),
            "keepalive" => map("keepalive", e.value),
            "tun_name" => map("tun_name", e.value),
            "routes" => map("advertise_routes", e.value),
            "multi_client" if server => single_client = !on,
            "max_clients" if server => map("max_clients", e.value),
            "client_isolation" if server => map("client_isolation", e.value),
            "p2p_enabled" if !server => map("p2p", e.value),
            "enable_mesh_routing" if !server => map("mesh_relay", e.value),
            "max_hops" if !server => map("max_hops", e.value),
            "p2p_port" if !server && n == 0 => {}
            "p2p_port" if !server => note(
                "culvert's direct paths share its main UDP socket and are opened with the \
                 server's help: there is no separate port to open; ignored",
            ),
            "local_addr" | "multi_client" | "max_clients" | "client_isolation" => note(
                "a server's setting; a client sends from a port of its own and reaches any \
                 server that admits it: ignored",
            ),
            "remote_addr" | "p2p_enabled" | "enable_mesh_routing" | "max_hops" | "p2p_port" => {
                note(
                    "a client's setting: the server coordinates direct paths for the clients \
                     that try them and relays for the rest (unless client_isolation): ignored",
                )
            }
            "timeout" => note(
                "culvert has no connection timeout to set: a handshake is retried after 1 s, \
                 then at doubling intervals up to 30 s, for ever; a client that hears nothing \
                 from the server for 25 s reconnects from a new port",
            ),
            "send_queue_size" | "recv_queue_size" => note(
                "culvert keeps no packet queue of its own to size: packets pass between the TUN \
                 and the socket directly, and the socket's kernel buffers are set to 8 MiB; \
                 ignored",
            ),
            "route_update_interval" | "route_advert_interval" => note(
                "culvert sends route and address changes when they happen (within about 1 s), \
                 not on a timer; ignored",
            ),
            "p2p_keepalive_interval" => {
                note("culvert keeps its direct paths' NAT mappings open by itself; ignored")
            }
            "p2p_timeout" => note("lightweight-tunnel never used it; ignored"),
            "config_push_interval" if n == 0 => {}
            "config_push_interval" => note(
                "culvert's sessions take fresh keys every 2 minutes; the passphrase itself is \
                 not rotated by the server: change it on every node (ignored)",
            ),
            "enable_nat_detection" if on => {}
            "enable_nat_detection" => note(
                "culvert always learns each client's NAT from what the server sees (no STUN \
                 servers are asked); ignored",
            ),
            "enable_xdp" if !on => {}
            "enable_xdp" => note(
                "culvert encrypts every packet: it never skips encryption for traffic that \
                 looks encrypted already; ignored",
            ),
            "enable_kernel_tune" if !on => {}
            "enable_kernel_tune" => note(
                "culvert changes no host-wide settings (TCP congestion control, qdisc, fast \
                 open); ignored",
            ),
            "transport" if e.value.as_str() == Some("rawtcp") => note(
                "culvert's transport is auto: UDP, and FakeTCP (TCP segments to the same port, \
                 so open TCP and UDP 9000) where UDP is blocked",
            ),
            "tls_enabled" | "tls_skip_verify" if !on => {}
            "tls_cert_file" | "tls_key_file" if e.value.as_str() == Some("") => {}
            "tls_enabled" | "tls_skip_verify" | "tls_cert_file" | "tls_key_file" => {
                return Err(err(
                    "",
                    format!(
                        "{}: culvert has no TLS mode: every packet is already encrypted and \
                         authenticated by the handshake keyed with -k (lightweight-tunnel \
                         removed -tls too); drop the tls settings",
                        e.shown()
                    ),
                ));
            }
            // culvert's own keys, in a JSON file.
            _ => {
                out.insert(e.key, e.value);
            }
        }
    }
    if let Some(from) = fec_setting(fec, &mut notes) {
        out.insert("fec".to_owned(), Value::String(from.0));
        aliases.push(("fec".to_owned(), from.1));
    }
    if single_client {
        out.insert("max_clients".to_owned(), Value::from(1));
    }
    let mut raw: RawConfig =
        serde_json::from_value(Value::Object(out)).map_err(|e| err("", format!("{e}")))?;
    raw.notes = notes;
    raw.aliases = aliases;
    Ok(raw)
}

/// A count of FEC shards and where it was set.
type Shards = (u64, String);

/// `fec_data` and `fec_parity` (either may be missing: lightweight-tunnel's defaults are
/// 10 and 3) as culvert's fixed `fec = "D:P"`, and where they were set.
fn fec_setting(
    (data, parity): (Option<Shards>, Option<Shards>),
    notes: &mut Vec<String>,
) -> Option<(String, String)> {
    if data.is_none() && parity.is_none() {
        return None;
    }
    let d = data.as_ref().map_or(10, |d| d.0);
    let p = parity.as_ref().map_or(3, |p| p.0);
    let from = [data, parity]
        .into_iter()
        .flatten()
        .map(|(_, from)| from)
        .collect::<Vec<_>>()
        .join(", ");
    if p > 0 {
        notes.push(format!(
            "{from}: fixed FEC, {p} parity packets for every {d} data packets whatever the \
             loss; culvert's default (fec = auto) sends parity only while loss is measured: \
             leave both out to use it"
        ));
    }
    Some((format!("{d}:{p}"), from))
}

fn check_kind(e: &Entry, kind: Kind) -> Result<(), ConfigError> {
    let ok = match kind {
        Kind::Text => e.value.is_string(),
        Kind::Number => e.value.is_u64(),
        Kind::Switch => e.value.is_boolean(),
        Kind::List => e
            .value
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)),
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        Kind::Text => "a string",
        Kind::Number => "a whole number",
        Kind::Switch => "true or false",
        Kind::List => "a list of strings",
    };
    Err(err("", format!("{}: expected {expected}", e.shown())))
}

/// `-g FILE`: a server example in FILE and a client example in FILE.client, sharing a new
/// random key, each readable by its owner only; neither file may exist yet.
pub(crate) fn generate(path: &Path) -> anyhow::Result<String> {
    let client = PathBuf::from(format!("{}.client", path.display()));
    for p in [path, &client] {
        if p.symlink_metadata().is_ok() {
            anyhow::bail!(
                "{} exists: -g never overwrites a file; remove it or name another",
                p.display()
            );
        }
    }
    let key = crate::identity::new_passphrase();
    let server_json = serde_json::json!({
        "mode": "server",
        "local_addr": "0.0.0.0:9000",
        "tunnel_addr": "10.0.0.1/24",
        "key": key,
    });
    let client_json = serde_json::json!({
        "mode": "client",
        "remote_addr": "SERVER_IP:9000",
        "tunnel_addr": "10.0.0.2/24",
        "key": key,
        "p2p_enabled": true,
    });
    for (p, v) in [(path, server_json), (client.as_path(), client_json)] {
        use std::io::Write;
        let mut f = crate::identity::create_private(p)?;
        writeln!(f, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    Ok(format!(
        "wrote {s} (server) and {c} (client), mode 0600, with a new random key, the same in \
         both. Put the server's address in {c}'s remote_addr and give each client its own \
         tunnel_addr; then run `culvert -c {s}` on the server (open UDP and TCP 9000) and \
         `culvert -c {c}` on a client",
        s = path.display(),
        c = client.display()
    ))
}

/// `-h` after lightweight-tunnel's flags: what each of them does here.
pub(crate) const USAGE: &str = "\
culvert reads lightweight-tunnel's command line and JSON file:

  culvert -m server -l 0.0.0.0:9000 -t 10.0.0.1/24 -k KEY
  culvert -m client -r SERVER:9000 -t 10.0.0.2/24 -k KEY
  culvert -c config.json          (flags beside -c override the file's keys)
  culvert -g config.json          (writes config.json and config.json.client)

  -m server|client   culvert server / culvert client (default server)
  -l ADDR:PORT       listen (UDP, and TCP for FakeTCP)
  -r HOST:PORT       server
  -t ADDR/PREFIX     address
  -k KEY             passphrase (required: culvert never runs unencrypted; at least 12
                     characters and 50 bits, or add --allow-weak-key)
  -mtu N             mtu (0: computed)
  -fec-data N -fec-parity N
                     fixed FEC N:N (culvert's default adapts parity to measured loss)
  -multi-client=false  max_clients = 1
  -max-clients N     max_clients
  -client-isolation  client_isolation
  -p2p[=false]       p2p (client)
  -mesh-routing[=false]  mesh_relay (client)
  -max-hops N        max_hops (client)
  -routes CIDR,...   advertise_routes
  -tun-name NAME     tun_name
  -v                 the version

Accepted with a note of what culvert does instead: -send-queue, -recv-queue, -p2p-port,
-route-update, -config-push-interval, -nat-detection, -xdp, -kernel-tune.
Refused: -tls, -tls-cert, -tls-key, -tls-skip-verify (every packet is encrypted already).
culvert's own flags may follow (culvert server --help, culvert client --help).
";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn run(line: &str) -> Result<(bool, RawConfig, Vec<OsString>), ConfigError> {
        match parse(&args(line))? {
            Invocation::Run {
                server,
                raw,
                native,
            } => Ok((server, *raw, native)),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn its_flags_are_read_the_way_go_reads_them() {
        let (server, raw, native) = run(
            "-m server -l 0.0.0.0:9000 -t 10.0.0.1/24 -k correct-horse-battery-9 \
             --mtu=1300 -client-isolation -multi-client=false -max-clients 5 \
             -allow-weak-key --state-dir /tmp/x",
        )
        .unwrap();
        assert!(server);
        assert_eq!(raw.listen.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(raw.mtu, Some(1300));
        assert_eq!(raw.client_isolation, Some(true));
        assert_eq!(raw.max_clients, Some(1), "multi-client=false wins");
        assert_eq!(
            native,
            args("--allow-weak-key --state-dir /tmp/x"),
            "culvert's own flags, Go-style or not, go to the ordinary parser"
        );
        let (server, raw, _) =
            run("-m client -r 192.0.2.1:9000 -t 10.0.0.2/24 -p2p=false -mesh-routing=0").unwrap();
        assert!(!server);
        assert_eq!(raw.server.as_deref(), Some("192.0.2.1:9000"));
        assert_eq!(raw.p2p, Some(false));
        assert_eq!(raw.mesh_relay, Some(false));
        assert!(
            run("-m client -p2p false")
                .unwrap_err()
                .message
                .contains("-p2p=false")
        );
        assert!(run("-mtu big").unwrap_err().message.contains("-mtu"));
        assert!(
            run("-m router")
                .unwrap_err()
                .message
                .contains("server or client")
        );
        assert!(run("-t").unwrap_err().message.contains("-t needs a value"));
        assert!(matches!(parse(&args("-v")), Ok(Invocation::Version)));
        assert!(matches!(
            parse(&args("-m client -h")),
            Ok(Invocation::Usage)
        ));
        assert!(
            matches!(parse(&args("-g f.json")), Ok(Invocation::Generate(p)) if p == Path::new("f.json"))
        );
        assert!(is_its_command_line(OsStr::new("-m")));
        assert!(is_its_command_line(OsStr::new("-c")));
        assert!(!is_its_command_line(OsStr::new("--help")));
        assert!(!is_its_command_line(OsStr::new("server")));
    }

    #[test]
    fn every_key_is_mapped_noted_or_refused() {
        let (_, raw, _) = run(
            "-m server -t 10.0.0.1/24 -send-queue 5000 -recv-queue 5000 -route-update 10 \
             -fec-parity 5 -config-push-interval 60 -kernel-tune -xdp -nat-detection=false \
             -p2p=false -mtu 1400",
        )
        .unwrap();
        assert_eq!(
            raw.fec.as_deref(),
            Some("10:5"),
            "the missing one takes its default"
        );
        let notes = raw.notes.join("\n");
        for flag in [
            "-send-queue 5000:",
            "-recv-queue 5000:",
            "-route-update 10:",
            "-fec-parity:",
            "-config-push-interval 60:",
            "-kernel-tune:",
            "-xdp:",
            "-nat-detection=false:",
            "-p2p=false: a client's setting",
            "-mtu 1400: above the 1354",
        ] {
            assert!(notes.contains(flag), "no note for {flag} in:\n{notes}");
        }
        assert_eq!(raw.notes.len(), 10, "{notes}");
        for tls in [
            "-tls",
            "-tls-cert c.pem",
            "-tls-key k.pem",
            "-tls-skip-verify",
        ] {
            let e = run(&format!("-m server {tls}")).unwrap_err();
            assert!(e.message.contains("no TLS mode"), "{tls}: {e}");
        }
        // Defaults written out change nothing and need no note.
        let (_, raw, _) = run("-m client -p2p-port 0 -xdp=false -tls=false").unwrap();
        assert!(raw.notes.is_empty(), "{:?}", raw.notes);
    }

    #[test]
    fn its_readme_files_read_as_culvert_settings() {
        let dir = tempdir();
        let server = dir.join("config.json");
        std::fs::write(
            &server,
            r#"{
  "mode": "server",
  "local_addr": "0.0.0.0:9000",
  "tunnel_addr": "10.0.0.1/24",
  "key": "your-secret-key",
  "mtu": 1400,
  "fec_data": 10,
  "fec_parity": 3,
  "timeout": 30,
  "keepalive": 10,
  "send_queue_size": 1000,
  "recv_queue_size": 1000,
  "multi_client": true,
  "max_clients": 100,
  "client_isolation": false
}"#,
        )
        .unwrap();
        let (is_server, raw, _) = run(&format!("-c {}", server.display())).unwrap();
        assert!(is_server);
        assert_eq!(
            raw.address.clone().map(super::super::OneOrMany::into_vec),
            Some(vec!["10.0.0.1/24".to_owned()])
        );
        assert_eq!((raw.keepalive, raw.max_clients), (Some(10), Some(100)));
        assert_eq!(raw.fec.as_deref(), Some("10:3"));
        assert_eq!(
            raw.notes.len(),
            5,
            "mtu, fec, timeout, the queues: {:?}",
            raw.notes
        );
        // The weak key of the example is the daemon's to refuse (naming --allow-weak-key).
        let e = super::super::Settings::build(raw, true).unwrap_err();
        assert!(e.message.contains("--allow-weak-key"), "{e}");
        // A client's file under `culvert server -c` is refused; culvert's keys may mix in.
        let client = dir.join("client.json");
        std::fs::write(
            &client,
            "\u{feff}{\"mode\": \"client\", \"remote_addr\": \"SERVER_IP:9000\", \
             \"tunnel_addr\": \"10.0.0.2/24\", \"transport\": \"faketcp\"}",
        )
        .unwrap();
        let e = from_file(&read(&client).unwrap(), &client, true).unwrap_err();
        assert_eq!(e.key, "mode");
        let e = from_file(&read(&client).unwrap(), &client, false).unwrap_err();
        assert!(e.message.contains("placeholder"), "{e}");
        let e = run(&format!("-c {}", client.display())).unwrap_err();
        assert!(e.message.contains("placeholder"), "{e}");
        let (_, raw, _) = run(&format!("-c {} -r 192.0.2.1:9000", client.display())).unwrap();
        assert_eq!(raw.transport, Some(crate::cli::TransportArg::Faketcp));
        assert!(
            raw.notes[0].contains("override the file"),
            "{:?}",
            raw.notes
        );
        std::fs::write(&client, "{\"mode\": \"client\", \"mtu\": \"1400\"}").unwrap();
        let e = run(&format!("-c {}", client.display())).unwrap_err();
        assert!(e.message.contains("expected a whole number"), "{e}");
        std::fs::write(&client, "listen = \"0.0.0.0:9000\"\n").unwrap();
        let e = run(&format!("-c {}", client.display())).unwrap_err();
        assert!(e.message.contains("culvert server -c FILE"), "{e}");
        std::fs::write(&client, "{\"mode\": \"client\", \"bogus\": 1}").unwrap();
        let e = run(&format!("-c {}", client.display())).unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn generated_examples_share_a_new_key_and_never_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let path = dir.join("config.json");
        let said = generate(&path).unwrap();
        assert!(said.contains("config.json.client"), "{said}");
        let client = dir.join("config.json.client");
        let s: Value = serde_json::from_str(&read(&path).unwrap()).unwrap();
        let c: Value = serde_json::from_str(&read(&client).unwrap()).unwrap();
        assert_eq!(s["key"], c["key"]);
        assert!(s["key"].as_str().unwrap().len() >= 32);
        for p in [&path, &client] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (server, raw, _) = run(&format!("-c {}", path.display())).unwrap();
        assert!(server && raw.notes.is_empty(), "{:?}", raw.notes);
        assert!(
            generate(&path)
                .unwrap_err()
                .to_string()
                .contains("never overwrites")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "culvert-lt-{}-{}",
            std::process::id(),
            crate::identity::new_passphrase().replace(['/', '+', '='], "")
        ));
        std::fs::create_dir(&d).unwrap();
        d
    }
}
