//! `culvert proxy …`: flags, config files (TOML, YAML or JSON, with the Network
//! Tunneler's key names), and starting each role.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use culvert_sys::nft::LanScope;
use culvert_wire::addr::Prefix;
use serde::Deserialize;

use crate::metrics::{self, Metrics};
use crate::pki::{self, TlsFiles};
use crate::routes::{Route, parse_prefix};
use crate::{
    CONNECTION_WINDOW, HEARTBEAT, HEARTBEAT_LOSS, STREAM_WINDOW, client, connector, server,
};

/// The transparent L4 proxy: intercept TCP to chosen prefixes and relay it over gRPC with
/// mutual TLS to connectors inside the target networks.
#[derive(Debug, Parser)]
pub struct Args {
    #[command(subcommand)]
    command: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Write a CA and certificates for the server, a client and connectors.
    Certs(CertsArgs),
    /// Run the relay server.
    Server(ServerArgs),
    /// Run a connector inside a target network (it only connects out).
    Connector(ConnectorArgs),
    /// Intercept TCP to the given prefixes on this host (needs root or CAP_NET_ADMIN).
    Client(ClientArgs),
    /// Show a running role's flows and counters.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// Directory to write into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Another name (DNS or IP) for the server's certificate (repeat).
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// A connector id to make a certificate for (repeat; default proxy-1).
    #[arg(long = "connector", value_name = "ID")]
    connectors: Vec<String>,
    /// Days the new certificates are valid (the CA: 10 years).
    #[arg(long, value_name = "DAYS", default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
}

#[derive(Debug, clap::Args, Default)]
struct Common {
    /// Config file: TOML, YAML or JSON (by extension); flags override it.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This party's certificate (PEM). [key: tls.cert_file]
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// This party's private key (PEM). [key: tls.key_file]
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The CA certificate (PEM). [key: tls.ca_file]
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Log level: error, warn, info, debug. [key: log.level]
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format: text or json. [key: log.format]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Serve /metrics and /status here (default 127.0.0.1:918x by role; "off" for none). [key: metrics]
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Seconds a flow may carry nothing before it is reset (default 900). [key: idle_timeout]
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on (":8081" is every address). [key: listen_addr]
    #[arg(long, visible_alias = "listen-addr", value_name = "ADDR")]
    listen: Option<String>,
    /// Connector ID may serve only inside these prefixes (what clients address; repeat
    /// per id). With any given, connectors not named are refused. [key: allow_connectors]
    #[arg(long = "allow-connector", value_name = "ID=PREFIX[,PREFIX]")]
    allow_connectors: Vec<String>,
    /// Flows one client address may have open at once (default 1024).
    /// [key: max_flows_per_client]
    #[arg(long, value_name = "N")]
    max_flows_per_client: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct ConnectorArgs {
    #[command(flatten)]
    common: Common,
    /// The server, host:port. [key: server_addr]
    #[arg(long, visible_alias = "server-addr", value_name = "HOST:PORT")]
    server: Option<String>,
    /// This connector's id (its certificate names it). [key: proxy_id]
    #[arg(long, visible_alias = "proxy-id", value_name = "ID")]
    id: Option<String>,
    /// A prefix this connector serves (repeat or comma-separate). [key: managed_cidr]
    #[arg(
        long,
        visible_alias = "managed-cidr",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    cidr: Vec<String>,
    /// Serve VIRTUAL as REAL, e.g. 100.64.1.0/24=192.168.1.0/24 (repeat). [key: map]
    #[arg(long, value_name = "VIRTUAL=REAL")]
    map: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    #[command(flatten)]
    common: Common,
    /// The server, host:port. [key: server_addr]
    #[arg(long, visible_alias = "server-addr", value_name = "HOST:PORT")]
    server: Option<String>,
    /// A prefix whose TCP is intercepted (repeat or comma-separate). [key: target_cidr]
    #[arg(
        long,
        visible_alias = "target-cidr",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    cidr: Vec<String>,
    /// The local listener's port (default 9999). [key: listen_port]
    #[arg(long, value_name = "PORT")]
    listen_port: Option<u16>,
    /// Also intercept connections of a LAN routed through this host, arriving on this
    /// interface (repeat). Without this or --lan-source only local programs are proxied.
    /// [key: lan_interfaces]
    #[arg(long = "lan-interface", value_name = "IFACE", value_delimiter = ',')]
    lan_interfaces: Vec<String>,
    /// Also intercept connections of LAN hosts from this prefix (repeat). [key: lan_sources]
    #[arg(long = "lan-source", value_name = "PREFIX", value_delimiter = ',')]
    lan_sources: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Which role's default address to ask: server, connector or client.
    #[arg(default_value = "server")]
    role: String,
    /// Ask this address instead.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// A string or a list of strings (the original tool takes one CIDR; culvert takes many).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    insecure: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogSection {
    level: Option<String>,
    format: Option<String>,
    output: Option<String>,
}

/// A config file's keys; names of the Network Tunneler's files are accepted as aliases.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(alias = "server_addr")]
    server: Option<String>,
    #[serde(alias = "listen_addr")]
    listen: Option<String>,
    listen_port: Option<u16>,
    lan_interfaces: Option<OneOrMany>,
    lan_sources: Option<OneOrMany>,
    #[serde(alias = "target_cidr", alias = "managed_cidr", alias = "cidrs")]
    cidr: Option<OneOrMany>,
    #[serde(alias = "proxy_id")]
    id: Option<String>,
    map: Option<OneOrMany>,
    /// The original client's id: accepted and ignored (the server names flows).
    #[serde(rename = "client_id")]
    _client_id: Option<String>,
    #[serde(default)]
    tls: TlsSection,
    #[serde(default)]
    log: LogSection,
    metrics: Option<String>,
    idle_timeout: Option<u64>,
    /// Server: connector id → the prefixes it may serve.
    allow_connectors: Option<BTreeMap<String, OneOrMany>>,
    max_flows_per_client: Option<usize>,
}

