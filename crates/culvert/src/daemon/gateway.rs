//! A node as a gateway: a server that is its clients' exit (`--nat`), a node routing for
//! the subnets behind it (`--advertise-route`), and a client whose traffic all goes
//! through the server (`--full-tunnel`).
//!
//! Every system change outside the instance's own nftables table and TUN device —
//! sysctls, policy routing rules, DNS — is written to a record *before* it is made, undone
//! at exit, and undone at the next start when a crash left the record behind. Routes into
//! the TUN need no record: they go with the device.
//!
//! **The record is root's when root starts the daemon.** It lives beside the control
//! socket in `/run/culvert/<netns>/` (which root keeps for itself, see
//! [`culvert_sys::dir`]), is written through a descriptor opened before root is dropped,
//! and a start trusts only a regular file of its own user. What it undoes is also checked
//! against what this instance could have recorded: sysctls by name (forwarding, `accept_ra`,
//! `src_valid_mark`) with small values, rules and routes in the instance's own table, its
//! own resolvconf entry. A record planted by the unprivileged daemon's user can make a
//! root start do nothing that user could not do itself. `/run` empties at boot, as the
//! kernel state the record describes does.
//!
//! **Fail closed after a crash**: the full tunnel's table also holds an `unreachable`
//! default route of the lowest preference. While the TUN exists its route wins; when a
//! crash takes the TUN away, the rules stay and lead to that route, so the host has no
//! way out in the clear until the next start (or a clean exit) removes both.
//!
//! **Why policy routing with a firewall mark** (as `wg-quick`), not `0.0.0.0/1` +
//! `128.0.0.0/1` with a host route to the server: a client talks to more than the server
//! — direct paths to other clients, port prediction's extra sockets, FakeTCP — at
//! addresses that change. Every underlay socket carries the mark, so all of them bypass the
//! tunnel without a route per address, and nothing else does: while the tunnel is down the
//! routes still lead into the TUN, where packets wait or are dropped, never sent in the
//! clear. The rule `table main suppress_prefixlength 0` (with `allow_lan`) lets every route
//! of the main table except its default one win, so the LAN stays reachable directly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use culvert_sys::dir::Dir;
use culvert_sys::netlink::{Netlink, Route, Rule, Via};
use culvert_sys::nft::{Masquerade, RuleSet};
use culvert_sys::sysctl;
use culvert_wire::addr::Prefix;
use serde::{Deserialize, Serialize};

use crate::config::FullTunnel;

/// The longest record a start reads (a few hundred bytes in practice).
const RECORD_MAX: u64 = 64 * 1024;
/// Where resolvconf (Debian's, or openresolv) may be; never looked up in `PATH`.
const RESOLVCONF: [&str; 3] = [
    "/usr/sbin/resolvconf",
    "/sbin/resolvconf",
    "/usr/local/sbin/resolvconf",
];
/// Priority of the rule that kept the main table's specific routes outside the tunnel
/// (allow_lan before connected LANs got routes of their own). A rule of an older run at
/// it is still removed; none is added.
const SUPPRESS_PRIORITY: u32 = 32_760;
/// Metric of the full tunnel's fail-closed route: below every other route's preference.
const FAIL_CLOSED_METRIC: u32 = u32::MAX;
/// Metric of a connected LAN's route in the full tunnel's table.
const LAN_METRIC: u32 = 0;
/// Where a LAN may lie to stay outside the full tunnel: private, shared (CGNAT) and IPv4
/// link-local space. A "connected" network beyond them (a rogue DHCP server handing out
/// a /1) would take public traffic out in the clear. (IPv6 link-local needs no route
/// here: its lookups name their interface, which the tunnel's table has no route for, so
/// they fall through to the main table.)
const LAN_RANGES: [&str; 6] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
];
/// Priority of the rule that sends unmarked traffic to the tunnel's table.
const TUNNEL_PRIORITY: u32 = 32_761;

