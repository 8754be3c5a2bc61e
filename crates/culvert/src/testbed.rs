//! Throwaway network-namespace labs, for `culvert demo` and the end-to-end tests.
//!
//! ```text
//!   host 0 (server)  198.18.1.2 --+
//!   host 1           198.18.2.2 --+-- router (198.18.N.1, forwarding) --
//!   host 2           198.18.3.2 --+
//! ```
//!
//! Every object belongs to a [`Lab`]; dropping it stops the daemons it started, kills any
//! process left in its namespaces and deletes them, also when a test panics.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use culvert_sys::sockopt::{Buffers, grow_buffers};
use sha2::{Digest, Sha256};

/// A lab: a router namespace and host namespaces, the daemons running in them, and a
/// scratch directory for logs and state.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    bin: PathBuf,
    dir: PathBuf,
    hosts: usize,
    sites: Vec<Site>,
    daemons: Vec<Option<Daemon>>,
    logs: Vec<PathBuf>,
}

/// Where a lab host sits (see [`Lab::with_sites`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// On the router, with a public address.
    Public,
    /// Behind NAT router `nat` (hosts with the same id share its LAN).
    Nat {
        /// The NAT's id (1..=9).
        nat: u8,
        /// A new port per flow instead of keeping the source port.
        symmetric: bool,
    },
}

/// A daemon started in a lab host.
#[derive(Debug)]
struct Daemon {
    child: Child,
}

/// The outcome of a hashed bulk transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// SHA-256 of what the sender wrote.
    pub sent: String,
    /// SHA-256 of what the receiver read.
    pub received: String,
    /// Bytes the receiver read.
    pub bytes: u64,
    /// Seconds from connect to the last byte read.
    pub secs: f64,
    /// The longest time the receiver waited for the next bytes, in seconds.
    pub max_stall: f64,
}

impl Transfer {
    /// Megabits per second.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs.max(1e-9) / 1e6
    }
}

/// What became of a paced UDP stream ([`Lab::udp_stream`]).
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    /// Datagrams sent.
    pub sent: u32,
    /// Datagrams the sending host's kernel dropped from a full TUN queue before the
    /// daemon read them: the host was starved of CPU (a shared test machine), not the
    /// tunnel lossy.
    pub not_read: u32,
    /// Distinct datagrams that arrived.
    pub received: u32,
}

impl Stream {
    /// The share of the datagrams culvert took in that never arrived.
    pub fn tunnel_loss(&self) -> f64 {
        let taken = self.sent.saturating_sub(self.not_read).max(1);
        1.0 - f64::from(self.received.min(taken)) / f64::from(taken)
    }
}

/// What a lab needs that the host lacks, with what to install: `ip` (iproute2) for the
/// namespaces, `nft` (nftables) for the NAT routers and filters. `None`: nothing.
pub fn missing_tools() -> Option<String> {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .any(|p| Path::new(p).exists());
    match (ip, culvert_sys::nft::available()) {
        (true, true) => None,
        (false, _) => Some(
            "the ip command: install iproute2 (Debian, Ubuntu: apt install iproute2; Fedora: \
             dnf install iproute)"
                .to_owned(),
        ),
        (true, false) => Some(format!(
            "the nft command for its NAT routers: {}",
            culvert_sys::nft::INSTALL_HINT
        )),
    }
}

impl Lab {
    /// Builds the star topology with `hosts` hosts; names start with `prefix`.
    pub fn new(prefix: &str, hosts: usize, bin: &Path) -> io::Result<Self> {
        Self::with_sites(prefix, &vec![Site::Public; hosts], bin)
    }

