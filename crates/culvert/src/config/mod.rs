//! Configuration: one TOML tree, parsed once, merged with flags, validated into types.
//!
//! Every error names the key it is about, whether the value came from the file or a flag:
//! `config key 'listen': invalid address "1.2.3.4:99999"`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use culvert_core::fec::{Config as FecConfig, Mode as FecMode};
use culvert_core::{ClientBinding, MeshRelay, PublicKey};
use culvert_wire::addr::Prefix;
use serde::Deserialize;

pub(crate) mod lightweight;

use crate::cli::{ClientArgs, CommonArgs, LogFormat, ServerArgs, TransportArg};
use crate::identity::Kdf;

/// The commented example `culvert init server` prints.
pub(crate) const EXAMPLE_SERVER: &str = include_str!("example-server.toml");
/// The commented example `culvert init client` prints.
pub(crate) const EXAMPLE_CLIENT: &str = include_str!("example-client.toml");
/// The placeholder the examples carry; refused as a real passphrase.
pub(crate) const PLACEHOLDER: &str = "CHANGE-ME";
/// Default underlay port.
pub(crate) const DEFAULT_PORT: u16 = 9000;

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) key: String,
    pub(crate) message: String,
    /// Where the key was set under another name (lightweight-tunnel's `-t`).
    pub(crate) alias: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.alias {
            _ if self.key.is_empty() => f.write_str(&self.message),
            Some(alias) => write!(
                f,
                "config key '{}' (from {alias}): {}",
                self.key, self.message
            ),
            None => write!(f, "config key '{}': {}", self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// Names where the key was set, when `aliases` (culvert key, source) know it.
    fn naming(mut self, aliases: &[(String, String)]) -> Self {
        self.alias = aliases
            .iter()
            .find(|(key, _)| *key == self.key)
            .map(|(_, source)| source.clone());
        self
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        message: message.into(),
        alias: None,
    }
}

/// The file format. Every key is optional here; [`Settings::build`] decides what is needed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    listen: Option<String>,
    server: Option<String>,
    server_public_key: Option<String>,
    address: Option<OneOrMany>,
    network: Option<OneOrMany>,
    passphrase: Option<String>,
    #[serde(alias = "key_file")]
    passphrase_file: Option<PathBuf>,
    #[serde(alias = "allow_weak_key")]
    allow_weak_passphrase: Option<bool>,
    /// How the passphrase becomes the key: `v2` (default) or `v1` (older nodes).
    passphrase_kdf: Option<Kdf>,
    user: Option<String>,
    // lightweight-tunnel's names are accepted too, with the same meaning.
    #[serde(alias = "p2p_enabled")]
    p2p: Option<bool>,
    p2p_port: Option<u16>,
    #[serde(alias = "enable_mesh_routing")]
    mesh_relay: Option<bool>,
    max_hops: Option<u8>,
    mesh_relay_mbps: Option<u32>,
    /// Subnets behind this node it routes for (lightweight-tunnel's `routes`).
    #[serde(alias = "routes")]
    advertise_routes: Option<Vec<String>>,
    /// Server: routes any client may offer.
    allow_routes: Option<Vec<String>>,
    /// Client: install the routes other nodes offer (`true`: inside the private ranges;
    /// a list: inside these).
    accept_routes: Option<AcceptRoutes>,
    /// Server: accept a route overlapping another node's.
    allow_route_overlap: Option<bool>,
    /// Server: forward clients' traffic to the uplink and masquerade it. Any node: also
    /// masquerade the overlay's traffic into its advertised subnets.
    nat: Option<bool>,
    nat_interface: Option<String>,
    /// Client: send all traffic through the server.
    full_tunnel: Option<bool>,
    allow_lan: Option<bool>,
    dns: Option<Vec<String>>,
    private_key_file: Option<PathBuf>,
    tun_name: Option<String>,
    mtu: Option<u32>,
    max_clients: Option<usize>,
    client_isolation: Option<bool>,
    metrics: Option<String>,
    log_format: Option<LogFormat>,
    state_dir: Option<PathBuf>,
    keepalive: Option<u64>,
    transport: Option<TransportArg>,
    fec: Option<String>,
    fec_timeout_ms: Option<u64>,
    #[serde(skip)]
    faketcp_isn: Option<u32>,
    /// Where the passphrase came from, when a flag gave it (`-k` is visible in `ps`).
    #[serde(skip)]
    passphrase_origin: Option<PassphraseOrigin>,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
    /// What culvert does instead of settings it read under lightweight-tunnel's names and
    /// has no equivalent for, one line each for the log.
    #[serde(skip)]
    notes: Vec<String>,
    /// Keys set under another name: (culvert key, where), for errors.
    #[serde(skip)]
    aliases: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: String,
    address: OneOrMany,
    /// Routes this key may offer.
    routes: Option<Vec<String>>,
    #[allow(dead_code)]
    name: Option<String>,
}

