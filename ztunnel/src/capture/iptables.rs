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

fn rules(outbound_port: u16, inbound_plaintext_port: u16, hbone_port: u16) -> String {
    let mask = format!("{MARK_MASK:#x}");
    format!(
        "*nat
:WEFT_OUTPUT - [0:0]
:WEFT_PREROUTING - [0:0]
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A PREROUTING -p tcp -j WEFT_PREROUTING
-A WEFT_OUTPUT -m mark --mark {SKIP_MARK:#x}/{mask} -j RETURN
-A WEFT_OUTPUT -m mark --mark {TPROXY_MARK:#x}/{mask} -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
-A WEFT_OUTPUT -p tcp -j REDIRECT --to-ports {outbound_port}
-A WEFT_PREROUTING -p tcp --dport {hbone_port} -j RETURN
-A WEFT_PREROUTING -p tcp -j REDIRECT --to-ports {inbound_plaintext_port}
COMMIT
*mangle
:WEFT_OUTPUT - [0:0]
-A OUTPUT -j WEFT_OUTPUT
-A WEFT_OUTPUT -m mark --mark {TPROXY_MARK:#x}/{mask} -j CONNMARK --save-mark --nfmask {mask} --ctmask {mask}
-A WEFT_OUTPUT -m connmark --mark {TPROXY_MARK:#x}/{mask} -j CONNMARK --restore-mark --nfmask {mask} --ctmask {mask}
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

/// Installs capture and the transparent-reply routing in the pod.
pub fn install(
    netns: &InpodNetns,
    outbound_port: u16,
    inbound_plaintext_port: u16,
    hbone_port: u16,
) -> Result<(), IptablesError> {
    // Start from a clean slate if a previous ztunnel left rules behind.
    let _ = uninstall(netns);
    run(
        netns,
        "iptables-restore",
        &["--noflush"],
        Some(&rules(outbound_port, inbound_plaintext_port, hbone_port)),
    )?;
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

/// Removes what [`install`] added (pieces already gone are fine).
pub fn uninstall(netns: &InpodNetns) -> Result<(), IptablesError> {
    let mut first_error = None;
    let mut note = |r: Result<(), IptablesError>| {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    };
    for (table, hook, chain) in [
        ("nat", "OUTPUT", "WEFT_OUTPUT"),
        ("nat", "PREROUTING", "WEFT_PREROUTING"),
        ("mangle", "OUTPUT", "WEFT_OUTPUT"),
    ] {
        let jump = if table == "nat" {
            vec!["-t", table, "-D", hook, "-p", "tcp", "-j", chain]
        } else {
            vec!["-t", table, "-D", hook, "-j", chain]
        };
        note(run(netns, "iptables", &jump, None));
        note(run(netns, "iptables", &["-t", table, "-F", chain], None));
        note(run(netns, "iptables", &["-t", table, "-X", chain], None));
    }
    let mark = format!("{TPROXY_MARK:#x}/{MARK_MASK:#x}");
    note(run(
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
    ));
    note(run(
        netns,
        "ip",
        &["route", "flush", "table", TPROXY_TABLE],
        None,
    ));
    first_error.map_or(Ok(()), Err)
}