/// The firewall mark of an instance's underlay traffic, also the number of its routing
/// table: stable across restarts (a crashed run's rules are found by it), distinct per
/// instance.
pub(crate) fn mark_for(instance: &str) -> u32 {
    // FNV-1a, folded into 16 bits under a fixed prefix ("cv").
    let h = instance.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    0x6376_0000 | ((h >> 16) ^ (h & 0xffff))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Changes {
    /// Sysctls set, with the value each had before.
    sysctls: Vec<(Vec<String>, String)>,
    rules: Vec<RuleRecord>,
    /// Routes that outlive the TUN (the fail-closed ones).
    #[serde(default)]
    routes: Vec<RouteRecord>,
    /// A resolvconf entry added (its interface name).
    resolvconf: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct RuleRecord {
    v6: bool,
    priority: u32,
    table: u32,
    not_fwmark: Option<u32>,
    suppress_prefixlen: Option<u32>,
}

/// A route in the full tunnel's table: its `unreachable` default route (fail closed), or
/// a connected LAN through its interface (allow_lan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RouteRecord {
    v6: bool,
    metric: u32,
    table: u32,
    /// A LAN's network and interface; `None`: the unreachable default route.
    #[serde(default)]
    lan: Option<(Net, u32)>,
}

/// A prefix, as text in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
struct Net(Prefix);

impl TryFrom<String> for Net {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
            .map(Self)
            .map_err(|_| format!("not a prefix: {s:?}"))
    }
}

impl From<Net> for String {
    fn from(n: Net) -> Self {
        n.0.to_string()
    }
}

impl From<RouteRecord> for Route {
    fn from(r: RouteRecord) -> Self {
        let (dst, via) = match r.lan {
            Some((Net(net), ifindex)) => (net, Via::Interface(ifindex)),
            None => (default_route(r.v6), Via::Unreachable),
        };
        Self {
            dst,
            via,
            metric: r.metric,
            table: r.table,
        }
    }
}

impl From<RuleRecord> for Rule {
    fn from(r: RuleRecord) -> Self {
        Self {
            v6: r.v6,
            priority: r.priority,
            table: r.table,
            not_fwmark: r.not_fwmark,
            suppress_prefixlen: r.suppress_prefixlen,
        }
    }
}

/// The system changes a gateway made; dropping it undoes them.
pub(crate) struct Gateway {
    record: Record,
    changes: Changes,
    /// What `culvert status` shows, one part per role (exit, subnet router, full tunnel).
    parts: Vec<String>,
    /// A full tunnel that lets the connected LANs through.
    lan: Option<Lan>,
}

/// Where a full tunnel's LAN routes go.
struct Lan {
    tun: String,
    table: u32,
}

/// Where the changes are written down before they are made.
struct Record {
    dir: Dir,
    name: String,
    /// Opened at the first change, while the daemon may still create files in `dir`.
    file: Option<std::fs::File>,
}

impl Record {
    fn name(instance: &str) -> String {
        format!("{instance}.gateway.json")
    }

    fn save(&mut self, changes: &Changes) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let text = serde_json::to_vec(changes)?;
        let what = || {
            format!(
                "recording gateway changes in {}",
                self.dir.path().join(&self.name).display()
            )
        };
        if self.file.is_none() {
            self.file = Some(self.dir.create(&self.name, 0o600).with_context(what)?);
        }
        let f = self.file.as_ref().expect("opened above");
        f.set_len(0).with_context(what)?;
        f.write_all_at(&text, 0).with_context(what)?;
        f.sync_data().with_context(what)
    }

    /// Everything recorded was undone: an empty record (the file may no longer be ours
    /// to remove once root is dropped).
    fn clear(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = f.set_len(0);
        }
        let _ = self.dir.remove(&self.name);
    }
}

impl Gateway {
    /// Undoes what a run of `instance` that crashed recorded in `dir` (its control
    /// directory); nothing if it left no record. Only what this instance could have
    /// recorded is undone.
    pub(crate) fn recover(dir: &Dir, instance: &str) {
        let name = Record::name(instance);
        let file = dir.path().join(&name);
        match dir.open_regular(&name, culvert_sys::privilege::euid()) {
            Ok(None) => return,
            Ok(Some((f, meta))) if meta.size <= RECORD_MAX => {
                let mut text = String::new();
                let read = std::io::Read::read_to_string(&mut &f, &mut text);
                match read.map_err(anyhow::Error::from).and_then(|_| {
                    if text.is_empty() {
                        return Ok(Changes::default());
                    }
                    Ok(serde_json::from_str::<Changes>(&text)?)
                }) {
                    Ok(changes) => {
                        let (changes, refused) = changes.validated(instance);
                        for r in refused {
                            tracing::warn!(file = %file.display(), "record of gateway changes: {r}: not undone");
                        }
                        if !changes.is_empty() {
                            tracing::info!(file = %file.display(), "undoing the gateway changes of a run that did not exit cleanly");
                            undo(&changes);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.display(), "unreadable record of gateway changes, ignored: {e}")
                    }
                }
            }
            Ok(Some(_)) => {
                tracing::warn!(file = %file.display(), "record of gateway changes larger than {RECORD_MAX} bytes, ignored")
            }
            Err(e) => tracing::warn!("record of gateway changes ignored: {e}"),
        }
        let _ = dir.remove(&name);
    }

