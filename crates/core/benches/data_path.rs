//! Hot functions of the data path: sealing and opening packets, the replay window, and the
//! routing lookup.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use culvert_core::aead::{nonce, rustcrypto};
use culvert_core::replay::ReplayWindow;
use culvert_core::router::Router;
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
        let mut w = ReplayWindow::default();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            w.check(n).unwrap();
            w.mark(black_box(n)).unwrap();
        });
    });
    c.bench_function("replay/reordered", |b| {
        let mut w = ReplayWindow::default();
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

criterion_group!(benches, aead, replay, router);
criterion_main!(benches);
