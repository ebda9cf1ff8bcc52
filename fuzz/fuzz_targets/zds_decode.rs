//! Arbitrary bytes as a datagram from a node agent (or, for the answers, from
//! ztunnel): decoding must refuse what is malformed, close descriptors it
//! does not take, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_zds::{
    messages::{decode_ack, decode_hello, Request},
    wire::Datagram,
};

fuzz_target!(|data: &[u8]| {
    // The first byte says how many descriptors ride along (0 to 2) and
    // whether the kernel reported truncation; the rest is the datagram.
    let Some((&shape, bytes)) = data.split_first() else {
        return;
    };
    let fds = (0..shape % 3)
        .filter_map(|_| std::fs::File::open("/dev/null").ok().map(Into::into))
        .collect();
    let datagram = Datagram {
        bytes: bytes.to_vec(),
        fds,
        truncated: shape & 0x80 != 0,
    };
    let _ = Request::decode(datagram);
    let _ = decode_ack(bytes);
    let _ = decode_hello(bytes);
});
