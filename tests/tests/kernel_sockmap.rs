//! Why ztunnel never puts an *application's* socket in a socket map (the
//! `sk_msg` redirect between the app's socket and ztunnel's that Merbridge
//! uses), checked against this kernel.
//!
//! A TCP socket in a sockmap gets the kernel's `tcp_bpf` receive path. A
//! *blocking* `recv()` sleeping on it is woken whenever the socket frees
//! send room too (the socket's one wait queue), and `tcp_bpf` then returns
//! `EAGAIN` instead of sleeping on: any full-duplex blocking application
//! (a reader thread beside a writer thread) would fail. No program needs to
//! be attached: membership alone swaps the receive path. (A peer's close is
//! handled: the read returns 0.)
//!
//! If this test fails because the kernel now returns 0, the kernel is fixed:
//! the app-socket redirect can be built (see DEVELOPERS.md, "Capture").

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use weft_tests::privilege::require_privileged;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;

/// `union bpf_attr` as `BPF_MAP_CREATE` reads it (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    rest: [u64; 14],
}

/// `union bpf_attr` as `BPF_MAP_UPDATE_ELEM` reads it.
#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A fresh sockmap holding `socket` at index 0.
fn into_sockmap(socket: RawFd) -> std::io::Result<OwnedFd> {
    let mut create = MapCreate {
        map_type: BPF_MAP_TYPE_SOCKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        ..MapCreate::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut create)?;
    // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else owns.
    let map = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let (key, value) = (0u32, socket as u32);
    let mut update = MapUpdate {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut update)?;
    Ok(map)
}

/// What a blocking `read()` returns on one loopback connection while
/// another thread writes 16 MiB on the same socket (a full-duplex
/// application) and the peer drains it slowly, then answers `done`; with the
/// reader's socket in a sockmap or not.
fn blocking_read_while_writing(in_sockmap: bool) -> std::io::Result<usize> {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 256;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut reader = TcpStream::connect(listener.local_addr()?)?;
    let (mut peer, _) = listener.accept()?;
    let _map = in_sockmap
        .then(|| into_sockmap(reader.as_raw_fd()))
        .transpose()?;
    let mut writer = reader.try_clone()?;
    let writing = std::thread::spawn(move || {
        let chunk = vec![0u8; CHUNK];
        (0..CHUNKS).try_for_each(|_| writer.write_all(&chunk))
    });
    let draining = std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0;
        while total < CHUNK * CHUNKS {
            // Slowly, so the writer waits for room and is woken as it frees.
            std::thread::sleep(Duration::from_micros(200));
            match peer.read(&mut buf)? {
                0 => break,
                n => total += n,
            }
        }
        peer.write_all(b"done")
    });
    let mut buf = [0u8; 64];
    let result = reader.read(&mut buf);
    // Whatever the read returned, the other two threads end.
    let _ = reader.shutdown(Shutdown::Both);
    let _ = writing.join();
    let _ = draining.join();
    result
}

#[test]
fn a_blocking_reader_in_a_sockmap_gets_eagain_when_its_socket_frees_send_room() {
    require_privileged();
    // Outside a sockmap: the read waits for the peer's answer.
    assert_eq!(
        blocking_read_while_writing(false).expect("plain blocking read"),
        4
    );
    // Inside one: the write-space wakeup ends the blocking read with EAGAIN.
    match blocking_read_while_writing(true) {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
        other => panic!(
            "a blocking read in a sockmap returned {other:?}, not EAGAIN: this kernel's \
             tcp_bpf receive path no longer fails blocking readers on write-space wakeups, \
             so application sockets could now be redirected with sk_msg (revisit \
             DEVELOPERS.md, \"Capture\")"
        ),
    }
}