    /// A gateway of `instance` that has changed nothing yet; its record goes to `dir`.
    pub(crate) fn new(dir: Dir, instance: &str) -> Self {
        Self {
            record: Record {
                dir,
                name: Record::name(instance),
                file: None,
            },
            changes: Changes::default(),
            parts: Vec::new(),
            lan: None,
        }
    }

    /// What makes this node a gateway, for `culvert status`; `None`: nothing.
    pub(crate) fn summary(&self) -> Option<String> {
        (!self.parts.is_empty()).then(|| self.parts.join("; "))
    }

    /// Server: the exit's forwarding and masquerading. `tun` is the TUN device, `sources`
    /// the overlay prefixes to masquerade.
    pub(crate) fn exit(
        &mut self,
        tun: &str,
        uplink: Option<&str>,
        sources: &[Prefix],
        rules: &mut RuleSet,
    ) -> Result<()> {
        let v4 = sources.iter().any(|p| p.addr().is_ipv4());
        let v6 = sources.iter().any(|p| p.addr().is_ipv6());
        let uplink = match uplink {
            Some(u) => u.to_owned(),
            None => interface_towards(default_probe(!v4 && v6), None).context(
                "finding the uplink for --nat: no default route; name it with --nat-interface",
            )?,
        };
        if Netlink::link_index(&uplink).is_err() {
            bail!("--nat: interface {uplink:?} does not exist (set nat_interface)");
        }
        self.forward(tun, &uplink, v4, v6, rules)?;
        rules.masquerade.extend(sources.iter().map(|p| Masquerade {
            oif: Some(uplink.clone()),
            src: p.network(),
            dst: None,
        }));
        self.parts.push(format!(
            "exit via {uplink} (masquerading {})",
            list(sources.iter().map(Prefix::network))
        ));
        tracing::info!(uplink = %uplink, "the server is its clients' exit: forwarding and masquerading");
        Ok(())
    }

    /// Any node: forwarding between the TUN and the subnets it advertises, masquerading
    /// the overlay's traffic into them with `nat`. `mark` is a full tunnel's (the lookup
    /// of a subnet's interface must not see the tunnel's routes).
    pub(crate) fn subnet_router(
        &mut self,
        tun: &str,
        routes: &[Prefix],
        nat: bool,
        sources: &[Prefix],
        mark: Option<u32>,
        rules: &mut RuleSet,
    ) -> Result<()> {
        let mut via = Vec::new();
        for r in routes {
            let probe = SocketAddr::new(r.network().addr(), 9);
            let iface = match interface_towards(probe, mark) {
                Ok(i) if i != tun => i,
                Ok(_) | Err(_) => {
                    tracing::warn!(
                        route = %r,
                        "advertised route: no interface of this host leads to it; traffic \
                         for it will be dropped here until one does"
                    );
                    continue;
                }
            };
            let v4 = r.addr().is_ipv4();
            self.forward(tun, &iface, v4, !v4, rules)?;
            if nat {
                rules
                    .masquerade
                    .extend(
                        sources
                            .iter()
                            .filter(|s| s.addr().is_ipv4() == v4)
                            .map(|s| Masquerade {
                                oif: None,
                                src: s.network(),
                                dst: Some(*r),
                            }),
                    );
            }
            via.push(format!("{r} via {iface}"));
        }
        self.parts.push(format!(
            "routes for {}{}",
            via.join(", "),
            if nat { " (masquerading)" } else { "" }
        ));
        tracing::info!(routes = %via.join(", "), nat, "routing for the advertised subnets");
        Ok(())
    }