    /// Builds the star with one host per entry of `sites`: on the router directly, or
    /// behind a NAT router of its own (or shared with other hosts of the same NAT id).
    ///
    /// ```text
    ///   host i (public)   198.18.(i+1).2 ---------------------------- router
    ///   host i (NAT n)    192.168.n.(10+i) -- lan | NAT n | wan 198.18.(100+n).2 -- router
    /// ```
    ///
    /// A NAT masquerades what leaves its `wan` (Linux conntrack: the source port is kept
    /// when free, and only answers to a flow come back in), or, when `symmetric`, picks a
    /// random port per flow. It does not hairpin.
    pub fn with_sites(prefix: &str, sites: &[Site], bin: &Path) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-lab"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let lab = Self {
            prefix: prefix.to_owned(),
            bin: bin.to_owned(),
            dir,
            hosts: sites.len(),
            sites: sites.to_vec(),
            daemons: Vec::new(),
            logs: Vec::new(),
        };
        lab.cleanup_namespaces();
        let router = lab.router();
        ip(&["netns", "add", &router])?;
        ip(&["-n", &router, "link", "set", "lo", "up"])?;
        sh(&format!(
            "ip netns exec {router} sysctl -qw net.ipv4.ip_forward=1"
        ))?;
        for (i, site) in sites.iter().enumerate() {
            let ns = lab.ns(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            match *site {
                Site::Public => {
                    let n = i + 1;
                    lab.link(&ns, "eth0", &router, &format!("h{i}"))?;
                    lab.address(
                        &ns,
                        "eth0",
                        &format!("198.18.{n}.2/24"),
                        &format!("198.18.{n}.1"),
                    )?;
                    ip(&[
                        "-n",
                        &router,
                        "addr",
                        "add",
                        &format!("198.18.{n}.1/24"),
                        "dev",
                        &format!("h{i}"),
                    ])?;
                    ip(&["-n", &router, "link", "set", &format!("h{i}"), "up"])?;
                }
                Site::Nat { nat, symmetric } => {
                    let gw = lab.nat(nat, symmetric)?;
                    let nat_ns = lab.nat_ns(nat);
                    let port = format!("l{i}");
                    lab.link(&ns, "eth0", &nat_ns, &port)?;
                    ip(&["-n", &nat_ns, "link", "set", &port, "master", "lan", "up"])?;
                    lab.address(&ns, "eth0", &format!("{}/24", lab.ip(i)), &gw)?;
                }
            }
        }
        Ok(lab)
    }

    /// Adds a host on a LAN of its own behind host `behind`: `{subnet}.1/24` on `lan0` in
    /// `behind`, the new host `{subnet}.2/24` with its default route via `behind`. Returns
    /// the new host's index (its namespace goes with the lab).
    pub fn add_lan_host(&mut self, behind: usize, subnet: &str) -> io::Result<usize> {
        let i = self.hosts;
        let ns = self.ns(i);
        ip(&["netns", "add", &ns])?;
        self.hosts += 1;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let gw_ns = self.ns(behind);
        self.link(&ns, "eth0", &gw_ns, "lan0")?;
        ip(&[
            "-n",
            &gw_ns,
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            "lan0",
        ])?;
        ip(&["-n", &gw_ns, "link", "set", "lan0", "up"])?;
        self.address(
            &ns,
            "eth0",
            &format!("{subnet}.2/24"),
            &format!("{subnet}.1"),
        )?;
        Ok(i)
    }

    /// A veth pair `a_name` in `a` and `b_name` in `b`.
    fn link(&self, a: &str, a_name: &str, b: &str, b_name: &str) -> io::Result<()> {
        ip(&[
            "link", "add", a_name, "netns", a, "type", "veth", "peer", "name", b_name, "netns", b,
        ])
    }

    /// Gives `dev` in `ns` an address, brings it up, and routes everything via `gw`.
    fn address(&self, ns: &str, dev: &str, addr: &str, gw: &str) -> io::Result<()> {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", gw])
    }

    /// NAT router `n` (made on first use); returns its LAN gateway address.
    fn nat(&self, n: u8, symmetric: bool) -> io::Result<String> {
        let ns = self.nat_ns(n);
        let gw = format!("192.168.{n}.1");
        if Path::new("/run/netns").join(&ns).exists() {
            return Ok(gw);
        }
        let router = self.router();
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        self.link(&ns, "wan", &router, &format!("w{n}"))?;
        self.address(
            &ns,
            "wan",
            &format!("198.18.{}.2/24", 100 + u32::from(n)),
            &format!("198.18.{}.1", 100 + u32::from(n)),
        )?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("198.18.{}.1/24", 100 + u32::from(n)),
            "dev",
            &format!("w{n}"),
        ])?;
        ip(&["-n", &router, "link", "set", &format!("w{n}"), "up"])?;
        ip(&["-n", &ns, "link", "add", "lan", "type", "bridge"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{gw}/24"), "dev", "lan"])?;
        ip(&["-n", &ns, "link", "set", "lan", "up"])?;
        sh(&format!(
            "ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1"
        ))?;
        let random = if symmetric { "fully-random" } else { "" };
        nft_in(
            &ns,
            &format!(
                "table ip lab_nat {{\n  chain post {{ type nat hook postrouting priority srcnat; oifname \"wan\" masquerade {random}; }}\n  \
                 chain forward {{ type filter hook forward priority filter; policy drop;\n    ct state established,related accept; iifname \"lan\" accept; }}\n}}\n"
            ),
        )?;
        Ok(gw)
    }

    /// NAT router `n`'s namespace name.
    pub fn nat_ns(&self, n: u8) -> String {
        format!("{}-nat{n}", self.prefix)
    }

    /// Loads an nftables script in NAT router `n`.
    pub fn nat_nft(&self, n: u8, script: &str) -> io::Result<()> {
        nft_in(&self.nat_ns(n), script)
    }

    /// The router's namespace name.
    pub fn router(&self) -> String {
        format!("{}-r", self.prefix)
    }

    /// Host `i`'s namespace name.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// Host `i`'s underlay address (its private one, behind a NAT).
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        let host = u8::try_from(i).expect("few hosts");
        match self.sites.get(i) {
            Some(Site::Nat { nat, .. }) => Ipv4Addr::new(192, 168, *nat, 10 + host),
            _ => Ipv4Addr::new(198, 18, host + 1, 2),
        }
    }

    /// The scratch directory (logs, state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `culvert ARGS` in host `host`; returns a handle for [`Lab::stop`] and
    /// [`Lab::log`]. For `server` and `client`, `--state-dir` is added, per daemon,
    /// unless given.
    pub fn spawn(&mut self, host: usize, args: &[&str]) -> io::Result<usize> {
        self.spawn_after(host, None, args)
    }

    /// [`Lab::spawn`] in a mount namespace of its own, after `setup` (a shell script) ran
    /// in it: a test can put stand-ins for system tools in place without touching the
    /// host's files.
    pub fn spawn_after(
        &mut self,
        host: usize,
        setup: Option<&str>,
        args: &[&str],
    ) -> io::Result<usize> {
        self.spawn_wrapped(host, setup, &[], args)
    }

    /// [`Lab::spawn_after`], with `wrapper` (a command and its arguments, `setpriv …`
    /// say) run in the namespace with the daemon's command line as its own.
    pub fn spawn_wrapped(
        &mut self,
        host: usize,
        setup: Option<&str>,
        wrapper: &[&str],
        args: &[&str],
    ) -> io::Result<usize> {
        let id = self.daemons.len();
        let log = self.dir.join(format!("daemon-{id}-host{host}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = match setup {
            None => Command::new("ip"),
            Some(script) => {
                let mut c = Command::new("unshare");
                c.args([
                    "-m",
                    "sh",
                    "-c",
                    &format!("{script}\nexec \"$0\" \"$@\""),
                    "ip",
                ]);
                c
            }
        };
        cmd.args(["netns", "exec", &self.ns(host)])
            .args(wrapper)
            .arg(&self.bin)
            .args(args);
        // The overlay daemons keep state (also when started with lightweight-tunnel's
        // flags); `culvert proxy` has none.
        if matches!(args.first(), Some(&("server" | "client" | "-m" | "-c")))
            && !args.contains(&"--state-dir")
        {
            cmd.arg("--state-dir")
                .arg(self.dir.join(format!("state-host{host}")));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.daemons.push(Some(Daemon { child }));
        self.logs.push(log);
        Ok(id)
    }

    /// Stops daemon `id` with SIGTERM (or SIGKILL when `kill`), and waits for it.
    pub fn stop(&mut self, id: usize, kill: bool) {
        if let Some(d) = self.daemons.get_mut(id).and_then(Option::take) {
            d.stop(kill);
        }
    }

    /// Whether daemon `id` is still running.
    pub fn running(&mut self, id: usize) -> bool {
        self.daemons
            .get_mut(id)
            .and_then(Option::as_mut)
            .is_some_and(|d| d.child.try_wait().ok().flatten().is_none())
    }

    /// The log of daemon `id` so far.
    pub fn log(&self, id: usize) -> String {
        self.logs
            .get(id)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Every daemon log, for a failing test's output.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.logs {
            out += &format!(
                "==== {}\n{}\n",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            );
        }
        out
    }

    /// Runs a shell command inside host `host` (or the router with `None`).
    pub fn sh(&self, host: Option<usize>, script: &str) -> io::Result<String> {
        let ns = host.map_or_else(|| self.router(), |h| self.ns(h));
        sh(&format!(
            "ip netns exec {ns} sh -c '{}'",
            script.replace('\'', "'\\''")
        ))
    }

    /// Loads an nftables script on the router.
    pub fn router_nft(&self, script: &str) -> io::Result<()> {
        nft_in(&self.router(), script)
    }

    /// `culvert status --json` in host `host`.
    pub fn status(&self, host: usize) -> io::Result<serde_json::Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .arg(&self.bin)
            .args(["status", "--json"])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(io::Error::other)
    }

    /// One ICMP echo from host `from` to `dst`.
    pub fn ping(&self, from: usize, dst: IpAddr, timeout: Duration) -> Option<Duration> {
        in_ns(&self.ns(from), move || {
            culvert_sys::icmp::echo(dst, 0x4356, 1, timeout)
                .ok()
                .flatten()
        })
    }

    /// Pings until one answer comes or `timeout` passes.
    pub fn ping_until(&self, from: usize, dst: IpAddr, timeout: Duration) -> Option<Duration> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(rtt) = self.ping(from, dst, Duration::from_millis(500)) {
                return Some(rtt);
            }
        }
        None
    }

    /// Sends `bytes` of pseudo-random data over TCP from host `from` to a listener in host
    /// `to` bound at `to_ip`, hashing both ends. `during` runs (in the test's thread) while
    /// the transfer is in progress, after the first megabyte has arrived.
    pub fn transfer(
        &self,
        from: usize,
        to: usize,
        to_ip: IpAddr,
        bytes: u64,
        during: impl FnOnce(),
    ) -> io::Result<Transfer> {
        let (tx_ns, rx_ns) = (self.ns(from), self.ns(to));
        let port = 5201 + u16::try_from(from * 16 + to).unwrap_or(0);
        let listener = in_ns(&rx_ns, move || {
            TcpListener::bind(SocketAddr::new(to_ip, port))
        })?;
        let (progress_tx, progress_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let rx = s.spawn(move || -> io::Result<(String, u64, f64, f64)> {
                let (mut c, _) = listener.accept()?;
                c.set_read_timeout(Some(Duration::from_secs(60)))?;
                let start = Instant::now();
                let mut h = Sha256::new();
                let mut n = 0u64;
                let mut buf = vec![0u8; 1 << 16];
                let mut signalled = false;
                let mut last = Instant::now();
                let mut max_stall = 0f64;
                loop {
                    let k = c.read(&mut buf)?;
                    max_stall = max_stall.max(last.elapsed().as_secs_f64());
                    last = Instant::now();
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += k as u64;
                    if !signalled && n >= 1 << 20 {
                        signalled = true;
                        let _ = progress_tx.send(());
                    }
                }
                Ok((
                    hex(&h.finalize()),
                    n,
                    start.elapsed().as_secs_f64(),
                    max_stall,
                ))
            });
            let tx = s.spawn(move || -> io::Result<String> {
                let mut c = in_ns(&tx_ns, move || {
                    TcpStream::connect_timeout(
                        &SocketAddr::new(to_ip, port),
                        Duration::from_secs(10),
                    )
                })?;
                c.set_write_timeout(Some(Duration::from_secs(60)))?;
                let mut h = Sha256::new();
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ bytes;
                let mut buf = vec![0u8; 1 << 16];
                let mut left = bytes;
                while left > 0 {
                    for chunk in buf.chunks_mut(8) {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
                    }
                    let k = left.min(buf.len() as u64) as usize;
                    c.write_all(&buf[..k])?;
                    h.update(&buf[..k]);
                    left -= k as u64;
                }
                c.shutdown(std::net::Shutdown::Write)?;
                Ok(hex(&h.finalize()))
            });
            if progress_rx.recv_timeout(Duration::from_secs(30)).is_ok() {
                during();
            }
            let sent = tx
                .join()
                .map_err(|_| io::Error::other("sender panicked"))??;
            let (received, bytes, secs, max_stall) = rx
                .join()
                .map_err(|_| io::Error::other("receiver panicked"))??;
            Ok(Transfer {
                sent,
                received,
                bytes,
                secs,
                max_stall,
            })
        })
    }

    /// Sends `count` numbered UDP datagrams of `size` bytes from host `from` to `to_ip` on
    /// host `to`, paced at `rate` per second, and says how many distinct ones arrived.
    pub fn udp_stream(
        &self,
        from: usize,
        to: usize,
        to_ip: IpAddr,
        count: u32,
        size: usize,
        rate: u32,
    ) -> io::Result<Stream> {
        let tun_drops = || -> io::Result<u64> {
            let out = self.sh(
                Some(from),
                "for d in /sys/class/net/*; do [ -e $d/tun_flags ] && cat $d/statistics/tx_dropped; done; true",
            )?;
            Ok(out
                .split_whitespace()
                .filter_map(|n| n.parse::<u64>().ok())
                .sum())
        };
        let dropped_before = tun_drops()?;
        let port = 6201 + u16::try_from(from * 16 + to).unwrap_or(0);
        let rx = in_ns(&self.ns(to), || {
            UdpSocket::bind(SocketAddr::new(to_ip, port))
        })?;
        let tx = in_ns(&self.ns(from), || UdpSocket::bind("0.0.0.0:0"))?;
        rx.set_read_timeout(Some(Duration::from_millis(1500)))?;
        // The tunnel's loss is measured, not this reader's: a descheduled test thread
        // must not overflow a default-sized buffer.
        grow_buffers(&rx, Buffers::Receive);
        std::thread::scope(|s| {
            let receiver = s.spawn(|| {
                let mut seen = vec![false; count as usize];
                let mut buf = vec![0u8; 1 << 16];
                // Until the sender is done and nothing more has come for a while.
                while let Ok(n) = rx.recv(&mut buf) {
                    if let Some(seq) = buf[..n].get(..4) {
                        let seq = u32::from_be_bytes(seq.try_into().expect("4 bytes"));
                        if let Some(slot) = seen.get_mut(seq as usize) {
                            *slot = true;
                        }
                    }
                }
                seen.iter().filter(|s| **s).count()
            });
            let mut packet = vec![0x5au8; size.max(4)];
            let start = Instant::now();
            for seq in 0..count {
                packet[..4].copy_from_slice(&seq.to_be_bytes());
                tx.send_to(&packet, SocketAddr::new(to_ip, port))?;
                let due = start + Duration::from_secs_f64(f64::from(seq + 1) / f64::from(rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let received = receiver
                .join()
                .map_err(|_| io::Error::other("receiver panicked"))?;
            let not_read = tun_drops()?.saturating_sub(dropped_before);
            Ok(Stream {
                sent: count,
                not_read: u32::try_from(not_read).unwrap_or(u32::MAX),
                received: u32::try_from(received).unwrap_or(u32::MAX),
            })
        })
    }

    fn cleanup_namespaces(&self) {
        let mut names = vec![self.router()];
        names.extend((0..self.hosts).map(|i| self.ns(i)));
        names.extend((1..=9).map(|n| self.nat_ns(n)));
        for n in names
            .iter()
            .filter(|n| Path::new("/run/netns").join(n).exists())
        {
            kill_and_delete(n);
        }
        for n in &names {
            // Control sockets a killed daemon left.
            let _ = std::fs::remove_dir_all(culvert_sys::control::dir(n));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in self.daemons.iter_mut().filter_map(Option::take) {
            d.stop(false);
        }
        self.cleanup_namespaces();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Daemon {
    fn stop(mut self, kill: bool) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([if kill { "-KILL" } else { "-TERM" }, &pid])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes every namespace whose name starts with `prefix` (killing what runs in it), for
/// an interrupted run that could not unwind.
pub fn remove_labs(prefix: &str) {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            kill_and_delete(&name);
        }
    }
}

fn kill_and_delete(ns: &str) {
    if let Ok(pids) = sh(&format!("ip netns pids {ns}")) {
        for p in pids.split_whitespace() {
            let _ = sh(&format!("kill -9 {p}"));
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

impl Lab {
    /// The process id of daemon `id` (`ip netns exec` execs the binary in place).
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.daemons.get(id)?.as_ref().map(|d| d.child.id())
    }
}

/// `/proc/PID/status` of a process, for its user, capabilities and memory.
pub fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// A field of `/proc/PID/status`, e.g. `Uid`, `CapEff`, `VmRSS`.
pub fn proc_field(pid: u32, field: &str) -> Option<String> {
    proc_status(pid).lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_owned())
    })
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// The arguments of the standard hub: host 0's UDP and FakeTCP port 9000, overlay
/// 10.0.0.1/24 and fd00::1/64, passphrase `key`; `extra` follows.
pub fn server_args<'a>(key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "server",
        "-l",
        "0.0.0.0:9000",
        "-t",
        "10.0.0.1/24",
        "-t",
        "fd00::1/64",
        "-k",
        key,
    ];
    a.extend_from_slice(extra);
    a
}

/// The PSK every node derives from `passphrase` (Argon2id: slow, derive it once).
pub fn passphrase_psk(passphrase: &str) -> culvert_core::Psk {
    crate::identity::stretch(passphrase, crate::identity::Kdf::default())
        .expect("stretching the passphrase")
}

/// 32 random bytes from the OS, to seed test generators.
pub fn random_seed() -> [u8; 32] {
    crate::identity::os_random()
}

/// A message 1 (join) that claims `victim`'s public key and `addresses` without its
/// private key — what any holder of the passphrase (`psk`) can send. Its timestamp is far
/// in the future, so no replay floor stops it.
pub fn forged_join(
    psk: &culvert_core::Psk,
    victim: &culvert_core::PublicKey,
    addresses: &[culvert_wire::addr::Prefix],
    index: u32,
) -> Vec<u8> {
    let mut rng = culvert_core::rng::Rng::from_seed(random_seed());
    culvert_core::forge::join_claiming(
        &mut rng,
        victim,
        psk,
        index,
        addresses,
        u64::MAX - u64::from(index),
    )
}

/// Sends UDP datagrams with any source address (a spoofer), from the network namespace of
/// the thread that made it. Needs CAP_NET_RAW.
#[derive(Debug)]
pub struct Spoofer(culvert_sys::raw::RawSender);

impl Spoofer {
    /// A raw IPv4 socket in the calling thread's namespace.
    pub fn new() -> io::Result<Self> {
        culvert_sys::raw::RawSender::open(true, false)
            .map(Self)
            .map_err(io::Error::other)
    }

    /// Sends `payload` from `from` to `to`.
    pub fn send(
        &self,
        from: std::net::SocketAddrV4,
        to: std::net::SocketAddrV4,
        payload: &[u8],
    ) -> io::Result<()> {
        let len = 28 + payload.len();
        let len16 = u16::try_from(len).map_err(io::Error::other)?;
        let mut pkt = vec![0u8; len];
        pkt[0] = 0x45;
        pkt[2..4].copy_from_slice(&len16.to_be_bytes());
        pkt[8] = 64;
        pkt[9] = 17;
        pkt[12..16].copy_from_slice(&from.ip().octets());
        pkt[16..20].copy_from_slice(&to.ip().octets());
        let sum = culvert_wire::checksum::finish(culvert_wire::checksum::sum(0, &pkt[..20]));
        pkt[10..12].copy_from_slice(&sum.to_be_bytes());
        pkt[20..22].copy_from_slice(&from.port().to_be_bytes());
        pkt[22..24].copy_from_slice(&to.port().to_be_bytes());
        pkt[24..26].copy_from_slice(&(len16 - 20).to_be_bytes());
        pkt[28..].copy_from_slice(payload);
        // A zero UDP checksum means "none" over IPv4.
        self.0.send_batch(&[(IpAddr::V4(*to.ip()), &pkt)])?;
        Ok(())
    }
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            culvert_sys::netns::enter(ns).expect("entering a lab namespace");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                io::Error::new(e.kind(), "the `ip` command is missing: install iproute2")
            }
            _ => e,
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Loads an nftables script in namespace `ns`.
fn nft_in(ns: &str, script: &str) -> io::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn sh(script: &str) -> io::Result<String> {
    let out = Command::new("sh").args(["-c", script]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