/// `accept_routes = true | false | ["PREFIX", ...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum AcceptRoutes {
    All(bool),
    Inside(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// A passphrase that did not come from the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassphraseOrigin {
    /// `-k` on the command line: visible to every local user in `ps`.
    CommandLine,
    /// The `CULVERT_KEY` environment variable.
    Environment,
}

/// The environment variable that may carry the passphrase.
pub(crate) const KEY_ENV: &str = "CULVERT_KEY";

impl RawConfig {
    /// Parses TOML text; `origin` names the file in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            err("", format!("{origin}{at}: {msg}"))
        })
    }

    /// Reads and parses a file for a daemon of this role: TOML, or JSON (culvert's keys or
    /// lightweight-tunnel's).
    pub(crate) fn load(path: &Path, server: bool) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "",
                format!("cannot read config file {}: {e}", path.display()),
            )
        })?;
        if lightweight::is_json(&text) {
            return lightweight::from_file(&text, path, server);
        }
        Self::parse(&text, &path.display().to_string())
    }

    /// Takes the flags (and the `CULVERT_KEY` environment value, `env_key`) over the
    /// file's keys. Passphrase precedence: `-k`, `--key-file`, `CULVERT_KEY`, the file.
    fn merge_common(&mut self, a: &CommonArgs, env_key: Option<String>) {
        if !a.address.is_empty() {
            self.address = Some(OneOrMany::Many(a.address.clone()));
        }
        if !a.advertise_routes.is_empty() {
            self.advertise_routes = Some(a.advertise_routes.clone());
        }
        if a.nat {
            self.nat = Some(true);
        }
        if let Some(k) = &a.passphrase {
            self.passphrase = Some(k.clone());
            self.passphrase_file = None;
            self.passphrase_origin = Some(PassphraseOrigin::CommandLine);
        } else if a.passphrase_file.is_some() {
            self.passphrase = None;
            self.passphrase_file.clone_from(&a.passphrase_file);
        } else if let Some(k) = env_key.filter(|k| !k.is_empty()) {
            self.passphrase = Some(k);
            self.passphrase_file = None;
            self.passphrase_origin = Some(PassphraseOrigin::Environment);
        }
        if a.allow_weak_key {
            self.allow_weak_passphrase = Some(true);
        }
        merge(&mut self.user, &a.user);
        merge(&mut self.private_key_file, &a.private_key_file);
        merge(&mut self.tun_name, &a.tun_name);
        merge(&mut self.mtu, &a.mtu);
        merge(&mut self.metrics, &a.metrics);
        merge(&mut self.log_format, &a.log_format);
        merge(&mut self.state_dir, &a.state_dir);
        merge(&mut self.passphrase_kdf, &a.passphrase_kdf);
        merge(&mut self.keepalive, &a.keepalive);
        merge(&mut self.transport, &a.transport);
        merge(&mut self.fec, &a.fec);
        if let (Some(d), Some(p)) = (a.fec_data, a.fec_parity) {
            self.fec = Some(format!("{d}:{p}"));
        }
        merge(&mut self.fec_timeout_ms, &a.fec_timeout_ms);
        merge(&mut self.faketcp_isn, &a.faketcp_isn);
    }
}

fn merge<T: Clone>(slot: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        slot.clone_from(flag);
    }
}

/// Validated settings of a daemon.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) role: RoleSettings,
    pub(crate) addresses: Vec<Prefix>,
    /// Subnets behind this node it routes for (network form).
    pub(crate) routes: Vec<Prefix>,
    /// The passphrase (passphrase mode); `None` means key mode. Zeroized when dropped.
    pub(crate) passphrase: Option<zeroize::Zeroizing<String>>,
    /// Set when `-k` gave the passphrase on the command line (the daemon warns).
    pub(crate) passphrase_origin: Option<PassphraseOrigin>,
    /// How the passphrase becomes the handshake key (the same on every node).
    pub(crate) kdf: Kdf,
    /// The user to run as after setup: `None` means `culvert` when that user exists.
    pub(crate) user: Option<String>,
    pub(crate) private_key_file: Option<PathBuf>,
    pub(crate) tun_name: String,
    pub(crate) mtu: Option<u32>,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) log_format: LogFormat,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) keepalive: Duration,
    pub(crate) transport: TransportArg,
    pub(crate) fec: FecConfig,
    pub(crate) faketcp_isn: Option<u32>,
    /// Settings read under lightweight-tunnel's names that culvert does otherwise, one line
    /// each, logged at start.
    pub(crate) notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum RoleSettings {
    Server {
        listen: SocketAddr,
        max_clients: usize,
        isolation: bool,
        peers: Vec<ClientBinding>,
        /// Be the clients' exit: `Some(uplink override)`.
        nat: Option<Option<String>>,
        /// Routes any client may offer.
        allow_routes: Vec<Prefix>,
        /// Accept routes that overlap another node's.
        allow_route_overlap: bool,
    },
    Client {
        server: String,
        server_key: Option<PublicKey>,
        /// The overlay networks addresses and routes may lie in.
        networks: Vec<Prefix>,
        /// Try direct paths to other clients.
        p2p: bool,
        /// Forward for others; the hop limit; the forwarding rate.
        mesh_relay: MeshRelay,
        /// Send all traffic through the server.
        full_tunnel: Option<FullTunnel>,
        /// Install the routes other nodes offer inside these.
        accept_routes: Vec<Prefix>,
        /// Masquerade the overlay's traffic into the advertised subnets.
        nat: bool,
    },
}