impl File {
    fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let f: Self = match ext.as_str() {
            "yaml" | "yml" => serde_yaml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            "json" => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            _ => toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        };
        if f.tls.insecure == Some(true) {
            bail!(
                "{}: tls.insecure is not supported: every party is verified against the CA",
                path.display()
            );
        }
        if f.log
            .output
            .as_deref()
            .is_some_and(|o| o != "stdout" && o != "stderr")
        {
            bail!(
                "{}: log.output: culvert logs to stderr; redirect it or use the journal",
                path.display()
            );
        }
        Ok(f)
    }
}

struct Resolved {
    tls: TlsFiles,
    metrics: Option<SocketAddr>,
    idle: Duration,
}

fn resolve(c: &Common, f: &File, default_metrics: &str) -> Result<Resolved> {
    init_logging(
        c.log_level
            .as_deref()
            .or(f.log.level.as_deref())
            .unwrap_or("info"),
        c.log_format
            .as_deref()
            .or(f.log.format.as_deref())
            .unwrap_or("text"),
    )?;
    let pick = |flag: &Option<PathBuf>, key: &Option<PathBuf>| {
        flag.clone().or_else(|| key.clone()).unwrap_or_default()
    };
    let tls = TlsFiles {
        cert: pick(&c.tls_cert, &f.tls.cert_file),
        key: pick(&c.tls_key, &f.tls.key_file),
        ca: pick(&c.tls_ca, &f.tls.ca_file),
    };
    let m = c
        .metrics
        .clone()
        .or_else(|| f.metrics.clone())
        .unwrap_or_else(|| default_metrics.into());
    let metrics = if m == "off" {
        None
    } else {
        Some(
            m.parse()
                .with_context(|| format!("metrics {m:?}: expected ADDR:PORT or off"))?,
        )
    };
    let idle = Duration::from_secs(c.idle_timeout.or(f.idle_timeout).unwrap_or(900).max(1));
    Ok(Resolved { tls, metrics, idle })
}

fn init_logging(level: &str, format: &str) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CULVERT_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .with_context(|| format!("log level {level:?}: use error, warn, info or debug"))?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "json" => b.json().init(),
        "text" | "human" | "console" => b.init(),
        other => bail!("log format {other:?}: use text or json"),
    }
    Ok(())
}

/// `host:port`, with Go's ":8081" meaning every address.
fn listen_addr(text: &str) -> Result<SocketAddr> {
    let full = if text.starts_with(':') {
        format!("[::]{text}")
    } else {
        text.to_string()
    };
    full.parse()
        .with_context(|| format!("listen address {text:?}: expected ADDR:PORT or :PORT"))
}

