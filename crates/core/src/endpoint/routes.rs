//! Subnet routes (site to site): subnets behind a node that the others reach through it.
//!
//! A client offers the subnets behind it in its join (Hello). The hub keeps the offers its
//! config allows (`allow_routes`, a key's `[[peer]] routes`), logs the others, and refuses
//! the join when a route conflicts: one overlapping another node's (or the hub's own) —
//! equal, wider or narrower, unless `allow_route_overlap` — or the overlay network, or
//! covering a node's underlay address. Accepted routes take effect, like addresses,
//! only when the join is confirmed, and reach every client in the directory; the hub's own
//! routes travel in its entry (node 0), and under isolation a client's directory holds only
//! the hub and the client itself.
//!
//! Every node maps each route to the node behind it in its router (longest prefix wins, so
//! overlay addresses stay with their holders and the most specific of overlapping routes
//! wins), which also makes the inner source check accept packets from those subnets. A
//! client leaves out what would hurt it: routes outside `accept_routes` (by default the
//! private ranges: a hub cannot route a public prefix into a client's tunnel), a route that
//! covers the server's underlay address (a routing loop), one overlapping its own offered
//! subnets. The shell mirrors the routes in the kernel ([`Event::RoutesChanged`]).

use std::time::Instant;

use culvert_wire::addr::Prefix;
use culvert_wire::hello::RefusalCode;

use super::hub::Refusal;
use super::{Endpoint, RoleState};
use crate::config::Role;
use crate::event::Event;
use crate::keys::PublicKey;
use crate::peer::{Path, PeerId, Source};

impl Endpoint {
    /// Hub: the routes of `offered` that `key` may hold; the others are logged.
    pub(super) fn allowed_routes(
        &mut self,
        now: Instant,
        src: Source,
        key: &PublicKey,
        offered: &[Prefix],
    ) -> Vec<Prefix> {
        let RoleState::Hub(hub) = &self.role else {
            return Vec::new();
        };
        let (ok, refused): (Vec<Prefix>, Vec<Prefix>) = offered
            .iter()
            .map(Prefix::network)
            .partition(|r| !r.is_empty() && hub.may_route(key, r));
        if !refused.is_empty()
            && let Source::Addr(from) = src
        {
            let text = format!(
                "client {key} offered routes {} that this server does not allow (a default \
                 route never; others with allow_routes, or routes in the key's [[peer]] entry)",
                super::hub::list(&refused)
            );
            self.log_refusal(now, from.addr, &text);
        }
        ok
    }

    /// Hub: why `routes` may not be held by node `existing` (or a new node): it overlaps
    /// the overlay network, a route of the hub's or of another node (equal, wider or
    /// narrower: a more specific route would draw that part of the other site's traffic;
    /// `allow_route_overlap` lets through all but equal ones), or covers the underlay
    /// address of a node the hub talks to (whose tunnel would then run into itself).
    pub(super) fn route_conflict(
        &self,
        existing: Option<PeerId>,
        routes: &[Prefix],
    ) -> Result<(), Refusal> {
        let RoleState::Hub(hub) = &self.role else {
            return Ok(());
        };
        let overlap_ok = hub.cfg.allow_route_overlap;
        let clash =
            |a: &Prefix, b: &Prefix| a == b || (!overlap_ok && (a.covers(b) || b.covers(a)));
        let overlay: Vec<Prefix> = self.cfg.addresses.iter().map(Prefix::network).collect();
        let conflict = |text: String| Err((RefusalCode::RouteConflict, text));
        for r in routes {
            if let Some(n) = overlay.iter().find(|n| n.covers(r) || r.covers(n)) {
                return conflict(format!("route {r} overlaps the overlay network {n}"));
            }
            if let Some(own) = self.cfg.routes.iter().find(|own| clash(&own.network(), r)) {
                return conflict(format!(
                    "route {r} overlaps the server's own route {own} (allow_route_overlap)"
                ));
            }
            for p in self.peers.values().filter(|p| Some(p.id) != existing) {
                if let Some(theirs) = p.routes.iter().find(|t| clash(t, r)) {
                    return conflict(format!(
                        "route {r} overlaps {theirs}, already routed by node {} ({}) \
                         (allow_route_overlap)",
                        p.id.0, p.key
                    ));
                }
                if let Path::Direct(Some(at)) = p.path
                    && r.contains(at.addr.ip().to_canonical())
                {
                    return conflict(format!(
                        "route {r} covers the underlay address of node {}",
                        p.id.0
                    ));
                }
            }
        }
        Ok(())
    }