/// A full-tunnel client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FullTunnel {
    /// The LAN's own routes stay outside the tunnel.
    pub(crate) allow_lan: bool,
    /// DNS servers to use while the tunnel runs.
    pub(crate) dns: Vec<std::net::IpAddr>,
}

impl Settings {
    /// Server settings from an optional file and the flags.
    pub(crate) fn server(args: &ServerArgs) -> Result<Self, ConfigError> {
        Self::server_over(load_optional(args.common.config.as_deref(), true)?, args)
    }

    /// Server settings: the flags over `raw`.
    pub(crate) fn server_over(mut raw: RawConfig, args: &ServerArgs) -> Result<Self, ConfigError> {
        raw.merge_common(&args.common, std::env::var(KEY_ENV).ok());
        merge(&mut raw.listen, &args.listen);
        merge(&mut raw.max_clients, &args.max_clients);
        if args.client_isolation {
            raw.client_isolation = Some(true);
        }
        merge(&mut raw.nat_interface, &args.nat_interface);
        if !args.allow_routes.is_empty() {
            raw.allow_routes = Some(args.allow_routes.clone());
        }
        if args.allow_route_overlap {
            raw.allow_route_overlap = Some(true);
        }
        Self::build(raw, true)
    }

    /// Client settings from an optional file and the flags.
    pub(crate) fn client(args: &ClientArgs) -> Result<Self, ConfigError> {
        Self::client_over(load_optional(args.common.config.as_deref(), false)?, args)
    }

    /// Client settings: the flags over `raw`.
    pub(crate) fn client_over(mut raw: RawConfig, args: &ClientArgs) -> Result<Self, ConfigError> {
        raw.merge_common(&args.common, std::env::var(KEY_ENV).ok());
        merge(&mut raw.server, &args.server);
        merge(&mut raw.server_public_key, &args.server_key);
        if !args.network.is_empty() {
            raw.network = Some(OneOrMany::Many(args.network.clone()));
        }
        match (args.p2p, args.no_p2p) {
            (true, _) => raw.p2p = Some(true),
            (_, true) => raw.p2p = Some(false),
            _ => {}
        }
        merge(&mut raw.p2p_port, &args.p2p_port);
        if args.no_mesh_relay {
            raw.mesh_relay = Some(false);
        }
        merge(&mut raw.max_hops, &args.max_hops);
        if args.full_tunnel {
            raw.full_tunnel = Some(true);
        }
        merge(&mut raw.allow_lan, &args.allow_lan);
        if !args.dns.is_empty() {
            raw.dns = Some(args.dns.clone());
        }
        if args.no_accept_routes {
            raw.accept_routes = Some(AcceptRoutes::All(false));
        } else if !args.accept_routes.is_empty() {
            raw.accept_routes = Some(AcceptRoutes::Inside(args.accept_routes.clone()));
        }
        Self::build(raw, false)
    }

    /// Validates a merged raw configuration; an error names the key as it was written.
    pub(crate) fn build(mut raw: RawConfig, server: bool) -> Result<Self, ConfigError> {
        let aliases = std::mem::take(&mut raw.aliases);
        Self::validate(raw, server).map_err(|e| e.naming(&aliases))
    }

