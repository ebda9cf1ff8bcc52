//! iptables capture inside a pod's namespace (the fallback mode).
//!
//! - outbound: TCP the pod sends (except to loopback and from ztunnel's own
//!   marked sockets) is redirected to 15001;
//! - inbound: TCP arriving at the pod, except HBONE on 15008, is redirected
//!   to 15006;
//! - replies to ztunnel's transparent upstream sockets (mark 0x111) are
//!   routed back to ztunnel: the mark is saved on the connection and
//!   restored on the application's packets, and a policy route delivers
//!   marked packets locally.
//!
//! - IPv6: ztunnel carries IPv4 only, so the pod's IPv6 TCP (except on
//!   loopback and excluded ports) is refused both ways rather than let
//!   through uncaptured: outbound connects get a reset, inbound SYNs are
//!   dropped — as eBPF capture does.
//!
//! Rules live in their own chains in the pod's namespace only; the host's
//! tables are never touched.

use std::{io::Write, process::Stdio};

use crate::{
    netns::InpodNetns,
    socket::{MARK_MASK, SKIP_MARK, TPROXY_MARK},
};

/// Routing table that sends marked replies to the local stack.
const TPROXY_TABLE: &str = "100";

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("running {command} in the pod's namespace: {source}; is iptables installed?")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed in the pod's namespace: {stderr}")]
    Failed { command: String, stderr: String },
}

/// The ports iptables redirects to (iptables mode only).
#[derive(Clone, Debug)]
pub struct Redirects {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
    /// Ports left alone both ways.
    pub excluded: Vec<u16>,
}

/// Rules letting each excluded port pass each of `chains`.
fn port_returns(excluded: &[u16], chains: [&str; 2]) -> String {
    excluded
        .iter()
        .flat_map(|port| {
            chains
                .iter()
                .map(move |chain| format!("-A {chain} -p tcp --dport {port} -j RETURN\n"))
        })
        .collect()
}

