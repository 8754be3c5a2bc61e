//! Hot functions of the data path: sealing and opening packets (from one thread and from
//! several sharing a session), the replay window, the routing lookup, and FEC's work per
//! message.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use culvert_core::PublicKey;
use culvert_core::aead::{nonce, rustcrypto};
use culvert_core::fec::{Config as FecConfig, Decoder, Encoder, Mode};
use culvert_core::noise::Split;
use culvert_core::replay::ReplayWindow;
use culvert_core::router::Router;
use culvert_core::session::{DataKeys, Session};
use culvert_wire::addr::Prefix;
use culvert_wire::hello::Cipher;

fn aead(c: &mut Criterion) {
    for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
        let mut g = c.benchmark_group(format!("{cipher:?}"));
        let key = rustcrypto(cipher, &[7; 32]);
        for size in [64usize, 1400, 8192] {
            g.throughput(Throughput::Bytes(size as u64));
            let header = [4u8; 16];
            let mut payload = vec![0xa5u8; size];
            let mut tag = [0u8; 16];
            g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
                let mut counter = 0u64;
                b.iter(|| {
                    counter += 1;
                    key.seal(&nonce(counter), &header, black_box(&mut payload), &mut tag);
                });
            });
            let mut sealed = vec![0xa5u8; size];
            key.seal(&nonce(1), &header, &mut sealed, &mut tag);
            g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
                b.iter(|| {
                    let mut p = sealed.clone();
                    key.open(&nonce(1), &header, black_box(&mut p), &tag)
                        .unwrap();
                });
            });
        }
        g.finish();
    }
}

fn replay(c: &mut Criterion) {
    c.bench_function("replay/in_order", |b| {
        let w = ReplayWindow::default();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            w.check(n).unwrap();
            w.mark(black_box(n)).unwrap();
        });
    });
    c.bench_function("replay/reordered", |b| {
        let w = ReplayWindow::default();
        let mut n = 0u64;
        b.iter(|| {
            n += 4;
            for k in [n + 2, n, n + 3, n + 1] {
                let _ = w.mark(black_box(k));
            }
        });
    });
}

fn router(c: &mut Criterion) {
    let mut r = Router::default();
    for i in 0..10_000u32 {
        let a = Ipv4Addr::from(0x0a00_0000 | (i << 2));
        r.insert(Prefix::host(IpAddr::V4(a)), i);
    }
    r.insert("10.0.0.0/8".parse().unwrap(), u32::MAX);
    let probes: Vec<IpAddr> = (0..1024u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i * 37) << 2)))
        .collect();
    c.bench_function("router/lookup_10k_hosts", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(r.lookup(black_box(probes[i])))
        });
    });
}

/// One session's keys sealing and opening 1400-byte packets from 1 and from 2 threads at
/// once (each thread seals a packet and the other end's keys open it): the shared counter
/// and replay window must let a second core add almost a whole core's worth.
fn threads(c: &mut Criterion) {
    const SIZE: usize = 1400;
    let mut g = c.benchmark_group("seal_open_shared_session");
    g.throughput(Throughput::Bytes(SIZE as u64));
    for threads in [1u64, 2] {
        g.bench_with_input(BenchmarkId::new("threads", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                let (tx, rx) = session_pair();
                let per_thread = iters.div_ceil(n);
                // A bench measures wall time; the core's ban on reading the clock is for
                // protocol code.
                #[allow(clippy::disallowed_methods)]
                let start = std::time::Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..n {
                        s.spawn(|| {
                            let mut buf = vec![0u8; SIZE + 64];
                            for _ in 0..per_thread {
                                let r = tx.seal(&mut buf, 0, SIZE).unwrap();
                                black_box(rx.open(&mut buf[r]).unwrap());
                            }
                        });
                    }
                });
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_thread * n) as f64)
            });
        });
    }
    g.finish();
}

/// The two ends' keys of one session.
fn session_pair() -> (Arc<DataKeys>, Arc<DataKeys>) {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let end = |send: u8, recv: u8, local, remote| {
        let split = Split {
            remote_static: PublicKey([0; 32]),
            send: [send; 32],
            recv: [recv; 32],
        };
        Session::new(
            rustcrypto,
            &split,
            Cipher::Aes256Gcm,
            local,
            remote,
            true,
            now,
        )
        .data_keys()
    };
    (end(1, 2, 10, 20), end(2, 1, 20, 10))
}

/// FEC's per-message work beside a seal and an open, 1400-byte messages: what a
/// per-peer sequential stage would hold its lock for. Sending 10:3 (a copy per message,
/// Reed-Solomon parity at each tenth) and `auto` on a clean path (no parity, nothing
/// kept); receiving, the loss meter's count.
fn fec(c: &mut Criterion) {
    const SIZE: usize = 1400;
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let mut g = c.benchmark_group("fec");
    g.throughput(Throughput::Bytes(SIZE as u64));
    let msg = vec![0x5a; SIZE + 32];
    for (name, mode) in [
        ("push_10_3", Mode::Fixed { k: 10, m: 3 }),
        ("push_auto_clean", Mode::Auto),
    ] {
        g.bench_function(name, |b| {
            let mut e = Encoder::new(FecConfig {
                mode,
                ..FecConfig::default()
            });
            let mut counter = 0u64;
            b.iter(|| {
                counter += 1;
                black_box(e.push(now, 1, counter, black_box(&msg)))
            });
        });
    }
    g.bench_function("count", |b| {
        let mut d = Decoder::default();
        let mut counter = 0u64;
        b.iter(|| {
            counter += 1;
            d.count(now, 1, black_box(counter));
        });
    });
    g.finish();
}

criterion_group!(benches, aead, replay, router, threads, fec);
criterion_main!(benches);
