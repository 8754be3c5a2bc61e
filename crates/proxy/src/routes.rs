//! What connectors serve, and which one a destination goes to: longest prefix first, then
//! the connector with the fewest flows. A route may map the prefix clients address to a
//! real network of the same length on the connector's side (host bits kept), so two
//! remote networks that both use 192.168.1.0/24 stay apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use culvert_wire::addr::Prefix;

use crate::proto::RouteMsg;

/// A prefix a connector serves, optionally mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// What clients address.
    pub prefix: Prefix,
    /// The network it stands for at the connector; `None`: itself.
    pub real: Option<Prefix>,
}

impl Route {
    /// An unmapped route.
    pub fn direct(prefix: Prefix) -> Self {
        Self {
            prefix: prefix.network(),
            real: None,
        }
    }

    /// `VIRTUAL=REAL`: equal families and lengths.
    pub fn mapping(text: &str) -> Result<Self> {
        let (v, r) = text.split_once('=').with_context(|| {
            format!("map {text:?}: expected VIRTUAL=REAL, e.g. 100.64.1.0/24=192.168.1.0/24")
        })?;
        let virt = parse_prefix(v.trim())?;
        let real = parse_prefix(r.trim())?;
        if virt.addr().is_ipv4() != real.addr().is_ipv4() || virt.len() != real.len() {
            bail!("map {text:?}: both sides need the same address family and prefix length");
        }
        Ok(Self {
            prefix: virt.network(),
            real: Some(real.network()),
        })
    }

    /// Where `ip` (inside [`Route::prefix`]) really is.
    pub fn translate(&self, ip: IpAddr) -> IpAddr {
        let Some(real) = self.real else {
            return ip;
        };
        match (ip, real.addr()) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => {
                let host = u32::from(ip) & host_mask4(real.len());
                IpAddr::V4(Ipv4Addr::from(u32::from(net) | host))
            }
            (IpAddr::V6(ip), IpAddr::V6(net)) => {
                let host = u128::from(ip) & host_mask6(real.len());
                IpAddr::V6(Ipv6Addr::from(u128::from(net) | host))
            }
            _ => ip,
        }
    }

    /// As sent in a connector's hello.
    pub fn to_msg(self) -> RouteMsg {
        RouteMsg {
            prefix: self.prefix.to_string(),
            real: self.real.map(|r| r.to_string()).unwrap_or_default(),
        }
    }

    /// From a connector's hello; `None` for what does not parse.
    pub fn from_msg(m: &RouteMsg) -> Option<Self> {
        let prefix = Prefix::from_str(&m.prefix).ok()?.network();
        if m.real.is_empty() {
            return Some(Self::direct(prefix));
        }
        Self::mapping(&format!("{}={}", m.prefix, m.real)).ok()
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.real {
            Some(r) => write!(f, "{}={}", self.prefix, r),
            None => write!(f, "{}", self.prefix),
        }
    }
}

/// A prefix, with host bits allowed (they are cleared).
pub fn parse_prefix(text: &str) -> Result<Prefix> {
    Prefix::from_str(text)
        .map(|p| p.network())
        .map_err(|e| anyhow::anyhow!("{text:?} is not a prefix like 192.168.1.0/24: {e}"))
}

fn host_mask4(len: u8) -> u32 {
    u32::MAX.checked_shr(u32::from(len)).unwrap_or(0)
}

fn host_mask6(len: u8) -> u128 {
    u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)
}

/// The most specific of `routes` that holds `ip`.
pub fn best_route(routes: &[Route], ip: IpAddr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| r.prefix.contains(ip))
        .max_by_key(|r| r.prefix.len())
}

/// Where a connector dials for a flow to `asked`: the best route's translation, refused
/// when it lands on the connector host itself or a network no route should reach by
/// accident — loopback, unspecified, link-local (cloud metadata), multicast, broadcast,
/// also as IPv4-mapped IPv6 — unless that route's own network lies wholly inside such a
/// range (the operator named it on purpose). A broad prefix (`0.0.0.0/0`) therefore
/// never opens the connector's own services.
pub fn dial_target(
    routes: &[Route],
    asked: std::net::SocketAddr,
) -> std::result::Result<std::net::SocketAddr, String> {
    let route = best_route(routes, asked.ip().to_canonical())
        .ok_or_else(|| "outside what this connector serves".to_string())?;
    let ip = route.translate(asked.ip().to_canonical()).to_canonical();
    let network = route.real.unwrap_or(route.prefix);
    if let Some((range, name)) = SPECIAL
        .iter()
        .map(|(r, name)| (parse_prefix(r).expect("valid constant"), *name))
        .find(|(r, _)| r.contains(ip))
        && !range.covers(&network)
    {
        return Err(format!(
            "{ip} is a {name} address: a connector dials it only for a route inside {range}"
        ));
    }
    Ok(std::net::SocketAddr::new(ip, asked.port()))
}

