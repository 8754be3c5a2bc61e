//! culvert's nftables table: the two rules FakeTCP needs, installed and removed atomically.
//!
//! ```text
//! table inet culvert_<instance> {
//!   chain pre { type filter hook prerouting priority raw - 10;   <our TCP flows> drop }
//!   chain out { type filter hook output priority raw - 10;      <our TCP flows> notrack }
//! }
//! ```
//!
//! * `pre` drops our flows' incoming segments after the packet socket has copied them and
//!   before the kernel's TCP stack sees them: no RST ever answers them, and the host's
//!   conntrack and firewall never see them.
//! * `out` exempts our raw segments from the host's conntrack (and NAT), which would
//!   otherwise track half a connection and might mark it invalid.
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

    /// Installs (or atomically replaces) the table of `instance`.
    pub fn install(instance: &str, flows: FlowMatch) -> Result<Self> {
        let name = Self::name_for(instance);
        let (pre, out) = rules(flows);
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

fn nft(script: &str) -> std::io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => std::io::Error::new(
                e.kind(),
                "the nft command is missing: install nftables (FakeTCP needs it) or use --transport udp",
            ),
            _ => e,
        })?;
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
