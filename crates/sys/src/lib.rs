//! culvert's Linux I/O: everything that touches the kernel.
//!
//! * [`tun`] — the TUN device (`/dev/net/tun`);
//! * [`netlink`] — addresses, MTU, routes and link state over rtnetlink (no `ip` commands);
//! * [`udp`] — UDP sockets with batched receive and send (`recvmmsg`/`sendmmsg`);
//! * [`raw`] and [`nft`] — FakeTCP's raw and packet sockets, and its nftables table;
//! * [`sockopt`] — socket options, and the large buffers datagram sockets need;
//! * [`sysctl`] — kernel parameters (forwarding, for a gateway);
//! * [`poll`] — epoll, and signals as a file descriptor (signalfd);
//! * [`control`] — the daemon's local control socket (a file under `/run/culvert/<netns>`);
//! * [`dir`] — a directory held open, and files below it reached without following links;
//! * [`privilege`] — dropping root after setup: another user, two capabilities;
//! * [`netns`] — which network namespace this process is in, and entering one;
//! * [`ifaddrs`] — this host's interface addresses (a client's LAN candidates);
//! * [`icmp`] and [`capture`] — ICMP echo and packet capture, for the demo and tests.
//!
//! This is the only crate that may use `unsafe`; each block says why it is sound.

#![warn(missing_docs)]

pub mod capture;
pub mod control;
pub mod dir;
pub mod icmp;
pub mod ifaddrs;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod poll;
pub mod privilege;
pub mod raw;
pub mod sockopt;
pub mod sysctl;
pub mod tun;
pub mod udp;

mod error;

pub(crate) use error::owned_fd;
pub use error::{Error, Result};
