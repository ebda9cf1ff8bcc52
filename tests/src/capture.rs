//! Packet captures with tshark on a link of the topology.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::topology::NetNs;

/// A running capture writing a pcapng file.
pub struct PacketCapture {
    child: tokio::process::Child,
    path: PathBuf,
}

impl PacketCapture {
    /// Starts capturing on `interface` inside `netns` into `path`; returns
    /// once tshark reports that it is capturing.
    pub async fn start(netns: &NetNs, interface: &str, path: PathBuf) -> anyhow::Result<Self> {
        // dumpcap itself (tshark's capture engine): stopping it with
        // SIGINT flushes every captured packet to the file.
        let mut cmd = tokio::process::Command::from(netns.command("dumpcap"));
        cmd.args(["-i", interface, "-q", "-w"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .context("starting dumpcap (tshark's package; cargo xtask setup installs it)")?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let started = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("Capturing on") {
                    return anyhow::Ok(());
                }
            }
            bail!("dumpcap exited before capturing")
        })
        .await
        .context("dumpcap did not start capturing within 20 s")?;
        started?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // "Capturing on" comes just before the capture loop starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Self { child, path })
    }

    /// Stops the capture (letting it flush) and returns the file's bytes.
    pub async fn stop(mut self) -> anyhow::Result<Vec<u8>> {
        // Let the last packets reach the capture buffer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            )?;
        }
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("dumpcap did not stop")??;
        Ok(std::fs::read(&self.path)?)
    }

    /// The number of packets in `pcap` (a file) matching a display filter.
    pub async fn count(pcap: &std::path::Path, filter: &str) -> anyhow::Result<usize> {
        let out = tokio::process::Command::new("tshark")
            .args(["-n", "-r"])
            .arg(pcap)
            .args(["-Y", filter])
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "tshark -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