fn endpoint(server: &str, tls: &TlsFiles) -> Result<tonic::transport::Endpoint> {
    let e = tonic::transport::Endpoint::from_shared(format!("https://{server}"))
        .with_context(|| format!("server address {server:?}: expected HOST:PORT"))?
        .tls_config(tls.client()?)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(HEARTBEAT)
        .keep_alive_timeout(HEARTBEAT_LOSS)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    Ok(e)
}

fn prefixes(list: Vec<String>, what: &str) -> Result<Vec<Prefix>> {
    if list.is_empty() {
        bail!("{what}: give at least one prefix (--cidr 192.168.1.0/24)");
    }
    list.iter().map(|p| parse_prefix(p.trim())).collect()
}

/// `--allow-connector ID=PREFIX[,PREFIX]`, repeated: each id's prefixes.
fn scopes(flags: &[String]) -> Result<BTreeMap<String, Vec<Prefix>>> {
    let mut out = BTreeMap::new();
    for f in flags {
        let (id, list) = f.split_once('=').with_context(|| {
            format!(
                "--allow-connector {f:?}: expected ID=PREFIX[,PREFIX], e.g. proxy-1=100.64.1.0/24"
            )
        })?;
        let list = list.split(',').map(str::to_owned).collect();
        add_scope(&mut out, id, list, "--allow-connector")?;
    }
    Ok(out)
}