    /// Forwarding between the TUN and `iface` for IPv4 and/or IPv6. IPv4 forwards per
    /// interface: on the TUN (ours: it goes with the device) and on `iface` for the answers,
    /// which is then confined to forwarding into the TUN if culvert turned it on; never the
    /// global switch.
    fn forward(
        &mut self,
        tun: &str,
        iface: &str,
        v4: bool,
        v6: bool,
        rules: &mut RuleSet,
    ) -> Result<()> {
        if v4 {
            sysctl::write(&["net", "ipv4", "conf", tun, "forwarding"], "1")?;
            if self.set(&["net", "ipv4", "conf", iface, "forwarding"], "1")?
                && !rules.confine.iter().any(|c| c == iface)
            {
                rules.confine.push(iface.to_owned());
            }
        }
        if v6 {
            // IPv6 has one switch for forwarding (conf/all); per-interface values only
            // change host/router behaviour. The interface keeps accepting router
            // advertisements (accept_ra 2), which forwarding would otherwise stop.
            if sysctl::read(&["net", "ipv6", "conf", iface, "accept_ra"]).is_ok_and(|v| v == "1") {
                self.set(&["net", "ipv6", "conf", iface, "accept_ra"], "2")?;
            }
            self.set(&["net", "ipv6", "conf", "all", "forwarding"], "1")?;
        }
        Ok(())
    }