/// Ranges a connector does not dial through a broader route.
const SPECIAL: [(&str, &str); 9] = [
    ("127.0.0.0/8", "loopback"),
    ("0.0.0.0/8", "\"this network\""),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// The candidate a destination goes to: the longest matching prefix wins; among equals
/// the one with the fewest flows; `None` when nobody serves `ip`.
pub fn choose<'a, K>(
    candidates: impl IntoIterator<Item = (K, &'a [Route], usize)>,
    ip: IpAddr,
) -> Option<K> {
    candidates
        .into_iter()
        .filter_map(|(k, routes, flows)| best_route(routes, ip).map(|r| (k, r.prefix.len(), flows)))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|(k, ..)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_keeps_host_bits() {
        let r = Route::mapping("100.64.1.0/24=192.168.1.0/24").unwrap();
        assert_eq!(r.translate(ip("100.64.1.5")), ip("192.168.1.5"));
        let r = Route::mapping("fd00:1::/64=fd99::/64").unwrap();
        assert_eq!(r.translate(ip("fd00:1::7")), ip("fd99::7"));
        assert!(Route::mapping("100.64.1.0/24=192.168.0.0/16").is_err());
        assert!(Route::mapping("100.64.1.0/24=fd00::/24").is_err());
        assert!(Route::mapping("100.64.1.0/24").is_err());
    }

    #[test]
    fn longest_prefix_then_fewest_flows() {
        let wide = [Route::direct(parse_prefix("10.0.0.0/8").unwrap())];
        let narrow = [Route::direct(parse_prefix("10.1.0.0/16").unwrap())];
        let other = [Route::direct(parse_prefix("10.1.0.0/16").unwrap())];
        let c = || {
            [
                ("wide", &wide[..], 0),
                ("narrow", &narrow[..], 5),
                ("other", &other[..], 2),
            ]
        };
        assert_eq!(choose(c(), ip("10.1.2.3")), Some("other"));
        assert_eq!(choose(c(), ip("10.2.2.3")), Some("wide"));
        assert_eq!(choose(c(), ip("192.168.1.1")), None);
    }

    #[test]
    fn routes_survive_the_wire() {
        for r in [
            Route::direct(parse_prefix("192.168.1.7/24").unwrap()),
            Route::mapping("100.64.2.0/24=192.168.1.0/24").unwrap(),
        ] {
            assert_eq!(Route::from_msg(&r.to_msg()), Some(r));
        }
        assert_eq!(
            Route::from_msg(&RouteMsg {
                prefix: "junk".into(),
                real: String::new()
            }),
            None
        );
    }

    /// Hardening finding 12: through a broad route, a client asks the connector for its
    /// own loopback, the unspecified address, an IPv4-mapped loopback, link-local (cloud
    /// metadata) and multicast; all are refused. A route that names such a network on
    /// purpose still reaches it.
    #[test]
    fn a_connector_dials_its_own_host_only_through_a_route_that_names_it() {
        let p = |s: &str| parse_prefix(s).unwrap();
        let broad = [Route::direct(p("0.0.0.0/0")), Route::direct(p("::/0"))];
        let at = |s: &str| -> std::net::SocketAddr { s.parse().unwrap() };
        for refused in [
            "127.0.0.1:22",
            "0.0.0.0:22",
            "[::1]:22",
            "[::]:22",
            "[::ffff:127.0.0.1]:22",
            "169.254.169.254:80",
            "[fe80::1]:22",
            "224.0.0.1:9",
            "255.255.255.255:9",
        ] {
            assert!(dial_target(&broad, at(refused)).is_err(), "{refused}");
        }
        assert_eq!(
            dial_target(&broad, at("10.1.2.3:80")),
            Ok(at("10.1.2.3:80"))
        );
        // A mapping that lands on loopback through a broad real network is refused too.
        let mapped = [Route::mapping("100.64.0.0/8=127.0.0.0/8").unwrap()];
        assert_eq!(
            dial_target(&mapped, at("100.64.0.5:80")),
            Ok(at("127.64.0.5:80")),
            "named on purpose"
        );
        let wide = [Route::mapping("100.0.0.0/6=124.0.0.0/6").unwrap()];
        assert!(
            dial_target(&wide, at("103.0.0.1:80")).is_err(),
            "127.0.0.1 by mapping"
        );
        let named = [Route::direct(p("127.0.0.0/8"))];
        assert!(dial_target(&named, at("127.0.0.1:8080")).is_ok());
    }
}
