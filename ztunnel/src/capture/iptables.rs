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

/// Which of Weft's jumps are in the built-in chains already: those are
/// kept, so that replacing the rules leaves no instant without them.
#[derive(Clone, Copy, Debug, Default)]
struct Hooked {
    nat_output: bool,
    nat_prerouting: bool,
    mangle_output: bool,
}

/// `line`, unless the jump it adds is there already.
fn jump(present: bool, line: &str) -> &str {
    if present {
        ""
    } else {
        line
    }
}

fn rules(redirects: Option<&Redirects>, hooked: Hooked) -> String {
    let mask = format!("{MARK_MASK:#x}");
    let nat = match redirects {
        Some(Redirects {
            outbound,
            inbound_plaintext,
            hbone,
            excluded,
        }) => {
            let exclusions = port_returns(excluded, ["WEFT_OUTPUT", "WEFT_PREROUTING"]);
            let output_jump = jump(hooked.nat_output, "-A OUTPUT -p tcp -j WEFT_OUTPUT\n");
            let prerouting_jump = jump(
                hooked.nat_prerouting,
                "-A PREROUTING -p tcp -j WEFT_PREROUTING\n",
            );
            format!(
                "*nat
:WEFT_OUTPUT - [0:0]
:WEFT_PREROUTING - [0:0]
{output_jump}{prerouting_jump}-A WEFT_OUTPUT -m mark --mark {SKIP_MARK:#x}/{mask} -j RETURN
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
    let mangle_jump = jump(hooked.mangle_output, "-A OUTPUT -j WEFT_OUTPUT\n");
    format!(
        "{nat}*mangle
:WEFT_OUTPUT - [0:0]
{mangle_jump}-A WEFT_OUTPUT -m mark --mark {TPROXY_MARK:#x}/{mask} -j CONNMARK --save-mark --nfmask {mask} --ctmask {mask}
-A WEFT_OUTPUT -m connmark --mark {TPROXY_MARK:#x}/{mask} -j CONNMARK --restore-mark --nfmask {mask} --ctmask {mask}
COMMIT
"
    )
}

/// ip6tables rules refusing the pod's IPv6 TCP (iptables mode only).
fn ipv6_rules(excluded: &[u16], hooked: (bool, bool)) -> String {
    let exclusions = port_returns(excluded, ["WEFT_OUTPUT", "WEFT_INPUT"]);
    let input_jump = jump(hooked.0, "-A INPUT -p tcp -j WEFT_INPUT\n");
    let output_jump = jump(hooked.1, "-A OUTPUT -p tcp -j WEFT_OUTPUT\n");
    format!(
        "*filter
:WEFT_INPUT - [0:0]
:WEFT_OUTPUT - [0:0]
{input_jump}{output_jump}-A WEFT_INPUT -i lo -j RETURN
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
) -> Result<String, IptablesError> {
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
        .stdout(Stdio::piped())
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
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
    if redirects.is_none() {
        // eBPF mode captures without redirects: any an iptables-mode
        // ztunnel left behind go.
        let _ = uninstall_redirects(netns);
    }
    // Rules a previous ztunnel left (a restart, a rolling update: the old
    // one still running) are replaced in place, each table in one atomic
    // commit that refills Weft's chains while the jumps into them stay: no
    // instant without capture.
    let hooked = |program: &str, table: &str, hook: &str, chain: &str| {
        let mut args = vec!["-t", table, "-C", hook];
        if table != "mangle" {
            args.extend(["-p", "tcp"]);
        }
        args.extend(["-j", chain]);
        run(netns, program, &args, None).is_ok()
    };
    let present = Hooked {
        nat_output: hooked("iptables", "nat", "OUTPUT", "WEFT_OUTPUT"),
        nat_prerouting: hooked("iptables", "nat", "PREROUTING", "WEFT_PREROUTING"),
        mangle_output: hooked("iptables", "mangle", "OUTPUT", "WEFT_OUTPUT"),
    };
    run(
        netns,
        "iptables-restore",
        &["--noflush"],
        Some(&rules(redirects, present)),
    )?;
    if let Some(redirects) = redirects {
        let present6 = (
            hooked("ip6tables", "filter", "INPUT", "WEFT_INPUT"),
            hooked("ip6tables", "filter", "OUTPUT", "WEFT_OUTPUT"),
        );
        run(
            netns,
            "ip6tables-restore",
            &["--noflush"],
            Some(&ipv6_rules(&redirects.excluded, present6)),
        )?;
    }
    let mark = format!("{TPROXY_MARK:#x}/{MARK_MASK:#x}");
    let rules = run(netns, "ip", &["rule", "show", "pref", "32764"], None)?;
    if rules.trim().is_empty() {
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
    }
    run(
        netns,
        "ip",
        &[
            "route",
            "replace",
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
    chains.and(rule.map(drop)).and(routes.map(drop))
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
            if let Err(err) = run(netns, program, &args, None).map(drop) {
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
        let v4 = rules(Some(&redirects), Hooked::default());
        let v6 = ipv6_rules(&redirects.excluded, (false, false));
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

    /// Replacing rules a ztunnel left keeps its jumps (none is added
    /// twice), while Weft's chains are declared, and so refilled, either
    /// way.
    #[test]
    fn jumps_already_there_are_kept_not_repeated() {
        let redirects = Redirects {
            outbound: 15001,
            inbound_plaintext: 15006,
            hbone: 15008,
            excluded: vec![],
        };
        let jumps = [
            "-A OUTPUT -p tcp -j WEFT_OUTPUT",
            "-A PREROUTING -p tcp -j WEFT_PREROUTING",
            "-A OUTPUT -j WEFT_OUTPUT",
        ];
        let fresh = rules(Some(&redirects), Hooked::default());
        let all = Hooked {
            nat_output: true,
            nat_prerouting: true,
            mangle_output: true,
        };
        let replaced = rules(Some(&redirects), all);
        for jump in jumps {
            assert!(fresh.lines().any(|l| l == jump), "{jump} in {fresh}");
            assert!(!replaced.lines().any(|l| l == jump), "{jump} in {replaced}");
        }
        for rules in [&fresh, &replaced] {
            assert!(rules.contains(":WEFT_OUTPUT - [0:0]") && rules.contains("-j REDIRECT"));
        }
        let v6 = ipv6_rules(&[], (true, false));
        assert!(!v6.contains("-A INPUT -p tcp -j WEFT_INPUT"));
        assert!(v6.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT"));
    }
}
