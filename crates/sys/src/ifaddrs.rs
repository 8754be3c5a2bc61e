//! The addresses of this host's interfaces (`getifaddrs`), for a client's LAN candidates.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use culvert_wire::addr::Prefix;

/// Every interface address: the interface's name and the address.
pub fn interface_addresses() -> Vec<(String, IpAddr)> {
    interface_networks()
        .into_iter()
        .map(|(name, p)| (name, p.addr()))
        .collect()
}

/// Every interface address with its prefix length (the address, not the network: mask
/// with [`Prefix::network`]): what the host reaches directly, its connected networks.
pub fn interface_networks() -> Vec<(String, Prefix)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let Some(ip) = ip_of(ifa.ifa_addr) else {
                continue;
            };
            let mask = if ifa.ifa_netmask.is_null() {
                None
            } else {
                ip_of(ifa.ifa_netmask)
            };
            let len = match mask {
                Some(IpAddr::V4(m)) => u32::from(m).leading_ones() as u8,
                Some(IpAddr::V6(m)) => u128::from(m).leading_ones() as u8,
                None if ip.is_ipv4() => 32,
                None => 128,
            };
            if let Ok(p) = Prefix::new(ip, len) {
                out.push((name, p));
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The IP address in a socket address of family AF_INET or AF_INET6.
///
/// # Safety
/// `sa` points at a valid socket address of the size its family implies.
unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller's contract; each family's struct is read as what it is.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sa = &*sa.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let sa = &*sa.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_listed_with_its_prefix() {
        let all = super::interface_addresses();
        assert!(all.iter().any(|(_, ip)| ip.is_loopback()), "{all:?}");
        let nets = super::interface_networks();
        assert!(
            nets.iter()
                .any(|(_, p)| p.addr().is_loopback() && p.addr().is_ipv4() && p.len() == 8),
            "{nets:?}"
        );
    }
}
