//! culvert's nftables table: the two rules FakeTCP needs, installed and removed atomically.
//!
//! ```text
//! table inet culvert_<instance> {
//!   chain pre { type filter hook prerouting priority raw - 10;
//!               fib daddr type local iifname != <tun> <our TCP flows> drop }
//!   chain out { type filter hook output priority raw - 10;
//!               oifname != <tun> <our TCP flows> notrack }
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
//!
//! The table is replaced in one transaction at start (so a table left by a crash is
//! replaced) and deleted at exit.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

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
    /// `tun`.
    pub fn install(instance: &str, tun: &str, flows: FlowMatch) -> Result<Self> {
        let name = Self::name_for(instance);
        let (pre, out) = rules(flows);
        let tun = quote(tun);
        let pre = format!("fib daddr type local iifname != {tun} {pre}");
        let out = format!("oifname != {tun} {out}");
        let script = format!(
            "table inet {name}\ndelete table inet {name}\ntable inet {name} {{\n\
             \tchain pre {{ type filter hook prerouting priority raw - 10; policy accept;\n\t\t{pre} counter drop comment \"culvert FakeTCP: read by the daemon\"\n\t}}\n\
             \tchain out {{ type filter hook output priority raw - 10; policy accept;\n\t\t{out} counter notrack comment \"culvert FakeTCP: untracked\"\n\t}}\n}}\n"
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

fn nft(script: &str) -> std::io::Result<()> {
    let Some(bin) = NFT_PATHS.iter().find(|p| std::path::Path::new(p).exists()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the nft command is missing: install nftables (FakeTCP needs it) or use --transport udp",
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