/// Adds connector `id`'s prefixes to `scopes`, from a flag or the config file (`what`).
fn add_scope(
    scopes: &mut BTreeMap<String, Vec<Prefix>>,
    id: &str,
    list: Vec<String>,
    what: &str,
) -> Result<()> {
    let id = id.trim();
    pki::check_connector_id(id)?;
    let prefixes = prefixes(list, what)?;
    scopes.entry(id.to_owned()).or_default().extend(prefixes);
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    if let Err(e) = culvert_sys::sockopt::raise_open_files_limit() {
        tracing::warn!("open files limit not raised ({e}): flows may hit it");
    }
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Serves a role's counters: Prometheus text and JSON on the metrics listener (when on),
/// and the JSON on the control socket `instance`, for `culvert status`. The JSON also
/// names the instance and carries the process's uptime.
async fn observe(
    addr: Option<SocketAddr>,
    instance: &str,
    prometheus: impl Fn() -> String + Send + Sync + 'static,
    status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
) -> Result<()> {
    let started = std::time::Instant::now();
    let netns = culvert_sys::netns::current_name();
    let name = instance.to_owned();
    let status = Arc::new(move || {
        let mut v = status();
        v["instance"] = name.clone().into();
        v["netns"] = netns.clone().into();
        v["uptime_secs"] = started.elapsed().as_secs().into();
        v
    });
    let s = status.clone();
    metrics::serve_control(instance, move || s());
    if let Some(addr) = addr {
        metrics::serve(addr, prometheus, move || status()).await?;
    }
    Ok(())
}

/// [`observe`] for a client or connector: its own counters, and what `detail` adds.
async fn observe_peer(
    addr: Option<SocketAddr>,
    instance: &str,
    role: &'static str,
    m: &Arc<Metrics>,
    detail: impl Fn() -> serde_json::Value + Send + Sync + 'static,
) -> Result<()> {
    let (a, b) = (m.clone(), m.clone());
    observe(
        addr,
        instance,
        move || a.prometheus(role),
        move || {
            let mut v = b.json();
            v["role"] = format!("proxy {role}").into();
            v["detail"] = detail();
            v
        },
    )
    .await
}

/// Runs `culvert proxy …`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        Role::Certs(a) => {
            let connectors = if a.connectors.is_empty() {
                vec!["proxy-1".into()]
            } else {
                a.connectors
            };
            for w in pki::generate(&a.out, &a.server_names, &connectors, a.days)? {
                match w {
                    pki::Written::New(p) => println!("{}", p.display()),
                    pki::Written::Kept(p) => println!("{} (kept: already there)", p.display()),
                }
            }
            Ok(())
        }
        Role::Status(a) => status(&a),
        Role::Server(a) => {
            let f = File::load(a.common.config.as_deref())?;
            let r = resolve(&a.common, &f, "127.0.0.1:9181")?;
            let listen = listen_addr(
                a.listen
                    .as_deref()
                    .or(f.listen.as_deref())
                    .unwrap_or(":8081"),
            )?;
            let tls = r.tls.server()?;
            let scopes = if a.allow_connectors.is_empty() {
                let mut scopes = BTreeMap::new();
                for (id, list) in f.allow_connectors.unwrap_or_default() {
                    add_scope(&mut scopes, &id, list.into_vec(), "allow_connectors")?;
                }
                scopes
            } else {
                scopes(&a.allow_connectors)?
            };
            let max_flows = a
                .max_flows_per_client
                .or(f.max_flows_per_client)
                .unwrap_or(1024)
                .max(1);
            runtime()?.block_on(async move {
                let hub = Arc::new(server::Hub::new(r.idle, scopes, max_flows));
                let (h, h2) = (hub.clone(), hub.clone());
                observe(
                    r.metrics,
                    &format!("proxy-server-{}", listen.port()),
                    move || h.metrics.prometheus("server"),
                    move || {
                        let mut v = h2.metrics.json();
                        v["role"] = "proxy server".into();
                        v["listen"] = listen.to_string().into();
                        v["connectors"] = h2
                            .connectors()
                            .into_iter()
                            .map(|(id, routes, flows)| serde_json::json!({
                                "id": id,
                                "routes": routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                                "flows": flows,
                            }))
                            .collect();
                        v
                    },
                )
                .await?;
                server::run(listen, tls, hub, Duration::from_secs(30)).await
            })
        }
        Role::Connector(a) => {
            let f = File::load(a.common.config.as_deref())?;
            let r = resolve(&a.common, &f, "127.0.0.1:9182")?;
            let server = a
                .server
                .or(f.server)
                .context("connector: --server HOST:PORT is needed")?;
            let id = a.id.or(f.id).unwrap_or_else(|| "proxy-1".into());
            pki::check_connector_id(&id)?;
            let cidrs = if a.cidr.is_empty() {
                f.cidr.map(OneOrMany::into_vec).unwrap_or_default()
            } else {
                a.cidr
            };
            let maps = if a.map.is_empty() {
                f.map.map(OneOrMany::into_vec).unwrap_or_default()
            } else {
                a.map
            };
            let mut routes: Vec<Route> = cidrs
                .iter()
                .map(|p| parse_prefix(p.trim()).map(Route::direct))
                .collect::<Result<_>>()?;
            for m in &maps {
                routes.push(Route::mapping(m)?);
            }
            if routes.is_empty() {
                bail!(
                    "connector: give what it serves: --cidr 192.168.1.0/24 and/or --map VIRTUAL=REAL"
                );
            }
            let endpoint = endpoint(&server, &r.tls)?;
            let s = connector::Settings {
                server,
                id,
                routes,
                idle: r.idle,
                grace: Duration::from_secs(30),
            };
            runtime()?.block_on(async move {
                let m = Arc::new(Metrics::default());
                let shown = s.routes.iter().map(ToString::to_string).collect::<Vec<_>>();
                let (id, server) = (s.id.clone(), s.server.clone());
                observe_peer(
                    r.metrics,
                    &format!("proxy-connector-{}", s.id),
                    "connector",
                    &m,
                    move || serde_json::json!({"id": id, "server": server, "routes": shown}),
                )
                .await?;
                connector::run(s, endpoint, m).await
            })
        }
        Role::Client(a) => {
            let f = File::load(a.common.config.as_deref())?;
            let r = resolve(&a.common, &f, "127.0.0.1:9183")?;
            let server = a
                .server
                .or(f.server)
                .context("client: --server HOST:PORT is needed")?;
            let cidrs = if a.cidr.is_empty() {
                f.cidr.map(OneOrMany::into_vec).unwrap_or_default()
            } else {
                a.cidr
            };
            let cidrs = prefixes(cidrs, "client")?;
            let listen_port = a.listen_port.or(f.listen_port).unwrap_or(9999);
            let or_file = |flag: Vec<String>, key: Option<OneOrMany>| {
                if flag.is_empty() {
                    key.map(OneOrMany::into_vec).unwrap_or_default()
                } else {
                    flag
                }
            };
            let interfaces = or_file(a.lan_interfaces, f.lan_interfaces);
            let sources = or_file(a.lan_sources, f.lan_sources)
                .iter()
                .map(|p| parse_prefix(p.trim()))
                .collect::<Result<Vec<_>>>()
                .context("lan_sources")?;
            let lan = (!interfaces.is_empty() || !sources.is_empty()).then_some(LanScope {
                interfaces,
                sources,
            });
            let endpoint = endpoint(&server, &r.tls)?;
            let s = client::Settings {
                server,
                cidrs,
                lan,
                listen_port,
                idle: r.idle,
                grace: Duration::from_secs(30),
            };
            runtime()?.block_on(async move {
                let m = Arc::new(Metrics::default());
                let shown = s.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>();
                let server = s.server.clone();
                observe_peer(
                    r.metrics,
                    &format!("proxy-client-{listen_port}"),
                    "client",
                    &m,
                    move || serde_json::json!({"server": server, "cidrs": shown, "listen_port": listen_port}),
                )
                .await?;
                client::run(s, endpoint, m).await
            })
        }
    }
}

