//! `weft-probe`: a tiny TCP client that tests run *as a process of a pod*
//! (inside its network namespace and cgroup, where capture applies), and that
//! reports what it saw as one JSON line.
//!
//! ```text
//! weft-probe connect ADDR [--send TEXT | --send-size N] [--write-size N] [--hold]
//! {"local":"198.18.1.2:40000","peer":"198.18.2.2:8080","socket_cookie":4097,"reply":"..."}
//! ```
//!
//! It connects, sends TEXT, half-closes, reads the reply to EOF and prints
//! the socket's local and peer addresses (the peer is where the kernel really
//! connected, after any capture rewrite) and its socket cookie (the key of
//! ztunnel's original-destination map). With `--hold` it prints `connected`
//! once it has sent, and half-closes only when its stdin closes. With
//! `--send-size N` it sends N bytes of [`pattern`] instead of TEXT. With
//! `--write-size N` it sends in writes of N bytes, each its own segment
//! (`TCP_NODELAY`).

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
    let usage =
        "usage: weft-probe connect ADDR [--send TEXT | --send-size N] [--write-size N] [--hold]";
    let (Some("connect"), Some(addr)) = (args.first().map(String::as_str), args.get(1)) else {
        return Err(usage.into());
    };
    let addr: SocketAddr = addr.parse().map_err(|err| format!("{addr}: {err}"))?;
    let mut send = String::new();
    let mut hold = false;
    let mut write_size = None;
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--send" => send = rest.next().cloned().ok_or(usage)?,
            "--send-size" => {
                let size: usize = rest.next().and_then(|n| n.parse().ok()).ok_or(usage)?;
                send = pattern(size);
            }
            "--write-size" => {
                let size: usize = rest.next().and_then(|n| n.parse().ok()).ok_or(usage)?;
                write_size = Some(size.max(1));
            }
            "--hold" => hold = true,
            other => return Err(format!("unknown argument {other}; {usage}")),
        }
    }
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|err| format!("connecting to {addr}: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|err| err.to_string())?;
    let local = stream.local_addr().map_err(|err| err.to_string())?;
    let peer = stream.peer_addr().map_err(|err| err.to_string())?;
    let cookie = socket_cookie(&stream).map_err(|err| format!("SO_COOKIE: {err}"))?;
    let chunk = match write_size {
        Some(size) => {
            stream.set_nodelay(true).map_err(|err| err.to_string())?;
            size
        }
        None => send.len().max(1),
    };
    for piece in send.as_bytes().chunks(chunk) {
        stream
            .write_all(piece)
            .map_err(|err| format!("sending to {addr}: {err}"))?;
    }
    if hold {
        println!("connected");
        std::io::stdout().flush().map_err(|err| err.to_string())?;
        // Until stdin closes.
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    }
    stream
        .shutdown(Shutdown::Write)
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

/// `size` bytes of digits, `0123456789` repeated: a payload whose every
/// byte is checkable.
fn pattern(size: usize) -> String {
    (0..size)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect()
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
