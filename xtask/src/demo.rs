//! `cargo xtask demo`: the tour of what Weft does today, on `weft local`.

use std::{path::Path, process::Command};

use anyhow::Context;

use crate::{cargo, run_cmd};

fn weft(root: &Path) -> Command {
    Command::new(root.join("target/debug/weft"))
}

/// Runs `weft local ARGS`, returning stdout (failing with its stderr).
fn local(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = weft(root)
        .arg("local")
        .args(args)
        .output()
        .context("running weft")?;
    anyhow::ensure!(
        out.status.success(),
        "weft local {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of `key=` in an access-log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
        .trim_matches('"')
}

fn last_access(root: &Path, log: &str, direction: &str) -> anyhow::Result<String> {
    let text = local(root, &["logs", log])?;
    text.lines()
        .rev()
        .find(|l| {
            l.contains("connection complete") && l.contains(&format!("direction=\"{direction}\""))
        })
        .map(str::to_owned)
        .with_context(|| format!("no {direction} access log in {log}"))
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    run_cmd(cargo(root).args(["build", "--workspace", "--bins"]))?;
    // A mesh left from an earlier demo goes first.
    let _ = weft(root).args(["local", "down"]).output();
    println!("\n$ weft local up -f examples/local");
    let examples = root.join("examples/local");
    print!(
        "{}",
        local(root, &["up", "-f", examples.to_str().expect("UTF-8 path")])?
    );

    println!("\n$ weft local exec demo/client -- curl -s http://web.demo/");
    let page = local(
        root,
        &[
            "exec",
            "demo/client",
            "--",
            "curl",
            "-s",
            "-m",
            "10",
            "http://web.demo/",
        ],
    )?;
    println!(
        "{}",
        page.lines()
            .find(|l| l.contains("<title>"))
            .unwrap_or("(no title)")
            .trim()
    );
    let out = last_access(root, "ztunnel-n1", "outbound")?;
    let inb = last_access(root, "ztunnel-n2", "inbound")?;
    println!("\nthe request's path:");
    println!(
        "  demo/client  {}  as {}",
        field(&out, "src.addr"),
        field(&out, "src.identity")
    );
    println!(
        "    → captured into ztunnel on n1 (outbound, for {} = {})",
        field(&out, "dst.addr"),
        field(&out, "dst.service")
    );
    println!(
        "    → HBONE: HTTP/2 CONNECT over mTLS to {}",
        field(&out, "dst.hbone_addr")
    );
    println!(
        "    → ztunnel on n2 verified the client as {}",
        field(&inb, "src.identity")
    );
    println!(
        "    → demo/web  {}  as {}",
        field(&inb, "dst.addr"),
        field(&inb, "dst.identity")
    );
    let web_log = local(root, &["logs", "demo/web"])?;
    if let Some(line) = web_log.lines().rev().find(|l| l.contains("GET /")) {
        println!("  the web server logged: {line}");
    }

    println!("\n$ weft local exec legacy/outsider -- curl -s -o /dev/null -w '%{{http_code}}' http://web.demo/   (outside the mesh → in)");
    println!(
        "{}",
        local(
            root,
            &[
                "exec",
                "legacy/outsider",
                "--",
                "curl",
                "-s",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://web.demo/"
            ]
        )?
    );
    let outsider_ip = local(
        root,
        &["exec", "legacy/outsider", "--", "sh", "-c", "echo $POD_IP"],
    )?;
    let url = format!("http://{}:8000/", outsider_ip.trim());
    println!("\n$ weft local exec demo/client -- curl -s -o /dev/null -w '%{{http_code}}' {url}   (in the mesh → out: passthrough)");
    println!(
        "{}",
        local(
            root,
            &[
                "exec",
                "demo/client",
                "--",
                "curl",
                "-s",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url
            ]
        )?
    );

    println!(
        "\nThe mesh keeps running. Explore it:
  weft local status
  weft local exec demo/client -- curl -s http://web.demo/
  weft local logs ztunnel-n1        (access log: one line per connection)
  weft local logs demo/web
  weft local apply -f FILE / weft local delete -f FILE
and tear it down with:
  weft local down
(the binary is target/debug/weft)"
    );
    Ok(())
}