    /// Client: the routes of a directory entry this node installs.
    pub(super) fn usable_routes(&self, node: PeerId, routes: Vec<Prefix>) -> Vec<Prefix> {
        let Role::Client(c) = &self.cfg.role else {
            return routes;
        };
        let server = c.server.ip().to_canonical();
        let (ok, refused): (Vec<Prefix>, Vec<Prefix>) = routes.into_iter().partition(|r| {
            !r.is_empty()
                && c.accept_routes.iter().any(|a| a.covers(r))
                && !r.contains(server)
                && !self
                    .cfg
                    .routes
                    .iter()
                    .any(|own| own.covers(r) || r.covers(own))
        });
        if !refused.is_empty() {
            tracing::warn!(
                node = node.0,
                routes = %super::hub::list(&refused),
                accept_routes = %super::hub::list(&c.accept_routes),
                "not installing routes outside accept_routes, or that are a default route, \
                 cover the server's address (a routing loop) or overlap this node's own subnets"
            );
        }
        ok
    }

    /// Maps a peer's addresses (as hosts) and routes to it in the router; on a full-tunnel
    /// client the hub also gets everything else. Tells the shell if the routes changed.
    pub(super) fn install_routes(&mut self, id: PeerId) {
        self.routes.remove_value(id);
        let Some(p) = self.peers.get(&id) else {
            self.announce_routes();
            return;
        };
        let hosts = p.addresses.iter().map(|a| Prefix::host(a.addr()));
        for r in hosts.chain(p.routes.iter().copied()).collect::<Vec<_>>() {
            self.routes.insert(r, id);
        }
        if id == PeerId::HUB && matches!(&self.cfg.role, Role::Client(c) if c.full_tunnel) {
            for any in ["0.0.0.0/0", "::/0"] {
                let p: Prefix = any.parse().expect("a valid prefix");
                self.routes.insert(p, PeerId::HUB);
            }
        }
        self.announce_routes();
    }

    /// The underlay addresses this node talks to its peers at: a route into the overlay
    /// that covers one would send that peer's own tunnel into itself.
    pub fn underlay_addresses(&self) -> Vec<core::net::IpAddr> {
        self.peers
            .values()
            .filter_map(|p| match p.path {
                Path::Direct(Some(r)) => Some(r.addr.ip().to_canonical()),
                _ => None,
            })
            .chain(match &self.cfg.role {
                Role::Client(c) => Some(c.server.ip().to_canonical()),
                Role::Hub(_) => None,
            })
            .collect()
    }

    /// Every subnet routed into the overlay, and the node behind each.
    pub fn installed_routes(&self) -> Vec<(Prefix, u32)> {
        let mut all: Vec<(Prefix, u32)> = self
            .peers
            .values()
            .flat_map(|p| p.routes.iter().map(|r| (*r, p.id.0)))
            .collect();
        all.sort();
        all
    }

    /// Queues [`Event::RoutesChanged`] when the set of subnets routed into the overlay
    /// differs from the one last announced.
    fn announce_routes(&mut self) {
        let now: Vec<Prefix> = self
            .installed_routes()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        if now != self.announced_routes {
            self.announced_routes = now.clone();
            self.events.push_back(Event::RoutesChanged { routes: now });
        }
    }
}