/// `culvert proxy status`: asks a role's `/status` and prints it.
fn status(a: &StatusArgs) -> Result<()> {
    use std::io::{Read, Write};
    let addr = match (&a.metrics, a.role.as_str()) {
        (Some(m), _) => m.clone(),
        (None, "server") => "127.0.0.1:9181".into(),
        (None, "connector") => "127.0.0.1:9182".into(),
        (None, "client") => "127.0.0.1:9183".into(),
        (None, other) => bail!("status of {other:?}: use server, connector or client"),
    };
    let mut conn = std::net::TcpStream::connect(&addr).with_context(|| {
        format!(
            "nothing answers at {addr}: is the proxy {} running (with metrics on)?",
            a.role
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"GET /status HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body).context("the status answer is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_tools_config_files_load() {
        let dir = std::env::temp_dir().join(format!("culvert-proxy-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = dir.join("proxy.yaml");
        std::fs::write(
            &yaml,
            "server_addr: \"localhost:8081\"\nproxy_id: \"proxy-1\"\nmanaged_cidr: \"192.168.1.0/24\"\n\
             tls:\n  cert_file: \"c.pem\"\n  key_file: \"k.pem\"\n  ca_file: \"ca.pem\"\n  insecure: false\n\
             log:\n  level: \"info\"\n  format: \"json\"\n  output: \"stdout\"\n",
        )
        .unwrap();
        let f = File::load(Some(&yaml)).unwrap();
        assert_eq!(f.server.as_deref(), Some("localhost:8081"));
        assert_eq!(f.id.as_deref(), Some("proxy-1"));
        assert_eq!(f.cidr.unwrap().into_vec(), vec!["192.168.1.0/24"]);
        assert_eq!(f.tls.ca_file, Some(PathBuf::from("ca.pem")));
        let json = dir.join("client.json");
        std::fs::write(&json, r#"{"server_addr":"s:8081","listen_port":9999,"target_cidr":"100.64.0.0/10","client_id":""}"#).unwrap();
        let f = File::load(Some(&json)).unwrap();
        assert_eq!(f.listen_port, Some(9999));
        let toml = dir.join("server.toml");
        std::fs::write(
            &toml,
            "listen_addr = \":8081\"\n[tls]\ncert_file = \"s.pem\"\n",
        )
        .unwrap();
        let f = File::load(Some(&toml)).unwrap();
        assert_eq!(
            listen_addr(f.listen.as_deref().unwrap()).unwrap(),
            "[::]:8081".parse().unwrap()
        );
        std::fs::write(
            &toml,
            "[allow_connectors]\nproxy-1 = [\"100.64.1.0/24\", \"fd64:1::/64\"]\nproxy-2 = \"100.64.2.0/24\"\n",
        )
        .unwrap();
        let f = File::load(Some(&toml)).unwrap();
        let a = f.allow_connectors.unwrap();
        assert_eq!(a["proxy-1"].clone().into_vec().len(), 2);
        assert_eq!(a["proxy-2"].clone().into_vec(), ["100.64.2.0/24"]);
        let s = scopes(&[
            "proxy-1=100.64.1.0/24,fd64:1::/64".into(),
            "proxy-2=100.64.2.0/24".into(),
        ])
        .unwrap();
        assert_eq!(s["proxy-1"].len(), 2);
        assert!(scopes(&["100.64.1.0/24".into()]).is_err(), "no id");
        assert!(scopes(&["a=nonsense".into()]).is_err(), "not a prefix");
        assert!(
            scopes(&["Proxy_1=100.64.1.0/24".into()]).is_err(),
            "not a connector id"
        );
        std::fs::write(&toml, "listen = \":8081\"\n[tls]\ninsecure = true\n").unwrap();
        assert!(File::load(Some(&toml)).is_err(), "insecure is refused");
        std::fs::write(&toml, "lisen = \":8081\"\n").unwrap();
        assert!(
            File::load(Some(&toml)).is_err(),
            "a misspelt key is an error"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
