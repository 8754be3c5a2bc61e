//! culvert's nftables table: one per instance, holding every rule the instance needs,
//! built from a [`RuleSet`] and installed, replaced and removed atomically.
//!
//! ```text
//! table inet culvert_<instance> {
//!   # FakeTCP
//!   chain pre { type filter hook prerouting priority raw - 10;
//!               fib daddr type local iifname != <tun> <our TCP flows> drop }
//!   chain out { type filter hook output priority raw - 10;
//!               oifname != <tun> <our TCP flows> notrack }
//!   # gateways: a server as an exit, a node routing for subnets behind it
//!   chain nat { type nat hook postrouting priority srcnat;
//!               oifname <uplink> ip saddr <overlay> masquerade
//!               ip saddr <overlay> ip daddr <advertised subnet> masquerade }   # with nat
//!   chain confine { type filter hook forward priority filter;
//!               iifname <uplink or LAN> oifname != <tun> drop     # where we enabled forwarding
//!               iifname <tun> oifname <tun> drop }                # a hub with client isolation
//!   chain mss { type filter hook forward priority mangle;
//!               iifname|oifname <tun> tcp SYN: maxseg size set rt mtu }
//!   # the L4 proxy's client
//!   chain intercept_out { type nat hook output priority dstnat;
//!               ip daddr <proxy server> tcp dport <its port> return
//!               ip[6] daddr { <prefixes> } meta l4proto tcp redirect to :<listener> }
//!   chain intercept_pre { type nat hook prerouting priority dstnat;   # a named LAN only
//!               iifname <LAN> ip saddr <LAN sources> ... (the same) }
//! }
//! ```
//!
//! * `pre` drops our flows' incoming segments after the packet socket has copied them and
//!   before the kernel's TCP stack sees them: no RST ever answers them, and the host's
//!   conntrack and firewall never see them. Only segments *to this host* match, and none
//!   from the overlay's TUN device: TCP the host forwards (a router, a gateway) or that
//!   overlay nodes send to the same port passes untouched.
//! * `out` exempts our raw segments from the host's conntrack (and NAT), which would
//!   otherwise track half a connection and might mark it invalid; traffic into the TUN
//!   is left alone.
//! * `nat` gives the overlay's traffic to the Internet the uplink's address, and (with
//!   `nat` on a subnet router) its traffic into an advertised subnet the router's LAN
//!   address. `confine` keeps forwarding on an interface that culvert turned on (an exit's
//!   uplink, a subnet router's LAN, for the answers) from forwarding anything but the
//!   overlay's traffic, and a hub under isolation from forwarding between clients through
//!   its own routing table. An accept here cannot override another table's `policy drop`
//!   (nftables runs every base chain): see the README for ufw, firewalld and Docker.
//! * `mss` lowers the MSS of TCP SYNs forwarded through the tunnel to what the route's MTU
//!   allows (it never raises one), so hosts behind a gateway never send segments too
//!   large for the overlay.
//!
//! * `intercept_*` hand TCP connections to the chosen prefixes — from local programs
//!   (output) and, only when the operator names it, from a LAN routed through this host
//!   (prerouting, limited to its interfaces and sources) — to the proxy's local listener,
//!   which reads the original destination with `SO_ORIGINAL_DST`. The proxy's own
//!   connections to its server are never redirected.
//!
//! The table is replaced in one transaction at start (so a table left by a crash is
//! replaced) and deleted at exit.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use culvert_wire::addr::Prefix;

use crate::{Error, Result};

/// Which segments are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowMatch {
    /// A server: TCP to `port` on `addr` (any local address when unspecified).
    Server {
        /// The listen address.
        addr: IpAddr,
        /// The listen port.
        port: u16,
    },
    /// A client: TCP with the server at `server`.
    Client {
        /// The server's address and port.
        server: SocketAddr,
    },
}

/// Overlay traffic leaving with this host's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// Only what leaves by this interface (an exit's uplink).
    pub oif: Option<String>,
    /// The overlay prefix whose traffic is masqueraded.
    pub src: Prefix,
    /// Only traffic to this subnet (an advertised route).
    pub dst: Option<Prefix>,
}

