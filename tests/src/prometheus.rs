//! Debian's real Prometheus, run in a test's network namespace to scrape
//! a proxy and answer PromQL: dashboards read metrics through Prometheus,
//! so tests do too.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{anyhow, Context};
use tokio::process::Child;

use crate::processes::{command_in, eventually, http_get};

/// A Prometheus server scraping `targets` every second.
pub struct Prometheus {
    child: Child,
    netns: Option<String>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// One series of a query's answer: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }
}

impl Prometheus {
    /// Starts Prometheus in `netns` (the host's when `None`), listening on
    /// `127.0.0.1:19090` there, scraping `path` on each of `targets`.
    pub async fn start(
        netns: Option<&str>,
        targets: &[SocketAddr],
        path: &str,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: mesh\n  metrics_path: {path}\n  static_configs: [{{targets: [{}]}}]\n",
            list.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr: SocketAddr = "127.0.0.1:19090".parse()?;
        let mut cmd = command_in(netns, Path::new("/usr/bin/prometheus"))?;
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting /usr/bin/prometheus")?;
        let this = Self {
            child,
            netns: netns.map(str::to_owned),
            addr,
            _dir: dir,
        };
        eventually("Prometheus ready", Duration::from_secs(30), || async {
            let (status, _) = http_get(this.netns.as_deref(), this.addr, "/-/ready")
                .await
                .ok()?;
            (status == 200).then_some(())
        })
        .await?;
        Ok(this)
    }

    /// The instant vector `promql` evaluates to now.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = http_get(self.netns.as_deref(), self.addr, &path).await?;
        anyhow::ensure!(
            status == 200,
            "Prometheus answered {status} to {promql}: {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let result = json["data"]["result"]
            .as_array()
            .ok_or_else(|| anyhow!("no result in {body}"))?;
        result
            .iter()
            .map(|series| {
                Ok(Sample {
                    labels: series["metric"].as_object().cloned().unwrap_or_default(),
                    value: series["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| anyhow!("no value in {series}"))?,
                })
            })
            .collect()
    }

    /// Waits up to `within` for `promql` to give a non-empty answer that
    /// `accept` takes.
    pub async fn wait_for(
        &self,
        promql: &str,
        within: Duration,
        accept: impl Fn(&[Sample]) -> bool,
    ) -> anyhow::Result<Vec<Sample>> {
        let mut last = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(samples) = self.query(promql).await {
                if !samples.is_empty() && accept(&samples) {
                    return Ok(samples);
                }
                last = samples;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("after {within:?}, {promql} gave {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
