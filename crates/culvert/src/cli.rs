//! Command-line interface. Flags mirror the config keys and override them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// culvert: an encrypted overlay network across hostile networks.
#[derive(Debug, Parser)]
#[command(
    name = "culvert",
    version,
    about,
    propagate_version = true,
    after_help = "lightweight-tunnel's command line and JSON file work too \
                  (culvert -m server -l 0.0.0.0:9000 -t 10.0.0.1/24 -k KEY; culvert -c \
                  config.json; culvert -g config.json): `culvert -m server -h` says how each \
                  of its flags maps."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the hub: accept clients, relay between them, be an overlay node yourself.
    Server(ServerArgs),
    /// Run a client of one hub.
    Client(ClientArgs),
    /// Show the running daemon(s) of this network namespace.
    Status(StatusArgs),
    /// Print a new private key (base64), or write it to a new file readable by its owner
    /// only.
    Genkey(GenkeyArgs),
    /// Read a private key on stdin and print its public key.
    Pubkey,
    /// Print (or write) a commented example configuration.
    Init(InitArgs),
    /// Forget the server key a client pinned at its first contact (passphrase mode), so
    /// that the next start trusts the server that answers then.
    ForgetServer(ForgetArgs),
    /// Build a throwaway network-namespace topology, run culvert in it, report, clean up.
    Demo(DemoArgs),
    /// Transparent L4 proxy: intercept TCP to chosen prefixes, relay it over gRPC with
    /// mutual TLS to connectors in the target networks.
    Proxy(culvert_proxy::Args),
}