/// TCP to chosen prefixes redirected to a local listener (the L4 proxy's client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intercept {
    /// Destinations whose TCP connections are redirected.
    pub prefixes: Vec<Prefix>,
    /// The local listener's port.
    pub port: u16,
    /// Connections to these are never redirected (the proxy's server).
    pub except: Vec<SocketAddr>,
    /// Which hosts of a LAN routed through this one are intercepted too; `None`: local
    /// programs only. Without it, a neighbour that routes a prefix here would be proxied
    /// with this host's certificate even with forwarding off.
    pub lan: Option<LanScope>,
}

/// The part of a LAN whose connections are intercepted: arriving on one of `interfaces`
/// and/or from one of `sources` (both given: both must hold).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LanScope {
    /// Interfaces the LAN's connections arrive on.
    pub interfaces: Vec<String>,
    /// Source prefixes of the LAN's hosts.
    pub sources: Vec<Prefix>,
}

/// What an instance's table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// FakeTCP's flows.
    pub faketcp: Option<FlowMatch>,
    /// Masquerading (an exit's, a subnet router's with `nat`).
    pub masquerade: Vec<Masquerade>,
    /// Interfaces that forward only into the TUN: culvert enabled forwarding on them.
    pub confine: Vec<String>,
    /// Forward nothing from the TUN back into it (a hub with client isolation).
    pub isolate: bool,
    /// Clamp the MSS of TCP SYNs forwarded through the TUN.
    pub clamp_mss: bool,
    /// Redirect TCP to a transparent proxy's listener.
    pub intercept: Option<Intercept>,
}

impl RuleSet {
    /// Whether there is anything to install.
    pub fn is_empty(&self) -> bool {
        self.faketcp.is_none()
            && self.masquerade.is_empty()
            && self.confine.is_empty()
            && !self.isolate
            && !self.clamp_mss
            && self.intercept.is_none()
    }

    /// The table's body (chains and rules) for TUN device `tun`.
    fn chains(&self, tun: &str) -> String {
        let tun = quote(tun);
        let mut out = String::new();
        if let Some(flows) = self.faketcp {
            let (pre, local) = rules(flows);
            out += &format!(
                "\tchain pre {{ type filter hook prerouting priority raw - 10; policy accept;\n\t\t\
                 fib daddr type local iifname != {tun} {pre} counter drop comment \"culvert FakeTCP: read by the daemon\"\n\t}}\n\
                 \tchain out {{ type filter hook output priority raw - 10; policy accept;\n\t\t\
                 oifname != {tun} {local} counter notrack comment \"culvert FakeTCP: untracked\"\n\t}}\n"
            );
        }
        if !self.masquerade.is_empty() {
            out += "\tchain nat { type nat hook postrouting priority srcnat; policy accept;\n";
            for m in &self.masquerade {
                let fam = if m.src.addr().is_ipv4() { "ip" } else { "ip6" };
                let oif = m.oif.as_deref().map(|o| format!("oifname {} ", quote(o)));
                let dst = m.dst.map(|d| format!(" {fam} daddr {}", d.network()));
                out += &format!(
                    "\t\t{}{fam} saddr {}{} counter masquerade comment \"culvert {}\"\n",
                    oif.unwrap_or_default(),
                    m.src.network(),
                    dst.as_deref().unwrap_or_default(),
                    if m.dst.is_some() {
                        "subnet router"
                    } else {
                        "exit"
                    },
                );
            }
            out += "\t}\n";
        }
        if !self.confine.is_empty() || self.isolate {
            out += "\tchain confine { type filter hook forward priority filter; policy accept;\n";
            for i in &self.confine {
                out += &format!(
                    "\t\tiifname {} oifname != {tun} counter drop comment \"culvert: forwards only for the overlay\"\n",
                    quote(i)
                );
            }
            if self.isolate {
                out += &format!(
                    "\t\tiifname {tun} oifname {tun} counter drop comment \"culvert: client isolation\"\n"
                );
            }
            out += "\t}\n";
        }
        if self.clamp_mss {
            out += &format!(
                "\tchain mss {{ type filter hook forward priority mangle; policy accept;\n\t\t\
                 iifname {tun} tcp flags syn tcp option maxseg size set rt mtu\n\t\t\
                 oifname {tun} tcp flags syn tcp option maxseg size set rt mtu\n\t}}\n"
            );
        }
        if let Some(i) = &self.intercept {
            out += &i.chains();
        }
        out
    }
}

