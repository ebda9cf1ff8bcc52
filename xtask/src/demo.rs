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

/// Runs `weft ARGS` (not under `local`), returning stdout.
fn top(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = weft(root).args(args).output().context("running weft")?;
    anyhow::ensure!(
        out.status.success(),
        "weft {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sh -c SCRIPT` in demo/client.
fn client_sh(root: &Path, script: &str) -> anyhow::Result<String> {
    local(root, &["exec", "demo/client", "--", "sh", "-c", script])
}

/// The waypoint part of the tour: deploy one, split, deny, retry, count.
fn waypoint_tour(root: &Path) -> anyhow::Result<()> {
    println!(
        "
$ weft waypoint apply -n demo --enroll-namespace --wait"
    );
    print!(
        "{}",
        top(
            root,
            &[
                "waypoint",
                "apply",
                "-n",
                "demo",
                "--enroll-namespace",
                "--wait"
            ]
        )?
    );
    println!(
        "
$ weft local apply -f examples/waypoint/canary.yaml   (web-v2, a 90/10 split, writes denied)"
    );
    let canary = root.join("examples/waypoint/canary.yaml");
    print!(
        "{}",
        local(root, &["apply", "-f", canary.to_str().expect("UTF-8 path")])?
    );
    // The route reaches the waypoint within moments; wait for it.
    let probe =
        "curl -s -m 5 -o /dev/null -D - http://web.demo/ | tr -d '\\r' | grep -i '^x-version:'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client_sh(root, probe).map_or(true, |o| o.trim().is_empty()) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the canary route did not reach the waypoint in 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    println!(
        "
$ 100 × curl http://web.demo/, counting each answer's x-version"
    );
    let versions = client_sh(root, &format!("for i in $(seq 100); do {probe}; done"))?;
    let count = |v: &str| {
        versions
            .lines()
            .filter(|l| l.trim().eq_ignore_ascii_case(&format!("x-version: {v}")))
            .count()
    };
    println!(
        "  web-v1: {}   web-v2: {}   (weights 90/10)",
        count("v1"),
        count("v2")
    );

    println!(
        "
$ weft local exec demo/client -- curl -s -X POST http://web.demo/   (denied at L7)"
    );
    let denied = client_sh(
        root,
        "curl -s -m 5 -X POST -w ' (%{http_code})' http://web.demo/",
    )?;
    println!("  {}", denied.trim());

    let log = local(root, &["logs", "waypoint-demo/waypoint-0"])?;
    println!(
        "
a retried failure (web-stale has no server; the waypoint tried another endpoint):"
    );
    match log.lines().rev().find(|l| {
        l.contains("request complete")
            && l.contains("attempts=2")
            && l.contains("response_code=200")
    }) {
        Some(line) => println!(
            "  {} {} → {} after {} attempts, from {}",
            field(line, "method"),
            field(line, "path"),
            field(line, "response_code"),
            field(line, "attempts"),
            field(line, "upstream_host")
        ),
        None => println!("  (no request picked web-stale this time)"),
    }

    println!(
        "
$ the waypoint's istio_requests_total (reporter=\"waypoint\"), by destination and code"
    );
    let metrics = local(
        root,
        &[
            "exec",
            "demo/waypoint-0",
            "--",
            "curl",
            "-s",
            "-m",
            "5",
            "http://127.0.0.1:15020/stats/prometheus",
        ],
    )?;
    let label = |line: &str, name: &str| {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    let mut totals: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *totals
            .entry((
                label(line, "destination_workload"),
                label(line, "response_code"),
            ))
            .or_default() += value;
    }
    for ((workload, code), value) in totals {
        println!("  destination_workload={workload:<10} response_code={code}  {value}");
    }
    Ok(())
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

    waypoint_tour(root)?;

    println!(
        "\nThe mesh keeps running. Explore it:
  weft local status
  weft local exec demo/client -- curl -s http://web.demo/
  weft local logs ztunnel-n1        (access log: one line per connection)
  weft local logs demo/web
  weft waypoint list -n demo / weft waypoint status -n demo
  weft waypoint config routes|policies|backends -n demo
  weft local logs waypoint-demo/waypoint-0   (one line per request)
  weft local apply -f FILE / weft local delete -f FILE
and tear it down with:
  weft local down
(the binary is target/debug/weft)"
    );
    Ok(())
}