    /// Client: all traffic into the TUN (`ifindex`) except what carries the instance's
    /// mark; DNS as configured.
    pub(crate) fn full_tunnel(
        &mut self,
        instance: &str,
        tun: &str,
        ifindex: u32,
        netlink: &mut Netlink,
        ft: &FullTunnel,
    ) -> Result<()> {
        let g = self;
        let mark = mark_for(instance);
        // Replies to marked sockets arrive on the uplink, whose reverse path (unmarked)
        // is the TUN: strict reverse-path filtering needs the mark considered.
        g.set(&["net", "ipv4", "conf", "all", "src_valid_mark"], "1")?;
        for v6 in [false, true] {
            let route = Route {
                dst: default_route(v6),
                via: Via::Interface(ifindex),
                metric: 0,
                table: mark,
            };
            if let Err(e) = netlink.add_route(route) {
                if !v6 {
                    return Err(e).context("full tunnel: routing everything into the TUN");
                }
                if !ipv6_present() {
                    tracing::info!("full tunnel: this host has no IPv6, so none can leak");
                    continue;
                }
                // Blocked rather than sent around the tunnel: the rules below lead IPv6
                // to the fail-closed route.
                tracing::warn!(
                    "full tunnel: IPv6 cannot enter the tunnel ({e}); IPv6 is blocked while \
                     the tunnel runs (fail closed)"
                );
            }
            g.route(
                netlink,
                RouteRecord {
                    v6,
                    metric: FAIL_CLOSED_METRIC,
                    table: mark,
                    lan: None,
                },
            )?;
            g.rule(
                netlink,
                RuleRecord {
                    v6,
                    priority: TUNNEL_PRIORITY,
                    table: mark,
                    not_fwmark: Some(mark),
                    suppress_prefixlen: None,
                },
            )?;
        }
        if ft.allow_lan {
            g.lan = Some(Lan {
                tun: tun.to_owned(),
                table: mark,
            });
            g.refresh_lan(netlink);
        }
        if !ft.dns.is_empty() {
            g.dns(tun, &ft.dns)?;
        }
        g.parts.push(format!(
            "full tunnel (mark and table {mark:#x}{}{})",
            if ft.allow_lan { ", LAN outside" } else { "" },
            if ft.dns.is_empty() {
                String::new()
            } else {
                format!(
                    ", DNS {}",
                    ft.dns
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        ));
        tracing::info!(
            mark = format!("{mark:#x}"),
            allow_lan = ft.allow_lan,
            "full tunnel: all traffic goes through the server"
        );
        Ok(())
    }

    /// Sets a sysctl, recording the old value; returns whether it changed.
    fn set(&mut self, parts: &[&str], value: &str) -> Result<bool> {
        let old = sysctl::read(parts)?;
        if old == value {
            return Ok(false);
        }
        self.changes
            .sysctls
            .push((parts.iter().map(|p| (*p).to_owned()).collect(), old));
        self.save()?;
        sysctl::write(parts, value)?;
        Ok(true)
    }

    /// Full tunnel with allow_lan: the tunnel's table routes each connected LAN (inside
    /// [`LAN_RANGES`]) out of its own interface, and nothing else outside the tunnel. A
    /// route someone adds to the main table — a rogue DHCP server's option 121, a LAN
    /// router announcing 0.0.0.0/1 (TunnelVision) — is never consulted for unmarked
    /// traffic. Run again when the host's addresses may have changed.
    pub(crate) fn refresh_lan(&mut self, netlink: &mut Netlink) {
        let Some(lan) = &self.lan else {
            return;
        };
        let ranges: Vec<Prefix> = LAN_RANGES
            .iter()
            .map(|r| r.parse().expect("valid constant"))
            .collect();
        let mut wanted = Vec::new();
        for (dev, p) in culvert_sys::ifaddrs::interface_networks() {
            let net = p.network();
            if dev == lan.tun || p.addr().is_loopback() {
                continue;
            }
            if !ranges.iter().any(|r| r.covers(&net)) {
                tracing::warn!(interface = %dev, network = %net, "full tunnel: this connected network is not private; it goes through the tunnel, not the LAN");
                continue;
            }
            if let Ok(ifindex) = Netlink::link_index(&dev) {
                wanted.push(RouteRecord {
                    v6: net.addr().is_ipv6(),
                    metric: LAN_METRIC,
                    table: lan.table,
                    lan: Some((Net(net), ifindex)),
                });
            }
        }
        wanted.sort_by_key(|r| r.lan.map(|(n, i)| (n.0.to_string(), i)));
        wanted.dedup();
        let stale: Vec<RouteRecord> = self
            .changes
            .routes
            .iter()
            .filter(|r| r.lan.is_some() && !wanted.contains(r))
            .copied()
            .collect();
        for r in stale {
            self.changes.routes.retain(|x| *x != r);
            if let Err(e) = netlink.delete_route(r.into()) {
                tracing::warn!("full tunnel: removing a LAN's route: {e}");
            }
        }
        for r in wanted {
            if !self.changes.routes.contains(&r)
                && let Err(e) = self.route(netlink, r)
            {
                tracing::warn!(
                    "full tunnel: the LAN {:?} stays in the tunnel: {e:#}",
                    r.lan
                );
            }
        }
        if let Err(e) = self.save() {
            tracing::warn!("{e:#}");
        }
    }

    /// Client: takes the full tunnel down (its rules, its table's routes, its DNS and the
    /// sysctl it set), leaving any other role as it is; returns whether there was one.
    pub(crate) fn leave_full_tunnel(&mut self) -> bool {
        if !self.parts.iter().any(|p| p.starts_with("full tunnel (")) {
            return false;
        }
        let src_valid_mark = |(parts, _): &(Vec<String>, String)| {
            parts.last().is_some_and(|p| p == "src_valid_mark")
        };
        let (tunnel_sysctls, others): (Vec<_>, Vec<_>) =
            self.changes.sysctls.drain(..).partition(src_valid_mark);
        self.changes.sysctls = others;
        let tunnel = Changes {
            sysctls: tunnel_sysctls,
            rules: std::mem::take(&mut self.changes.rules),
            routes: std::mem::take(&mut self.changes.routes),
            resolvconf: self.changes.resolvconf.take(),
        };
        undo(&tunnel);
        self.lan = None;
        if let Err(e) = self.save() {
            tracing::warn!("{e:#}");
        }
        for p in &mut self.parts {
            if p.starts_with("full tunnel (") {
                *p = "full tunnel refused: the server is not an exit".to_owned();
            }
        }
        true
    }

    fn route(&mut self, netlink: &mut Netlink, r: RouteRecord) -> Result<()> {
        self.changes.routes.push(r);
        self.save()?;
        match netlink.add_route(r.into()) {
            // The same fail-closed route, left by a run whose record is gone.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => Ok(r?),
        }
    }

    fn rule(&mut self, netlink: &mut Netlink, r: RuleRecord) -> Result<()> {
        self.changes.rules.push(r);
        self.save()?;
        netlink.delete_rule(r.into())?;
        netlink.add_rule(r.into())?;
        Ok(())
    }

    /// DNS servers for the tunnel: systemd-resolved (per link, for every domain) when it
    /// runs, else resolvconf.
    fn dns(&mut self, tun: &str, servers: &[IpAddr]) -> Result<()> {
        let list: Vec<String> = servers.iter().map(IpAddr::to_string).collect();
        if let Some(resolvectl) = find(&["/usr/bin/resolvectl", "/bin/resolvectl"])
            && Path::new("/run/systemd/resolve").exists()
        {
            // Per link: it goes with the TUN device, nothing to record.
            run(
                resolvectl,
                &[&["dns", tun], &list_refs(&list)[..]].concat(),
                None,
            )?;
            run(resolvectl, &["domain", tun, "~."], None)?;
            return Ok(());
        }
        if let Some(resolvconf) = find(&RESOLVCONF) {
            let name = format!("{tun}.culvert");
            self.changes.resolvconf = Some(name.clone());
            self.save()?;
            let text: String = list.iter().map(|s| format!("nameserver {s}\n")).collect();
            run(resolvconf, &["-a", &name, "-m", "0", "-x"], Some(&text))?;
            return Ok(());
        }
        bail!(
            "dns: neither systemd-resolved (resolvectl) nor resolvconf is here to set DNS \
             servers with; install one, or drop the dns setting and configure DNS yourself"
        )
    }

    fn save(&mut self) -> Result<()> {
        self.record.save(&self.changes)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        undo(&self.changes);
        self.record.clear();
    }
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.sysctls.is_empty()
            && self.rules.is_empty()
            && self.routes.is_empty()
            && self.resolvconf.is_none()
    }

    /// What of a record found at start this instance could have written itself: every
    /// other entry is dropped, with why. A record is read by a start that may be root's
    /// while the file came from anyone who could write there.
    fn validated(self, instance: &str) -> (Self, Vec<String>) {
        let mark = mark_for(instance);
        let mut refused = Vec::new();
        let mut keep = |ok: bool, what: String| {
            if !ok {
                refused.push(what);
            }
            ok
        };
        let sysctls = self
            .sysctls
            .into_iter()
            .filter(|(parts, old)| {
                keep(
                    is_our_sysctl(parts) && matches!(old.as_str(), "0" | "1" | "2"),
                    format!("sysctl {} = {old:?}", parts.join(".")),
                )
            })
            .collect();
        let rules = self
            .rules
            .into_iter()
            .filter(|r| {
                let ours = match r.priority {
                    SUPPRESS_PRIORITY => {
                        r.table == Route::MAIN
                            && r.not_fwmark.is_none()
                            && r.suppress_prefixlen == Some(0)
                    }
                    TUNNEL_PRIORITY => {
                        r.table == mark
                            && r.not_fwmark == Some(mark)
                            && r.suppress_prefixlen.is_none()
                    }
                    _ => false,
                };
                keep(ours, format!("routing rule {r:?}"))
            })
            .collect();
        let routes = self
            .routes
            .into_iter()
            .filter(|r| {
                let ours = match r.lan {
                    None => r.metric == FAIL_CLOSED_METRIC,
                    Some((Net(net), _)) => r.metric == LAN_METRIC && net.addr().is_ipv6() == r.v6,
                };
                keep(r.table == mark && ours, format!("route {r:?}"))
            })
            .collect();
        let ours = format!("{instance}.culvert");
        let resolvconf = self
            .resolvconf
            .filter(|n| keep(*n == ours, format!("resolvconf entry {n:?}")));
        (
            Self {
                sysctls,
                rules,
                routes,
                resolvconf,
            },
            refused,
        )
    }
}

/// Whether `parts` names a sysctl a gateway sets: IPv4 forwarding of one interface, IPv6
/// forwarding, an interface's `accept_ra`, or `src_valid_mark`.
fn is_our_sysctl(parts: &[String]) -> bool {
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["net", "ipv4", "conf", iface, "forwarding"]
        | ["net", "ipv6", "conf", iface, "accept_ra"] => is_interface_name(iface),
        ["net", "ipv6", "conf", "all", "forwarding"]
        | ["net", "ipv4", "conf", "all", "src_valid_mark"] => true,
        _ => false,
    }
}