impl Intercept {
    fn chains(&self) -> String {
        let mut out = format!(
            "\tchain intercept_out {{ type nat hook output priority -100; policy accept;\n{}\t}}\n",
            self.rules("")
        );
        if let Some(lan) = &self.lan {
            let mut scope = String::new();
            if !lan.interfaces.is_empty() {
                let names: Vec<String> = lan.interfaces.iter().map(|i| quote(i)).collect();
                scope += &format!("iifname {{ {} }} ", names.join(", "));
            }
            let body: String = [("ip", true), ("ip6", false)]
                .iter()
                .filter_map(|(fam, v4)| {
                    let sources: Vec<String> = lan
                        .sources
                        .iter()
                        .filter(|p| p.addr().is_ipv4() == *v4)
                        .map(|p| p.network().to_string())
                        .collect();
                    match (lan.sources.is_empty(), sources.is_empty()) {
                        (true, _) => Some(self.rules_of(fam, *v4, &scope)),
                        (false, true) => None,
                        (false, false) => Some(self.rules_of(
                            fam,
                            *v4,
                            &format!("{scope}{fam} saddr {{ {} }} ", sources.join(", ")),
                        )),
                    }
                })
                .collect();
            out += &format!(
                "\tchain intercept_pre {{ type nat hook prerouting priority -100; policy accept;\n{body}\t}}\n"
            );
        }
        out
    }

    /// The exceptions and redirects of both families, each rule starting with `scope`.
    fn rules(&self, scope: &str) -> String {
        self.rules_of("ip", true, scope) + &self.rules_of("ip6", false, scope)
    }

    /// The exceptions and the redirect of one family.
    fn rules_of(&self, fam: &str, v4: bool, scope: &str) -> String {
        let mut body = String::new();
        for e in self.except.iter().filter(|e| e.is_ipv4() == v4) {
            body += &format!(
                "\t\t{scope}{fam} daddr {} tcp dport {} return comment \"culvert proxy: its server\"\n",
                e.ip(),
                e.port()
            );
        }
        let set: Vec<String> = self
            .prefixes
            .iter()
            .filter(|p| p.addr().is_ipv4() == v4)
            .map(|p| p.network().to_string())
            .collect();
        if !set.is_empty() {
            body += &format!(
                "\t\t{scope}{fam} daddr {{ {} }} meta l4proto tcp counter redirect to :{} comment \"culvert proxy\"\n",
                set.join(", "),
                self.port
            );
        }
        body
    }
}

/// An installed table; dropping it deletes the table.
#[derive(Debug)]
pub struct Table {
    name: String,
}

impl Table {
    /// The table name for an instance.
    pub fn name_for(instance: &str) -> String {
        let clean: String = instance
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("culvert_{clean}")
    }

    /// Installs (or atomically replaces) the table of `instance`, whose TUN device is
    /// `tun`, with `rules`.
    pub fn install(instance: &str, tun: &str, rules: &RuleSet) -> Result<Self> {
        let name = Self::name_for(instance);
        let script = format!(
            "table inet {name}\ndelete table inet {name}\ntable inet {name} {{\n{}}}\n",
            rules.chains(tun)
        );
        nft(&script).map_err(|e| Error::io(format!("installing nftables table {name}"), e))?;
        Ok(Self { name })
    }

    /// Deletes a table an earlier run of `instance` may have left; no error if absent.
    pub fn remove_stale(instance: &str) {
        let name = Self::name_for(instance);
        let _ = nft(&format!("table inet {name}\ndelete table inet {name}\n"));
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table inet {}\n", self.name)) {
            eprintln!("culvert: removing nftables table {}: {e}", self.name);
        }
    }
}

