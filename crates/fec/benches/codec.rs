//! Encode and decode throughput of the group shapes FEC uses, on 1400-byte shards.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use culvert_fec::Codec;

fn shapes(c: &mut Criterion) {
    let mut g = c.benchmark_group("fec");
    for (k, m) in [(10usize, 3usize), (20, 5), (20, 10)] {
        let len = 1400;
        let codec = Codec::new(k, m).unwrap();
        let data: Vec<Vec<u8>> = (0..k)
            .map(|i| (0..len).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let mut parity = vec![vec![0u8; len]; m];
        g.throughput(Throughput::Bytes((k * len) as u64));
        g.bench_with_input(
            BenchmarkId::new("encode", format!("{k}:{m}")),
            &k,
            |b, _| {
                let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                b.iter(|| {
                    let mut p: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
                    codec.encode(black_box(&refs), &mut p).unwrap();
                });
            },
        );
        // Lose `m` data shards and rebuild them from the parity.
        g.bench_with_input(
            BenchmarkId::new("decode", format!("{k}:{m}")),
            &k,
            |b, _| {
                let mut all: Vec<Vec<u8>> =
                    data.iter().cloned().chain(parity.iter().cloned()).collect();
                let present: Vec<bool> = (0..k + m).map(|i| i >= m).collect();
                b.iter(|| {
                    let mut refs: Vec<&mut [u8]> = all.iter_mut().map(Vec::as_mut_slice).collect();
                    codec.reconstruct(black_box(&mut refs), &present).unwrap();
                });
            },
        );
        // Encode, lose `m` data shards, decode: the whole cost of one protected group.
        g.bench_with_input(
            BenchmarkId::new("encode+decode", format!("{k}:{m}")),
            &k,
            |b, _| {
                let mut all: Vec<Vec<u8>> =
                    data.iter().cloned().chain(parity.iter().cloned()).collect();
                let mut present = vec![true; k + m];
                for p in present.iter_mut().take(m) {
                    *p = false;
                }
                b.iter(|| {
                    {
                        let (d, p) = all.split_at_mut(k);
                        let refs: Vec<&[u8]> = d.iter().map(Vec::as_slice).collect();
                        let mut p: Vec<&mut [u8]> = p.iter_mut().map(Vec::as_mut_slice).collect();
                        codec.encode(&refs, &mut p).unwrap();
                    }
                    let mut refs: Vec<&mut [u8]> = all.iter_mut().map(Vec::as_mut_slice).collect();
                    codec.reconstruct(black_box(&mut refs), &present).unwrap();
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, shapes);
criterion_main!(benches);