/// A name the kernel accepts for an interface: 1 to 15 bytes, no `/`, whitespace or
/// colon, not `.` or `..`.
fn is_interface_name(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Undoes recorded changes, newest first; reports what fails and goes on.
fn undo(c: &Changes) {
    if let Some(name) = &c.resolvconf
        && let Some(resolvconf) = find(&RESOLVCONF)
        && let Err(e) = run(resolvconf, &["-d", name, "-f"], None)
    {
        tracing::warn!("restoring DNS: {e:#}");
    }
    match Netlink::open() {
        Ok(mut nl) => {
            for r in c.rules.iter().rev() {
                if let Err(e) = nl.delete_rule((*r).into()) {
                    tracing::warn!("removing routing rule: {e}");
                }
            }
            for r in c.routes.iter().rev() {
                if let Err(e) = nl.delete_route((*r).into()) {
                    tracing::warn!("removing a fail-closed route: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("removing routing rules and routes: {e}"),
    }
    for (parts, old) in c.sysctls.iter().rev() {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        if let Err(e) = sysctl::write(&parts, old) {
            tracing::warn!("restoring a sysctl: {e}");
        }
    }
}

/// Whether this host has IPv6 anywhere outside loopback (so IPv6 could leave it).
fn ipv6_present() -> bool {
    culvert_sys::ifaddrs::interface_addresses()
        .iter()
        .any(|(_, ip)| ip.is_ipv6() && !ip.is_loopback())
}

/// `0.0.0.0/0`, or `::/0` when `v6`.
fn default_route(v6: bool) -> Prefix {
    let any = if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    Prefix::new(any, 0).expect("a zero-length prefix is valid")
}

/// An address on the default route (of IPv6 when `v6`), from the documentation ranges.
fn default_probe(v6: bool) -> SocketAddr {
    if v6 {
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into()
    } else {
        (Ipv4Addr::new(192, 0, 2, 1), 9).into()
    }
}

/// The interface traffic to `to` leaves by: where a connected UDP socket (with `mark`)
/// would send from. Connecting sends nothing.
fn interface_towards(to: SocketAddr, mark: Option<u32>) -> Result<String> {
    let any: IpAddr = if to.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
    if let Some(m) = mark {
        culvert_sys::sockopt::set_mark(&s, m)?;
    }
    s.connect(to)?;
    let local = s.local_addr()?.ip();
    culvert_sys::ifaddrs::interface_addresses()
        .into_iter()
        .find(|(_, ip)| *ip == local)
        .map(|(name, _)| name)
        .with_context(|| format!("no interface has the source address {local} towards {to}"))
}

fn list(prefixes: impl Iterator<Item = Prefix>) -> String {
    prefixes
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn find(paths: &[&'static str]) -> Option<&'static str> {
    paths.iter().copied().find(|p| Path::new(p).exists())
}

fn list_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs a system tool by absolute path, with `input` on its stdin.
fn run(bin: &str, args: &[&str], input: Option<&str>) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {bin}"))?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{bin} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_undoes_only_what_the_instance_could_have_changed() {
        let mark = mark_for("culvert0");
        let text = format!(
            r#"{{"sysctls":[
                [["net","ipv4","conf","eth0","forwarding"],"0"],
                [["net","ipv6","conf","all","forwarding"],"1"],
                [["net","ipv4","conf","all","src_valid_mark"],"0"],
                [["kernel","core_pattern"],"|/tmp/x"],
                [["net","ipv4","conf","..","..","..","..","etc","passwd"],"0"],
                [["net","ipv4","conf","eth0","forwarding"],"root::0:0::/:/bin/sh"],
                [["net","ipv4","conf","a/b","forwarding"],"1"]],
             "rules":[
                {{"v6":false,"priority":{TUNNEL_PRIORITY},"table":{mark},"not_fwmark":{mark},"suppress_prefixlen":null}},
                {{"v6":false,"priority":100,"table":254,"not_fwmark":null,"suppress_prefixlen":null}}],
             "routes":[
                {{"v6":false,"metric":{FAIL_CLOSED_METRIC},"table":{mark}}},
                {{"v6":false,"metric":{FAIL_CLOSED_METRIC},"table":254}}],
             "resolvconf":"eth0.dhcp"}}"#
        );
        let c: Changes = serde_json::from_str(&text).unwrap();
        let (kept, refused) = c.validated("culvert0");
        assert_eq!(kept.sysctls.len(), 3);
        assert_eq!((kept.rules.len(), kept.routes.len()), (1, 1));
        assert_eq!(kept.resolvconf, None);
        assert_eq!(refused.len(), 4 + 1 + 1 + 1, "{refused:?}");
    }

    #[test]
    fn marks_are_stable_and_differ_per_instance() {
        assert_eq!(mark_for("culvert0"), mark_for("culvert0"));
        assert_ne!(mark_for("culvert0"), mark_for("culvert1"));
        assert_eq!(mark_for("wg0") >> 16, 0x6376);
    }
}