/// An interface name as an nftables string (names are 1-15 of `[A-Za-z0-9_.-]`, checked
/// by the config; anything else is dropped rather than quoted).
fn quote(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    format!("\"{clean}\"")
}

fn rules(flows: FlowMatch) -> (String, String) {
    let fam = |ip: IpAddr| if ip.is_ipv4() { "ip" } else { "ip6" };
    match flows {
        FlowMatch::Server { addr, port } if addr.is_unspecified() => {
            (format!("tcp dport {port}"), format!("tcp sport {port}"))
        }
        FlowMatch::Server { addr, port } => (
            format!("{} daddr {addr} tcp dport {port}", fam(addr)),
            format!("{} saddr {addr} tcp sport {port}", fam(addr)),
        ),
        FlowMatch::Client { server } => {
            let (ip, port) = (server.ip(), server.port());
            (
                format!("{} saddr {ip} tcp sport {port}", fam(ip)),
                format!("{} daddr {ip} tcp dport {port}", fam(ip)),
            )
        }
    }
}

/// Where `nft` may be: run by absolute path, never looked up in `PATH` (which a caller
/// could point at a program of their own).
const NFT_PATHS: [&str; 4] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

/// What to do when the nft command is missing.
pub const INSTALL_HINT: &str = "install nftables (Debian, Ubuntu: apt install nftables; \
                                Fedora, RHEL: dnf install nftables; Alpine: apk add nftables)";

/// The nft command: an executable regular file at one of the usual places (never looked
/// up in `PATH`).
fn nft_path() -> Option<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    NFT_PATHS.iter().copied().find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether the nft command is installed (FakeTCP, gateways and the L4 proxy need it).
pub fn available() -> bool {
    nft_path().is_some()
}

fn nft(script: &str) -> std::io::Result<()> {
    let Some(bin) = nft_path() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the nft command is missing: {INSTALL_HINT}"),
        ));
    };
    let mut child = Command::new(bin)
        .env_clear()
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interception_redirects_each_family_and_spares_the_server() {
        let rules = RuleSet {
            intercept: Some(Intercept {
                prefixes: vec![
                    "100.64.0.0/10".parse().unwrap(),
                    "fd00:1::/64".parse().unwrap(),
                ],
                port: 9999,
                except: vec!["198.18.1.2:8081".parse().unwrap()],
                lan: Some(LanScope::default()),
            }),
            ..RuleSet::default()
        };
        assert!(!rules.is_empty());
        let text = rules.chains("");
        for hook in ["output", "prerouting"] {
            assert!(
                text.contains(&format!("type nat hook {hook} priority -100;")),
                "{text}"
            );
        }
        assert_eq!(
            text.matches("ip daddr 198.18.1.2 tcp dport 8081 return")
                .count(),
            2
        );
        assert_eq!(
            text.matches("ip daddr { 100.64.0.0/10 } meta l4proto tcp counter redirect to :9999")
                .count(),
            2
        );
        assert_eq!(
            text.matches("ip6 daddr { fd00:1::/64 } meta l4proto tcp counter redirect to :9999")
                .count(),
            2
        );
        // The server's exception comes before the redirects.
        assert!(text.find("return").unwrap() < text.find("redirect").unwrap());
    }

    /// Hardening finding 6: only local programs are intercepted unless a LAN is named,
    /// and then only that LAN.
    #[test]
    fn interception_of_a_lan_only_where_named() {
        let mut i = Intercept {
            prefixes: vec!["100.64.0.0/10".parse().unwrap()],
            port: 9999,
            except: Vec::new(),
            lan: None,
        };
        let text = i.chains();
        assert!(
            text.contains("hook output") && !text.contains("prerouting"),
            "{text}"
        );
        i.lan = Some(LanScope {
            interfaces: vec!["lan0".into()],
            sources: vec!["192.168.1.0/24".parse().unwrap()],
        });
        let text = i.chains();
        assert!(
            text.contains(
                "iifname { \"lan0\" } ip saddr { 192.168.1.0/24 } ip daddr { 100.64.0.0/10 } \
                 meta l4proto tcp counter redirect to :9999"
            ),
            "{text}"
        );
    }
}
