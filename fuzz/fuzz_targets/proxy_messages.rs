//! What a proxy peer sends over its gRPC streams: every message decodes to a value or an
//! error, never a panic; decoded values re-encode to themselves; the checks the server and
//! connector make on top (destinations, connector ids, advertised routes and the choice
//! among them) never panic either.
#![no_main]
use culvert_proxy::proto::{ConnectorKind, ConnectorMsg, Frame, Kind, ServerKind, ServerMsg};
use culvert_proxy::routes::{Route, best_route};
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    assert_eq!(M::decode(&m.encode_to_vec()[..]).as_ref(), Ok(m));
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Frame::decode(data) {
        round_trip(&f);
        if let Some(Kind::Open(o)) = &f.kind
            && let Some(a) = culvert_proxy::open_to_addr(o)
        {
            assert_eq!(
                culvert_proxy::open_to_addr(&culvert_proxy::addr_to_open(a)),
                Some(a)
            );
        }
    }
    if let Ok(m) = ConnectorMsg::decode(data) {
        round_trip(&m);
        if let Some(ConnectorKind::Hello(h)) = &m.kind {
            let _ = culvert_proxy::pki::check_connector_id(&h.id);
            let routes: Vec<Route> = h.routes.iter().filter_map(Route::from_msg).collect();
            for r in &routes {
                // A served route's own address is served (by it or a longer one), and
                // translation lands inside the real network.
                let ip = r.prefix.addr();
                let best = best_route(&routes, ip).expect("a prefix covers its own address");
                assert!(best.prefix.len() >= r.prefix.len());
                let real = best.real.unwrap_or(best.prefix);
                assert!(real.contains(best.translate(ip)));
            }
        }
    }
    if let Ok(m) = ServerMsg::decode(data) {
        round_trip(&m);
        if let Some(ServerKind::Dial(d)) = &m.kind {
            let _ = d.target.as_ref().and_then(culvert_proxy::open_to_addr);
        }
    }
});
