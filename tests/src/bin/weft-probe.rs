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
//!
//! `flood ADDR --count N` makes N connections in turn and reports how each
//! ended (`{"refused":…,"reset":…,"closed":…,"answered":…,"timeout":…}`);
//! `hold ADDR --count N` opens N at once, reports how many stayed open
//! (`{"open":…,"closed":…,"refused":…}`), prints `held` and keeps them until
//! its stdin closes.
//!
//! `grpc ADDR say TEXT|count N[/MS]|fail CODE|slow MS [--timeout-ms N]` makes one
//! call to the test gRPC service and reports
//! `{"code":…,"message":…,"replies":[…],"metadata":{…}}`.

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
    let usage = "usage: weft-probe connect ADDR [--send TEXT | --send-size N] [--write-size N] [--hold]\n       \
         weft-probe flood ADDR --count N\n       weft-probe hold ADDR --count N\n       \
         weft-probe grpc ADDR say TEXT|count N[/MS]|fail CODE|slow MS [--timeout-ms N]";
    let (Some(verb), Some(addr)) = (args.first().map(String::as_str), args.get(1)) else {
        return Err(usage.into());
    };
    let addr: SocketAddr = addr.parse().map_err(|err| format!("{addr}: {err}"))?;
    let count = || -> Result<usize, String> {
        match (args.get(2).map(String::as_str), args.get(3)) {
            (Some("--count"), Some(n)) => n.parse().map_err(|_| usage.to_owned()),
            _ => Err(usage.into()),
        }
    };
    match verb {
        "connect" => {}
        "flood" => return Ok(flood(addr, count()?)),
        "hold" => return hold(addr, count()?),
        "grpc" => return grpc(addr, &args[2..]),
        _ => return Err(usage.into()),
    }
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

/// One call to the test gRPC service (`weft_tests::grpc`), reported as its
/// status code, message, replies and response metadata.
fn grpc(addr: SocketAddr, args: &[String]) -> Result<serde_json::Value, String> {
    use weft_tests::grpc::{call, Call};
    let usage =
        "usage: weft-probe grpc ADDR say TEXT|count N[/MS]|fail CODE|slow MS [--timeout-ms N]";
    let (Some(verb), Some(arg)) = (args.first(), args.get(1)) else {
        return Err(usage.into());
    };
    let number = |what: &str| -> Result<u64, String> {
        arg.parse()
            .map_err(|_| format!("{what}: {arg:?} is not a number"))
    };
    let request = match verb.as_str() {
        "say" => Call::Say(arg.clone()),
        // `N`, or `N/MS` for replies MS milliseconds apart.
        "count" => {
            let (n, ms) = arg.split_once('/').unwrap_or((arg, "0"));
            let parse = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("count: {arg:?} is not N or N/MS"))
            };
            Call::Count(parse(n)? as u32, parse(ms)?)
        }
        "fail" => Call::Fail(number("code")? as i32),
        "slow" => Call::Slow(number("delay")?),
        _ => return Err(usage.into()),
    };
    let timeout = match (args.get(2).map(String::as_str), args.get(3)) {
        (Some("--timeout-ms"), Some(ms)) => Some(Duration::from_millis(
            ms.parse().map_err(|_| usage.to_owned())?,
        )),
        (None, _) => None,
        _ => return Err(usage.into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = runtime.block_on(call(addr, request, timeout))?;
    serde_json::to_value(report).map_err(|e| e.to_string())
}

/// How one connection attempt ended.
fn outcome(addr: SocketAddr) -> &'static str {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => return "refused",
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return "reset",
        Err(err) if err.kind() == std::io::ErrorKind::TimedOut => return "timeout",
        Err(err) => {
            eprintln!("weft-probe: connecting to {addr}: {err}");
            return "failed";
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"hello?\r\n\r\n").is_err() {
        return "reset";
    }
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => "closed",
        // A TLS alert record: a TLS server refusing what it was sent.
        Ok(_) if buf[0] == 0x15 => "tls_alert",
        Ok(_) => "answered",
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => "reset",
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "timeout"
        }
        Err(err) => {
            eprintln!("weft-probe: reading from {addr}: {err}");
            "failed"
        }
    }
}

/// `count` connections to `addr`, one after another; how each ended
/// (refused at connect, reset, closed without an answer, answered, timed
/// out).
fn flood(addr: SocketAddr, count: usize) -> serde_json::Value {
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..count {
        *outcomes.entry(outcome(addr)).or_default() += 1;
    }
    serde_json::json!(outcomes)
}

/// Opens `count` connections to `addr` and sends a byte on each; after a
/// moment, reports how many are still open and how many were refused or
/// closed, prints `held`, and keeps them until stdin closes.
fn hold(addr: SocketAddr, count: usize) -> Result<serde_json::Value, String> {
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut stream) => {
                let _ = stream.write_all(b"x");
                held.push(stream);
            }
            Err(_) => refused += 1,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let (mut open, mut closed) = (0, 0);
    let mut buf = [0u8; 16];
    held.retain_mut(|stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        match stream.read(&mut buf) {
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                open += 1;
                true
            }
            _ => {
                closed += 1;
                false
            }
        }
    });
    let report = serde_json::json!({"open": open, "closed": closed, "refused": refused});
    println!("{report}");
    println!("held");
    std::io::stdout().flush().map_err(|err| err.to_string())?;
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    drop(held);
    Ok(report)
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
