//! The hex examples of docs/PROTOCOL.md, checked against the code.

use culvert_wire::frame::Frame;
use culvert_wire::hello::{Hello, HelloKind};
use culvert_wire::message::{Data, FecParity, emit_fec_header};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// The bytes of the example called `name`.
fn example(name: &str) -> Vec<u8> {
    let marker = format!("<!-- example {name}:");
    let at = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("no example {name} in PROTOCOL.md"));
    let block = &DOC[at..];
    let start = block.find("```hex").expect("hex block") + "```hex".len();
    let end = start + block[start..].find("```").expect("closing fence");
    block[start..end]
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad hex {b:?} in {name}")))
        .collect()
}

#[test]
fn data() {
    let bytes = example("data");
    let d = Data::new_checked(&bytes[..]).unwrap();
    assert_eq!(
        (d.index(), d.counter(), d.payload_len()),
        (0x0102_0304, 7, 4)
    );
    assert_eq!(&bytes[16..20], &[0xde, 0xad, 0xbe, 0xef]);
    let mut built = vec![0u8; bytes.len()];
    let mut v = Data::new_unchecked(&mut built[..]);
    v.set_header(0x0102_0304);
    v.set_counter(7);
    let (_, payload, tag) = v.split_mut();
    payload.copy_from_slice(&bytes[16..20]);
    tag.copy_from_slice(&bytes[20..]);
    assert_eq!(built, bytes);
}

#[test]
fn ping() {
    let bytes = example("ping");
    assert_eq!(
        Frame::parse(&bytes),
        Ok(Frame::Ping {
            seq: 1,
            dir_version: 2
        })
    );
}

#[test]
fn hello() {
    let bytes = example("hello");
    let h = Hello::parse(&bytes).unwrap();
    assert_eq!(h.kind, HelloKind::Join);
    assert_eq!(h.ciphers, 3);
    assert_eq!(h.timestamp, 1);
    assert_eq!(h.addresses, vec!["10.0.0.2/24".parse().unwrap()]);
    assert_eq!(h.routes, vec!["192.168.50.0/24".parse().unwrap()]);
    assert_eq!(h.padding, 2);
    let mut out = Vec::new();
    h.emit(&mut out);
    assert_eq!(out, bytes);
}

#[test]
fn relay() {
    let bytes = example("relay");
    let data = example("data");
    assert_eq!(
        Frame::parse(&bytes),
        Ok(Frame::Relay {
            dest: 5,
            origin: 2,
            hops: 3,
            message: &data
        })
    );
}

#[test]
fn parity() {
    let bytes = example("parity");
    let p = FecParity::new_checked(&bytes[..]).unwrap();
    assert_eq!(
        (p.k(), p.m(), p.j(), p.index(), p.first_counter(), p.shard()),
        (10, 3, 2, 0x0102_0304, 40, &[7u8, 8, 9][..])
    );
    assert_eq!(&bytes[19..], &[0xb0; 16], "the tag follows the shard");
    let mut built = bytes.clone();
    emit_fec_header(&mut built, 10, 3, 2, 0x0102_0304, 40);
    assert_eq!(built, bytes);
}

#[test]
fn loss() {
    let bytes = example("loss");
    let f = Frame::LossReport {
        received: 950,
        expected: 1000,
    };
    assert_eq!(Frame::parse(&bytes), Ok(f.clone()));
    let mut out = Vec::new();
    f.emit(&mut out);
    assert_eq!(out, bytes);
}
