//! `weft-probe`: a tiny TCP client that tests run *as a process of a pod*
//! (inside its network namespace and cgroup, where capture applies), and that
//! reports what it saw as one JSON line.
//!
//! ```text
//! weft-probe connect ADDR [--send TEXT]
//! {"local":"198.18.1.2:40000","peer":"198.18.2.2:8080","socket_cookie":4097,"reply":"..."}
//! ```
//!
//! It connects, sends TEXT, half-closes, reads the reply to EOF and prints
//! the socket's local and peer addresses (the peer is where the kernel really
//! connected, after any capture rewrite) and its socket cookie (the key of
//! ztunnel's original-destination map).

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("weft-probe: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let usage = "usage: weft-probe connect ADDR [--send TEXT]";
    let (Some("connect"), Some(addr)) = (args.first().map(String::as_str), args.get(1)) else {
        return Err(usage.into());
    };
    let addr: SocketAddr = addr.parse().map_err(|err| format!("{addr}: {err}"))?;
    let send = match args.get(2).map(String::as_str) {
        Some("--send") => args.get(3).cloned().ok_or(usage)?,
        Some(other) => return Err(format!("unknown argument {other}; {usage}")),
        None => String::new(),
    };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|err| format!("connecting to {addr}: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|err| err.to_string())?;
    let local = stream.local_addr().map_err(|err| err.to_string())?;
    let peer = stream.peer_addr().map_err(|err| err.to_string())?;
    let cookie = socket_cookie(&stream).map_err(|err| format!("SO_COOKIE: {err}"))?;
    stream
        .write_all(send.as_bytes())
        .and_then(|()| stream.shutdown(Shutdown::Write))
        .map_err(|err| format!("sending to {addr}: {err}"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|err| format!("reading from {addr}: {err}"))?;
    Ok(serde_json::json!({
        "local": local.to_string(),
        "peer": peer.to_string(),
        "socket_cookie": cookie,
        "reply": reply,
    }))
}

/// The socket cookie, as `bpf_get_socket_cookie` sees it. (This tool is a
/// stand-in for an unmodified application, so it depends on nothing of Weft.)
fn socket_cookie(stream: &TcpStream) -> std::io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