/// Settings shared by server and client.
#[derive(Debug, Args, Default)]
pub(crate) struct CommonArgs {
    /// Configuration file, TOML (or JSON, with lightweight-tunnel's keys or culvert's);
    /// flags override its keys.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Overlay address with prefix, e.g. 10.0.0.2/24 (repeat for IPv6). [key: address]
    #[arg(short = 't', long = "address", value_name = "ADDR/PREFIX")]
    pub(crate) address: Vec<String>,
    /// Shared passphrase (passphrase mode); visible in `ps` — prefer --key-file or the
    /// CULVERT_KEY environment variable. [key: passphrase]
    #[arg(short = 'k', long = "key", value_name = "PASSPHRASE")]
    pub(crate) passphrase: Option<String>,
    /// Read the passphrase from a file instead. [key: passphrase_file]
    #[arg(long, visible_alias = "key-file", value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Accept a passphrase shorter than 12 characters or of low entropy. [key: allow_weak_passphrase]
    #[arg(long)]
    pub(crate) allow_weak_key: bool,
    /// How the passphrase becomes the key, the same on every node: v2 (Argon2id, 19 MiB,
    /// 2 passes; default) or v1 (64 MiB, 3 passes: nodes older than v2).
    /// [key: passphrase_kdf]
    #[arg(long, value_enum, value_name = "VERSION")]
    pub(crate) passphrase_kdf: Option<crate::identity::Kdf>,
    /// Run as this user after setup, keeping only CAP_NET_ADMIN and CAP_NET_RAW; default
    /// `culvert` when that user exists ("root" keeps root). [key: user]
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// This node's private key file (base64, from `culvert genkey`). [key: private_key_file]
    #[arg(long, value_name = "FILE")]
    pub(crate) private_key_file: Option<PathBuf>,
    /// Name of the TUN device (also names this instance). [key: tun_name]
    #[arg(long, value_name = "NAME")]
    pub(crate) tun_name: Option<String>,
    /// Overlay MTU; default: computed from a 1500-byte underlay. [key: mtu]
    #[arg(long, value_name = "BYTES")]
    pub(crate) mtu: Option<u32>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9100. [key: metrics]
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,
    /// Log format. [key: log_format]
    #[arg(long, value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    /// Where per-instance state (the generated identity key) lives. [key: state_dir]
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Seconds between keepalives to the server. [key: keepalive]
    #[arg(long, value_name = "SECONDS")]
    pub(crate) keepalive: Option<u64>,
    /// udp, faketcp, or auto (UDP, falling back to FakeTCP). [key: transport]
    #[arg(long, value_enum)]
    pub(crate) transport: Option<TransportArg>,
    /// Forward error correction: auto (parity adapted to the measured loss), off, or
    /// DATA:PARITY, e.g. 10:3. [key: fec]
    #[arg(long, value_name = "auto|off|D:P")]
    pub(crate) fec: Option<String>,
    /// Fixed FEC: data packets per group (with --fec-parity).
    #[arg(
        long,
        value_name = "N",
        requires = "fec_parity",
        conflicts_with = "fec"
    )]
    pub(crate) fec_data: Option<u8>,
    /// Fixed FEC: parity packets per group (with --fec-data).
    #[arg(long, value_name = "N", requires = "fec_data")]
    pub(crate) fec_parity: Option<u8>,
    /// Longest wait, in ms, before parity of a partial group is sent. [key: fec_timeout_ms]
    #[arg(long, value_name = "MS")]
    pub(crate) fec_timeout_ms: Option<u64>,
    /// A subnet behind this node that the others reach through it (repeat, or separate
    /// with commas); the server must allow it (allow_routes, [[peer]] routes).
    /// [key: advertise_routes]
    #[arg(
        long = "advertise-route",
        visible_alias = "routes",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    pub(crate) advertise_routes: Vec<String>,
    /// Server: be the clients' exit (forward their traffic out of the uplink and
    /// masquerade it). Any node: masquerade the overlay's traffic into the subnets it
    /// advertises, for LANs with no route back to the overlay. Rules live in culvert's own
    /// nftables table, undone at exit. [key: nat]
    #[arg(long)]
    pub(crate) nat: bool,
    /// Test hook: the initial FakeTCP sequence number (to exercise wrap-around).
    #[arg(long, hide = true, value_name = "N")]
    pub(crate) faketcp_isn: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TransportArg {
    /// UDP only.
    Udp,
    /// FakeTCP only (TCP segments; passes UDP-blocking firewalls).
    Faketcp,
    /// UDP, FakeTCP when UDP stops working, and back. A server serves both.
    #[default]
    Auto,
}

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Underlay address to listen on, e.g. 0.0.0.0:9000 or [::]:9000. [key: listen]
    #[arg(short = 'l', long, value_name = "ADDR:PORT")]
    pub(crate) listen: Option<String>,
    /// Most clients at once. [key: max_clients]
    #[arg(long, value_name = "N")]
    pub(crate) max_clients: Option<usize>,
    /// Clients reach the server but not each other. [key: client_isolation]
    #[arg(long)]
    pub(crate) client_isolation: bool,
    /// Accept routes offered by clients inside this prefix (repeat). [key: allow_routes]
    #[arg(long = "allow-route", value_name = "PREFIX", value_delimiter = ',')]
    pub(crate) allow_routes: Vec<String>,
    /// Accept a client's route that overlaps another node's or the server's own (a more
    /// specific one draws that part of the other's traffic). [key: allow_route_overlap]
    #[arg(long)]
    pub(crate) allow_route_overlap: bool,
    /// The uplink to masquerade out of; default: the default route's interface.
    /// [key: nat_interface]
    #[arg(long, value_name = "IFACE", requires = "nat")]
    pub(crate) nat_interface: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// The server, HOST:PORT. [key: server]
    #[arg(short = 'r', long = "server", value_name = "HOST:PORT")]
    pub(crate) server: Option<String>,
    /// The server's public key (key mode; pins the server in passphrase mode). [key: server_public_key]
    #[arg(long, value_name = "KEY")]
    pub(crate) server_key: Option<String>,
    /// Overlay network(s) the server may grant addresses and routes in (repeat); default:
    /// the prefixes of -t, or the private ranges in key mode without -t. [key: network]
    #[arg(long, value_name = "PREFIX")]
    pub(crate) network: Vec<String>,
    /// Try direct paths to other clients (hole punching coordinated by the server; the
    /// default). [key: p2p]
    #[arg(long, conflicts_with = "no_p2p")]
    pub(crate) p2p: bool,
    /// Keep every client-to-client packet on the server's relay. [key: p2p = false]
    #[arg(long)]
    pub(crate) no_p2p: bool,
    /// UDP port for direct paths; 0 (the default) shares the main socket. [key: p2p_port]
    #[arg(long, value_name = "PORT")]
    pub(crate) p2p_port: Option<u16>,
    /// Forward nothing for other clients (by default a client relays over its direct
    /// paths, up to mesh_relay_mbps). [key: mesh_relay = false]
    #[arg(long)]
    pub(crate) no_mesh_relay: bool,
    /// Relays a message this client sends may cross, 1-8 (default 3). [key: max_hops]
    #[arg(long, value_name = "N")]
    pub(crate) max_hops: Option<u8>,
    /// Send all IPv4 and IPv6 traffic through the server (needs a server with --nat);
    /// nothing leaks while the tunnel is down. [key: full_tunnel]
    #[arg(long)]
    pub(crate) full_tunnel: bool,
    /// With --full-tunnel: keep the LAN (every route more specific than the default one)
    /// outside the tunnel; default true. [key: allow_lan]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) allow_lan: Option<bool>,
    /// With --full-tunnel: a DNS server to use while the tunnel runs (repeat). [key: dns]
    #[arg(long, value_name = "IP")]
    pub(crate) dns: Vec<String>,
    /// Install no routes to the subnets other nodes advertise (only their overlay
    /// addresses stay reachable). [key: accept_routes = false]
    #[arg(long, conflicts_with = "accept_routes")]
    pub(crate) no_accept_routes: bool,
    /// Install the subnets other nodes advertise only inside this prefix (repeat);
    /// default: the private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7).
    /// [key: accept_routes = ["PREFIX", ...]]
    #[arg(long = "accept-route", value_name = "PREFIX", value_delimiter = ',')]
    pub(crate) accept_routes: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Which daemon (its TUN name); default: every daemon in this network namespace.
    #[arg(long, value_name = "NAME")]
    pub(crate) instance: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct GenkeyArgs {
    /// Write the key to this new file (mode 0600) instead of printing it.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Which example.
    pub(crate) role: InitRole,
    /// Write it to this file (mode 0600) instead of printing it.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Client: the server's public key, written as `server_public_key` (key mode).
    #[arg(long, value_name = "KEY", conflicts_with = "passphrase_file")]
    pub(crate) server_key: Option<String>,
    /// The network's passphrase: read from this file when it exists (a client takes the
    /// server's), else made and written there (mode 0600), so every node gets the same.
    #[arg(long, visible_alias = "key-file", value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Client: the server, HOST:PORT, written as `server`.
    #[arg(short = 'r', long, value_name = "HOST:PORT")]
    pub(crate) server: Option<String>,
    /// This node's overlay address, written as `address` (each client needs its own).
    #[arg(short = 't', long, value_name = "ADDR/PREFIX")]
    pub(crate) address: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ForgetArgs {
    /// The client instance (its TUN name).
    #[arg(long, value_name = "NAME", default_value = "culvert0")]
    pub(crate) tun_name: String,
    /// The instance's state directory, if not the default.
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Only the key pinned for this server (as configured, HOST:PORT); default: all.
    #[arg(short = 'r', long = "server", value_name = "HOST:PORT")]
    pub(crate) server: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum InitRole {
    Server,
    Client,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Megabytes to transfer in the throughput check.
    #[arg(long, default_value_t = 20)]
    pub(crate) megabytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}