fn rules(redirects: Option<&Redirects>) -> String {
    let mask = format!("{MARK_MASK:#x}");
    let nat = match redirects {
        Some(Redirects {
            outbound,
            inbound_plaintext,
            hbone,
            excluded,
        }) => {
            let exclusions = port_returns(excluded, ["WEFT_OUTPUT", "WEFT_PREROUTING"]);
            format!(
                "*nat
:WEFT_OUTPUT - [0:0]
:WEFT_PREROUTING - [0:0]
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A PREROUTING -p tcp -j WEFT_PREROUTING
-A WEFT_OUTPUT -m mark --mark {SKIP_MARK:#x}/{mask} -j RETURN
-A WEFT_OUTPUT -m mark --mark {TPROXY_MARK:#x}/{mask} -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
{exclusions}-A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports {outbound}
-A WEFT_PREROUTING -p tcp --dport {hbone} -j RETURN
-A WEFT_PREROUTING -p tcp -j REDIRECT --to-ports {inbound_plaintext}
COMMIT
"
            )
        }
        None => String::new(),
    };
    format!(
        "{nat}*mangle
:WEFT_OUTPUT - [0:0]
-A OUTPUT -j WEFT_OUTPUT
-A WEFT_OUTPUT -m mark --mark {TPROXY_MARK:#x}/{mask} -j CONNMARK --save-mark --nfmask {mask} --ctmask {mask}
-A WEFT_OUTPUT -m connmark --mark {TPROXY_MARK:#x}/{mask} -j CONNMARK --restore-mark --nfmask {mask} --ctmask {mask}
COMMIT
"
    )
}

/// ip6tables rules refusing the pod's IPv6 TCP (iptables mode only).
fn ipv6_rules(excluded: &[u16]) -> String {
    let exclusions = port_returns(excluded, ["WEFT_OUTPUT", "WEFT_INPUT"]);
    format!(
        "*filter
:WEFT_INPUT - [0:0]
:WEFT_OUTPUT - [0:0]
-A INPUT -p tcp -j WEFT_INPUT
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A WEFT_INPUT -i lo -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
{exclusions}-A WEFT_INPUT -p tcp -j DROP
-A WEFT_OUTPUT -p tcp -j REJECT --reject-with tcp-reset
COMMIT
"
    )
}

fn run(
    netns: &InpodNetns,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), IptablesError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn_error = |source| IptablesError::Spawn {
        command: command.clone(),
        source,
    };
    let mut cmd = netns.command(program).map_err(spawn_error)?;
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(spawn_error)?;
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IptablesError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Installs the transparent-reply routing in the pod and, with
/// `redirects`, capture itself (eBPF mode captures without them).
pub fn install(netns: &InpodNetns, redirects: Option<&Redirects>) -> Result<(), IptablesError> {
    // Start from a clean slate if a previous ztunnel left rules behind.
    let _ = uninstall(netns);
    run(
        netns,
        "iptables-restore",
        &["--noflush"],
        Some(&rules(redirects)),
    )?;
    if let Some(redirects) = redirects {
        run(
            netns,
            "ip6tables-restore",
            &["--noflush"],
            Some(&ipv6_rules(&redirects.excluded)),
        )?;
    }
    let mark = format!("{TPROXY_MARK:#x}/{MARK_MASK:#x}");
    run(
        netns,
        "ip",
        &[
            "rule",
            "add",
            "fwmark",
            &mark,
            "pref",
            "32764",
            "lookup",
            TPROXY_TABLE,
        ],
        None,
    )?;
    run(
        netns,
        "ip",
        &[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            TPROXY_TABLE,
        ],
        None,
    )?;
    Ok(())
}

/// Removes capture (the redirects) but keeps the transparent-reply
/// routing, which connections still draining through ztunnel need; it only
/// touches packets of ztunnel's own marked connections.
pub fn uninstall_redirects(netns: &InpodNetns) -> Result<(), IptablesError> {
    remove_chains(
        netns,
        &[
            ("nat", "OUTPUT", "WEFT_OUTPUT"),
            ("nat", "PREROUTING", "WEFT_PREROUTING"),
        ],
    )
    .and(remove_ipv6_chains(netns))
}

/// Removes the IPv6 refusal ([`ipv6_rules`]).
fn remove_ipv6_chains(netns: &InpodNetns) -> Result<(), IptablesError> {
    remove_chains_with(
        netns,
        "ip6tables",
        &[
            ("filter", "INPUT", "WEFT_INPUT"),
            ("filter", "OUTPUT", "WEFT_OUTPUT"),
        ],
    )
}

/// Removes what [`install`] added (pieces already gone are fine).
pub fn uninstall(netns: &InpodNetns) -> Result<(), IptablesError> {
    let chains = remove_chains(
        netns,
        &[
            ("nat", "OUTPUT", "WEFT_OUTPUT"),
            ("nat", "PREROUTING", "WEFT_PREROUTING"),
            ("mangle", "OUTPUT", "WEFT_OUTPUT"),
        ],
    );
    // Absent in eBPF mode, where the kernel programs refuse IPv6.
    let _ = remove_ipv6_chains(netns);
    let mark = format!("{TPROXY_MARK:#x}/{MARK_MASK:#x}");
    let rule = run(
        netns,
        "ip",
        &[
            "rule",
            "del",
            "fwmark",
            &mark,
            "pref",
            "32764",
            "lookup",
            TPROXY_TABLE,
        ],
        None,
    );
    let routes = run(
        netns,
        "ip",
        &["route", "flush", "table", TPROXY_TABLE],
        None,
    );
    chains.and(rule).and(routes)
}

fn remove_chains(netns: &InpodNetns, chains: &[(&str, &str, &str)]) -> Result<(), IptablesError> {
    remove_chains_with(netns, "iptables", chains)
}

/// Unhooks, flushes and deletes each `(table, hook, chain)` with `program`
/// (`iptables` or `ip6tables`); every jump but mangle's matches TCP.
fn remove_chains_with(
    netns: &InpodNetns,
    program: &str,
    chains: &[(&str, &str, &str)],
) -> Result<(), IptablesError> {
    let mut first_error = None;
    for (table, hook, chain) in chains {
        let jump = if *table != "mangle" {
            vec!["-t", table, "-D", hook, "-p", "tcp", "-j", chain]
        } else {
            vec!["-t", table, "-D", hook, "-j", chain]
        };
        for args in [
            jump,
            vec!["-t", table, "-F", chain],
            vec!["-t", table, "-X", chain],
        ] {
            if let Err(err) = run(netns, program, &args, None) {
                first_error.get_or_insert(err);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Excluded ports return before the redirect (IPv4) and before the
    /// refusal (IPv6), both ways.
    #[test]
    fn excluded_ports_pass_before_capture_and_refusal() {
        let redirects = Redirects {
            outbound: 15001,
            inbound_plaintext: 15006,
            hbone: 15008,
            excluded: vec![10250, 9000],
        };
        let v4 = rules(Some(&redirects));
        let v6 = ipv6_rules(&redirects.excluded);
        for (rules, chains, last) in [
            (
                &v4,
                ["WEFT_OUTPUT", "WEFT_PREROUTING"],
                "-j REDIRECT --to-ports 15001",
            ),
            (&v6, ["WEFT_OUTPUT", "WEFT_INPUT"], "-j DROP"),
        ] {
            for chain in chains {
                for port in [10250, 9000] {
                    let rule = format!("-A {chain} -p tcp --dport {port} -j RETURN");
                    let at = rules
                        .find(&rule)
                        .unwrap_or_else(|| panic!("{rule} in {rules}"));
                    assert!(at < rules.find(last).expect("capture rule"), "{rules}");
                }
            }
        }
    }
}