    fn validate(raw: RawConfig, server: bool) -> Result<Self, ConfigError> {
        let addresses = raw
            .address
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .map(|s| parse_prefix("address", s))
            .collect::<Result<Vec<_>, _>>()?;
        if addresses.len() > culvert_wire::addr::MAX_ADDRESSES {
            return Err(err("address", "at most 16 addresses"));
        }
        let routes = parse_routes("advertise_routes", raw.advertise_routes.as_deref())?;
        if let Some((r, a)) = routes.iter().find_map(|r| {
            addresses
                .iter()
                .find(|a| r.covers(&a.network()) || a.network().covers(r))
                .map(|a| (r, a))
        }) {
            return Err(err(
                "advertise_routes",
                format!("{r} overlaps this node's overlay network {}", a.network()),
            ));
        }
        if raw.nat == Some(true) && !server && routes.is_empty() {
            return Err(err(
                "nat",
                "on a client, nat masquerades the overlay's traffic into the subnets it \
                 advertises: set advertise_routes (the exit to the Internet is the server's nat)",
            ));
        }
        let weak_ok = raw.allow_weak_passphrase.unwrap_or(false);
        let passphrase = match (raw.passphrase, raw.passphrase_file) {
            (Some(p), _) => Some(check_passphrase("passphrase", p, weak_ok)?),
            (None, Some(f)) => {
                let p = zeroize::Zeroizing::new(std::fs::read_to_string(&f).map_err(|e| {
                    err(
                        "passphrase_file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?);
                Some(check_passphrase(
                    "passphrase_file",
                    p.trim().to_owned(),
                    weak_ok,
                )?)
            }
            (None, None) => None,
        };
        let peers = raw
            .peers
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let key = format!("peer[{i}]");
                Ok(ClientBinding {
                    key: p
                        .public_key
                        .parse()
                        .map_err(|e| err(&format!("{key}.public_key"), format!("{e}")))?,
                    addresses: p
                        .address
                        .into_vec()
                        .iter()
                        .map(|a| parse_prefix(&format!("{key}.address"), a))
                        .collect::<Result<_, _>>()?,
                    routes: parse_routes(&format!("{key}.routes"), p.routes.as_deref())?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        for (i, a) in peers.iter().enumerate() {
            if peers[..i].iter().any(|b| b.key == a.key) {
                return Err(err(&format!("peer[{i}].public_key"), "listed twice"));
            }
        }
        let server_key = raw
            .server_public_key
            .as_deref()
            .map(|k| {
                k.parse()
                    .map_err(|e| err("server_public_key", format!("{e}")))
            })
            .transpose()?;
        let role = if server {
            if raw.server.is_some() || server_key.is_some() {
                return Err(err("server", "is a client setting; a server uses 'listen'"));
            }
            if raw.p2p.is_some() || raw.p2p_port.is_some() {
                return Err(err(
                    "p2p",
                    "is a client setting; the server coordinates punching for every client",
                ));
            }
            if raw.mesh_relay.is_some() || raw.max_hops.is_some() || raw.mesh_relay_mbps.is_some() {
                return Err(err(
                    "mesh_relay",
                    "mesh_relay, max_hops and mesh_relay_mbps are client settings; the server \
                     always relays (unless client_isolation)",
                ));
            }
            if raw.network.is_some() {
                return Err(err(
                    "network",
                    "is a client setting; a server's network is the prefix of its addresses",
                ));
            }
            if raw.full_tunnel.is_some() || raw.allow_lan.is_some() || raw.dns.is_some() {
                return Err(err(
                    "full_tunnel",
                    "full_tunnel, allow_lan and dns are client settings; a server is an exit \
                     with nat = true",
                ));
            }
            if raw.accept_routes.is_some() {
                return Err(err(
                    "accept_routes",
                    "is a client setting; a server routes what it accepts (allow_routes)",
                ));
            }
            if raw.nat_interface.is_some() && raw.nat != Some(true) {
                return Err(err("nat_interface", "only means something with nat = true"));
            }
            let nat = raw
                .nat
                .unwrap_or(false)
                .then(|| raw.nat_interface.clone())
                .map(|i| i.map(|n| check_interface("nat_interface", n)).transpose())
                .transpose()?;
            if addresses.is_empty() {
                return Err(err(
                    "address",
                    "the server needs its own overlay address, e.g. -t 10.0.0.1/24",
                ));
            }
            if passphrase.is_none() && peers.is_empty() {
                return Err(err(
                    "passphrase",
                    "no authentication: give -k PASSPHRASE, or list client keys in [[peer]] sections",
                ));
            }
            let listen = raw.listen.as_deref().unwrap_or("0.0.0.0:9000");
            RoleSettings::Server {
                listen: listen.parse().map_err(|_| {
                    err(
                        "listen",
                        format!("invalid address {listen:?}: expected IP:PORT, e.g. 0.0.0.0:9000"),
                    )
                })?,
                max_clients: match raw.max_clients {
                    Some(0) => return Err(err("max_clients", "must be at least 1")),
                    Some(n) => n,
                    None => 1000,
                },
                isolation: raw.client_isolation.unwrap_or(false),
                peers,
                nat,
                allow_routes: parse_routes("allow_routes", raw.allow_routes.as_deref())?,
                allow_route_overlap: raw.allow_route_overlap.unwrap_or(false),
            }
        } else {
            if raw.listen.is_some()
                || raw.max_clients.is_some()
                || raw.client_isolation.is_some()
                || raw.nat_interface.is_some()
                || raw.allow_routes.is_some()
                || raw.allow_route_overlap.is_some()
                || !peers.is_empty()
            {
                return Err(err(
                    "listen",
                    "listen, max_clients, client_isolation, nat_interface, allow_routes, \
                     allow_route_overlap and [[peer]] are server settings",
                ));
            }
            if (raw.allow_lan.is_some() || raw.dns.is_some()) && raw.full_tunnel != Some(true) {
                return Err(err(
                    "allow_lan",
                    "allow_lan and dns only mean something with full_tunnel = true",
                ));
            }
            let dns = raw
                .dns
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    d.parse()
                        .map_err(|_| err("dns", format!("{d:?} is not an IP address")))
                })
                .collect::<Result<Vec<std::net::IpAddr>, _>>()?;
            let full_tunnel = raw.full_tunnel.unwrap_or(false).then(|| FullTunnel {
                allow_lan: raw.allow_lan.unwrap_or(true),
                dns,
            });
            let server = raw
                .server
                .ok_or_else(|| err("server", "no server given: use -r HOST:PORT"))?;
            let server = with_default_port(&server)
                .ok_or_else(|| err("server", format!("invalid {server:?}: expected HOST:PORT")))?;
            if passphrase.is_none() && server_key.is_none() {
                return Err(err(
                    "passphrase",
                    "no authentication: give -k PASSPHRASE, or the server's key with --server-key",
                ));
            }
            if passphrase.is_some() && addresses.is_empty() {
                return Err(err(
                    "address",
                    "no overlay address: give one with -t, e.g. -t 10.0.0.2/24",
                ));
            }
            let networks = client_networks(raw.network, &addresses)?;
            if let Some(port) = raw.p2p_port.filter(|p| *p != 0) {
                return Err(err(
                    "p2p_port",
                    format!(
                        "{port}: only 0 (direct paths share the main UDP socket) is supported in this version"
                    ),
                ));
            }
            let max_hops = match raw.max_hops {
                None => MeshRelay::default().max_hops,
                Some(n @ 1..=8) => n,
                Some(n) => {
                    return Err(err(
                        "max_hops",
                        format!("{n}: use 1 to 8 (relays a message may cross)"),
                    ));
                }
            };
            let rate = match raw.mesh_relay_mbps {
                None => MeshRelay::default().rate,
                Some(0) => {
                    return Err(err(
                        "mesh_relay_mbps",
                        "must be at least 1; to relay nothing set mesh_relay = false",
                    ));
                }
                Some(m) => u64::from(m) * 1_000_000 / 8,
            };
            RoleSettings::Client {
                server,
                server_key,
                networks,
                p2p: raw.p2p.unwrap_or(true),
                mesh_relay: MeshRelay {
                    enabled: raw.mesh_relay.unwrap_or(true),
                    max_hops,
                    rate,
                },
                full_tunnel,
                accept_routes: match raw.accept_routes {
                    None | Some(AcceptRoutes::All(true)) => private_ranges(),
                    Some(AcceptRoutes::All(false)) => Vec::new(),
                    Some(AcceptRoutes::Inside(list)) => list
                        .iter()
                        .map(|s| parse_prefix("accept_routes", s).map(|p| p.network()))
                        .collect::<Result<_, _>>()?,
                },
                nat: raw.nat.unwrap_or(false),
            }
        };
        let tun_name = check_interface(
            "tun_name",
            raw.tun_name.unwrap_or_else(|| "culvert0".to_owned()),
        )?;
        if let Some(m) = raw.mtu {
            let min = if addresses.iter().any(|a| a.addr().is_ipv6()) {
                1280
            } else {
                576
            };
            if !(min..=9000).contains(&m) {
                return Err(err("mtu", format!("{m} is out of range {min}..=9000")));
            }
        }
        let metrics = raw
            .metrics
            .as_deref()
            .map(|m| {
                m.parse().map_err(|_| {
                    err(
                        "metrics",
                        format!("invalid address {m:?}: expected IP:PORT"),
                    )
                })
            })
            .transpose()?;
        let keepalive = match raw.keepalive {
            Some(k @ 1..=3600) => Duration::from_secs(k),
            Some(k) => {
                return Err(err(
                    "keepalive",
                    format!("{k} is out of range 1..=3600 seconds"),
                ));
            }
            None => culvert_core::Timing::default().keepalive,
        };
        let fec = FecConfig {
            mode: raw.fec.as_deref().map_or(Ok(FecMode::Auto), parse_fec)?,
            flush: match raw.fec_timeout_ms {
                Some(ms @ 1..=1000) => Duration::from_millis(ms),
                Some(ms) => {
                    return Err(err(
                        "fec_timeout_ms",
                        format!("{ms} is out of range 1..=1000 milliseconds"),
                    ));
                }
                None => FecConfig::default().flush,
            },
            ..FecConfig::default()
        };
        if let Some(u) = &raw.user
            && (u.is_empty()
                || !u
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(err("user", format!("{u:?} is not a user name")));
        }
        Ok(Self {
            role,
            addresses,
            routes,
            passphrase,
            passphrase_origin: raw.passphrase_origin,
            kdf: raw.passphrase_kdf.unwrap_or_default(),
            user: raw.user,
            private_key_file: raw.private_key_file,
            tun_name,
            mtu: raw.mtu,
            metrics,
            log_format: raw.log_format.unwrap_or_default(),
            state_dir: raw.state_dir,
            keepalive,
            transport: raw.transport.unwrap_or_default(),
            fec,
            faketcp_isn: raw.faketcp_isn,
            notes: raw.notes,
        })
    }
}

/// An interface name as Linux allows it (and nftables scripts can carry unquoted).
fn check_interface(key: &str, name: String) -> Result<String, ConfigError> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(err(
            key,
            format!("{name:?}: use 1-15 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(name)
}

/// `auto`, `off`, or `DATA:PARITY`.
fn parse_fec(s: &str) -> Result<FecMode, ConfigError> {
    let bad = |why: &str| {
        err(
            "fec",
            format!("{s:?}: {why}; use \"auto\", \"off\" or DATA:PARITY such as \"10:3\""),
        )
    };
    match s {
        "auto" => return Ok(FecMode::Auto),
        "off" => return Ok(FecMode::Off),
        _ => {}
    }
    let (d, p) = s.split_once(':').ok_or_else(|| bad("not a mode"))?;
    let (Ok(k), Ok(m)) = (d.trim().parse::<u8>(), p.trim().parse::<u8>()) else {
        return Err(bad("DATA and PARITY must be numbers"));
    };
    if !(1..=MAX_FEC_DATA).contains(&k) || m > k {
        return Err(bad(&format!(
            "DATA must be 1..={MAX_FEC_DATA} and PARITY at most DATA"
        )));
    }
    Ok(if m == 0 {
        FecMode::Off
    } else {
        FecMode::Fixed { k, m }
    })
}

/// Largest FEC group of data packets: larger groups wait longer to fill and buy little.
const MAX_FEC_DATA: u8 = 64;

fn load_optional(path: Option<&Path>, server: bool) -> Result<RawConfig, ConfigError> {
    path.map_or_else(|| Ok(RawConfig::default()), |p| RawConfig::load(p, server))
}

/// A list of subnets (network form): at most 16, none a default route.
fn parse_routes(key: &str, list: Option<&[String]>) -> Result<Vec<Prefix>, ConfigError> {
    let routes = list
        .unwrap_or_default()
        .iter()
        .map(|s| parse_prefix(key, s).map(|p| p.network()))
        .collect::<Result<Vec<_>, _>>()?;
    if routes.len() > culvert_wire::addr::MAX_ADDRESSES {
        return Err(err(key, "at most 16 routes"));
    }
    if let Some(r) = routes.iter().find(|r| r.is_empty()) {
        return Err(err(
            key,
            format!(
                "{r} is a default route: the server is the exit for everything (nat on the \
                 server, full_tunnel on clients)"
            ),
        ));
    }
    Ok(routes)
}

fn parse_prefix(key: &str, s: &str) -> Result<Prefix, ConfigError> {
    let p: Prefix = s.parse().map_err(|_| {
        err(
            key,
            format!("invalid {s:?}: expected ADDRESS/PREFIX, e.g. 10.0.0.2/24"),
        )
    })?;
    if !s.contains('/') {
        return Err(err(
            key,
            format!("{s:?} lacks a prefix length, e.g. {s}/24"),
        ));
    }
    Ok(p)
}

fn check_passphrase(
    key: &str,
    p: String,
    weak_ok: bool,
) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    let p = zeroize::Zeroizing::new(p);
    if [
        PLACEHOLDER,
        "CHANGE-THIS-TO-YOUR-SECRET-KEY",
        "请修改为您的强密钥",
    ]
    .contains(&p.as_str())
    {
        return Err(err(
            key,
            "still an example's placeholder, known to everyone: choose a real passphrase \
             (`head -c 24 /dev/urandom | base64`)",
        ));
    }
    if p.is_empty() {
        return Err(err(key, "is empty"));
    }
    let bits = passphrase_bits(&p);
    if !weak_ok && (p.chars().count() < MIN_PASSPHRASE_CHARS || bits < MIN_PASSPHRASE_BITS) {
        return Err(err(
            key,
            format!(
                "too weak to resist offline guessing (about {bits:.0} bits; at least \
                 {MIN_PASSPHRASE_CHARS} characters and {MIN_PASSPHRASE_BITS:.0} bits are needed): \
                 use `head -c 24 /dev/urandom | base64`, keys, or --allow-weak-key \
                 (allow_weak_passphrase = true in a file) to insist"
            ),
        ));
    }
    Ok(p)
}

/// Shortest passphrase accepted without `--allow-weak-key`.
const MIN_PASSPHRASE_CHARS: usize = 12;
/// Least estimated entropy accepted without `--allow-weak-key`. A recorded handshake lets
/// an attacker guess offline at one Argon2id evaluation per guess.
const MIN_PASSPHRASE_BITS: f64 = 50.0;

/// A deliberately rough entropy estimate: length times the Shannon entropy of the
/// passphrase's own character distribution. It catches short, repetitive and
/// single-class passphrases; it cannot know that a long one is a famous quote.
pub(crate) fn passphrase_bits(p: &str) -> f64 {
    let chars: Vec<char> = p.chars().collect();
    let n = chars.len() as f64;
    let mut counts = std::collections::BTreeMap::new();
    for c in &chars {
        *counts.entry(*c).or_insert(0u32) += 1;
    }
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let q = f64::from(k) / n;
            -q * q.log2()
        })
        .sum();
    per_char * n
}

/// The networks a client accepts addresses and routes in: the `network` key, else the
/// prefixes of its own addresses, else (key mode without addresses) the private ranges.
fn client_networks(
    configured: Option<OneOrMany>,
    addresses: &[Prefix],
) -> Result<Vec<Prefix>, ConfigError> {
    let networks: Vec<Prefix> = match configured {
        Some(list) => list
            .into_vec()
            .iter()
            .map(|s| parse_prefix("network", s).map(|p| p.network()))
            .collect::<Result<_, _>>()?,
        None if !addresses.is_empty() => addresses.iter().map(Prefix::network).collect(),
        None => private_ranges(),
    };
    if let Some(a) = addresses
        .iter()
        .find(|a| !networks.iter().any(|n| n.covers(a)))
    {
        return Err(err(
            "network",
            format!("this client's own address {a} lies outside it"),
        ));
    }
    Ok(networks)
}

/// What a key-mode client without `-t` accepts from the hub, and where the subnet routes
/// it installs may lie by default: RFC 1918, CGNAT space, ULAs.
fn private_ranges() -> Vec<Prefix> {
    [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
    ]
    .iter()
    .map(|s| s.parse().expect("valid constant"))
    .collect()
}

/// Adds the default port when `host` has none; `None` if it cannot be a host:port.
fn with_default_port(s: &str) -> Option<String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Some(s.to_owned());
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Some(SocketAddr::new(s.parse().ok()?, DEFAULT_PORT).to_string());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Some(s.to_owned()),
        Some(_) => None,
        None if !s.is_empty() => Some(format!("{s}:{DEFAULT_PORT}")),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> Result<Settings, ConfigError> {
        Settings::build(RawConfig::parse(text, "test")?, true)
    }

    fn client(text: &str) -> Result<Settings, ConfigError> {
        Settings::build(RawConfig::parse(text, "test")?, false)
    }

    #[test]
    fn routes_are_checked_where_they_are_set() {
        const C: &str = "server = \"198.51.100.1:9000\"\naddress = \"10.0.0.2/24\"\n\
                         passphrase = \"a-real-passphrase-42\"\n";
        const S: &str = "address = \"10.0.0.1/24\"\npassphrase = \"a-real-passphrase-42\"\n";
        // lightweight-tunnel's name; host bits dropped.
        let c = client(&format!("{C}routes = [\"192.168.50.9/24\"]\nnat = true\n")).unwrap();
        assert_eq!(c.routes, vec!["192.168.50.0/24".parse::<Prefix>().unwrap()]);
        let RoleSettings::Client {
            nat: true,
            accept_routes,
            ..
        } = c.role
        else {
            panic!("a client with nat");
        };
        assert_eq!(
            accept_routes,
            private_ranges(),
            "by default the private ranges"
        );
        let accept = |v: &str| match client(&format!("{C}accept_routes = {v}\n")).map(|c| c.role) {
            Ok(RoleSettings::Client { accept_routes, .. }) => Ok(accept_routes),
            Ok(_) => panic!("a client"),
            Err(e) => Err(e),
        };
        assert_eq!(accept("false").unwrap(), Vec::<Prefix>::new());
        assert_eq!(accept("true").unwrap(), private_ranges());
        assert_eq!(
            accept("[\"8.8.8.0/24\"]").unwrap(),
            vec!["8.8.8.0/24".parse::<Prefix>().unwrap()]
        );
        assert_eq!(accept("[\"nonsense\"]").unwrap_err().key, "accept_routes");
        let e = client(&format!("{C}advertise_routes = [\"0.0.0.0/0\"]\n")).unwrap_err();
        assert!(e.message.contains("default route"), "{e}");
        let e = client(&format!("{C}advertise_routes = [\"10.0.0.0/16\"]\n")).unwrap_err();
        assert!(e.message.contains("overlaps"), "{e}");
        let e = client(&format!("{C}nat = true\n")).unwrap_err();
        assert_eq!(e.key, "nat");
        let e = client(&format!("{C}allow_routes = [\"192.168.0.0/16\"]\n")).unwrap_err();
        assert!(e.message.contains("allow_routes"), "{e}");
        let s = server(&format!(
            "{S}allow_routes = [\"192.168.0.0/16\"]\n[[peer]]\npublic_key = \"{}\"\n\
             address = \"10.0.0.7/32\"\nroutes = [\"172.16.5.0/24\"]\n",
            PublicKey([9; 32])
        ))
        .unwrap();
        let RoleSettings::Server {
            allow_routes,
            peers,
            ..
        } = s.role
        else {
            panic!("a server");
        };
        assert_eq!(allow_routes[0].to_string(), "192.168.0.0/16");
        assert_eq!(peers[0].routes[0].to_string(), "172.16.5.0/24");
        let e = server(&format!("{S}accept_routes = false\n")).unwrap_err();
        assert_eq!(e.key, "accept_routes");
    }

    #[test]
    fn examples_parse() {
        let s = EXAMPLE_SERVER.replace(PLACEHOLDER, "a-real-passphrase-42");
        let s = server(&s).unwrap();
        assert!(matches!(s.role, RoleSettings::Server { listen, .. } if listen.port() == 9000));
        let c = EXAMPLE_CLIENT.replace(PLACEHOLDER, "a-real-passphrase-42");
        let c = client(&c).unwrap();
        assert_eq!(c.addresses[0].to_string(), "10.0.0.2/24");
        // The examples as printed must refuse to run with the placeholder.
        let e = server(EXAMPLE_SERVER).unwrap_err();
        assert_eq!(e.key, "passphrase");
    }

    #[test]
    fn errors_name_the_key() {
        let e = server("listen = \"1.2.3.4:99999\"\naddress = \"10.0.0.1/24\"\npassphrase = \"correct-horse-battery-9\"")
            .unwrap_err();
        assert_eq!(e.key, "listen");
        assert!(
            e.to_string()
                .starts_with("config key 'listen': invalid address")
        );
        let e =
            server("address = \"10.0.0.1\"\npassphrase = \"correct-horse-battery-9\"").unwrap_err();
        assert_eq!(e.key, "address");
        let e = server("address = \"10.0.0.1/24\"").unwrap_err();
        assert_eq!(e.key, "passphrase");
        let e = client("server = \"h:1\"\npassphrase = \"correct-horse-battery-9\"").unwrap_err();
        assert_eq!(e.key, "address");
        let e = client("passphrase = \"correct-horse-battery-9\"\naddress = \"10.0.0.2/24\"")
            .unwrap_err();
        assert_eq!(e.key, "server");
        let e = client("bogus = 1").unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        assert!(e.message.contains("line 1"), "{e}");
        let e = server(
            "address = \"10.0.0.1/24\"\npassphrase = \"correct-horse-battery-9\"\nmtu = 100",
        )
        .unwrap_err();
        assert_eq!(e.key, "mtu");
        let e = server(
            "address = \"10.0.0.1/24\"\n[[peer]]\npublic_key = \"nope\"\naddress = \"10.0.0.2/32\"",
        )
        .unwrap_err();
        assert_eq!(e.key, "peer[0].public_key");
    }

    #[test]
    fn lightweight_tunnel_names_mean_the_same() {
        let base = "server = \"h:1\"\npassphrase = \"correct-horse-battery-9\"\naddress = \"10.0.0.2/24\"\n";
        let s = client(&format!(
            "{base}p2p_enabled = false\nenable_mesh_routing = false\nmax_hops = 2"
        ))
        .unwrap();
        let RoleSettings::Client {
            p2p, mesh_relay, ..
        } = s.role
        else {
            panic!("not a client")
        };
        assert!(!p2p);
        assert!(!mesh_relay.enabled);
        assert_eq!(mesh_relay.max_hops, 2);
    }

    #[test]
    fn fec_settings() {
        let base = "address = \"10.0.0.1/24\"\npassphrase = \"correct-horse-battery-9\"\n";
        let fec = |extra: &str| server(&format!("{base}{extra}")).map(|s| s.fec);
        assert_eq!(fec("").unwrap().mode, FecMode::Auto, "auto by default");
        assert_eq!(fec("fec = \"off\"").unwrap().mode, FecMode::Off);
        assert_eq!(
            fec("fec = \"10:3\"").unwrap().mode,
            FecMode::Fixed { k: 10, m: 3 }
        );
        assert_eq!(fec("fec = \"20:0\"").unwrap().mode, FecMode::Off);
        let f = fec("fec = \"20:10\"\nfec_timeout_ms = 8").unwrap();
        assert_eq!(f.flush, Duration::from_millis(8));
        for bad in [
            "fec = \"10:11\"",
            "fec = \"0:1\"",
            "fec = \"ten\"",
            "fec = \"65:3\"",
        ] {
            assert_eq!(fec(bad).unwrap_err().key, "fec", "{bad}");
        }
        assert_eq!(fec("fec_timeout_ms = 0").unwrap_err().key, "fec_timeout_ms");
    }

    #[test]
    fn fec_flags_override_the_file() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "culvert",
            "client",
            "-r",
            "h:1",
            "-t",
            "10.0.0.2/24",
            "-k",
            "correct-horse-battery-9",
            "--fec-data",
            "20",
            "--fec-parity",
            "10",
        ])
        .unwrap();
        let crate::cli::Command::Client(args) = cli.command else {
            panic!("not a client command");
        };
        let s = Settings::client(&args).unwrap();
        assert_eq!(s.fec.mode, FecMode::Fixed { k: 20, m: 10 });
        assert!(
            crate::cli::Cli::try_parse_from(["culvert", "client", "--fec-data", "20"]).is_err(),
            "--fec-data needs --fec-parity"
        );
    }

    #[test]
    fn server_default_port() {
        assert_eq!(
            with_default_port("vpn.example.com").as_deref(),
            Some("vpn.example.com:9000")
        );
        assert_eq!(
            with_default_port("192.0.2.1").as_deref(),
            Some("192.0.2.1:9000")
        );
        assert_eq!(
            with_default_port("[2001:db8::1]:1").as_deref(),
            Some("[2001:db8::1]:1")
        );
        assert_eq!(with_default_port("h:x"), None);
    }
}
