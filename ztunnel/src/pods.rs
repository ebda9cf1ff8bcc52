//! The enrolled pods: for each, capture rules and ztunnel's three
//! listeners inside its network namespace.
//!
//! Adding a pod is idempotent (the same uid and namespace again changes
//! nothing; a new namespace for a known uid replaces the old one). Removing
//! a pod closes its listeners; connections already established finish on
//! their own (they hold their sockets), which is the drain.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex},
};

use serde::Serialize;
use tokio::task::JoinHandle;
use weft_proto::spiffe::Identity;

use crate::{
    capture::{
        ebpf::{netns_cookie_of, NetnsCookie},
        CaptureError, PodNetwork,
    },
    inbound,
    netns::InpodNetns,
    outbound,
    proxy::{PodContext, PodInfo, Proxy},
    socket,
};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod {uid}: its network namespace descriptor is unusable: {source}")]
    Netns {
        uid: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {uid}: installing capture failed: {source}")]
    Capture {
        uid: String,
        #[source]
        source: Box<CaptureError>,
    },
    #[error("pod {uid}: listening on {addr} inside the pod failed: {source}; is another ztunnel serving it?")]
    Listen {
        uid: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {uid}: service account {service_account:?} or namespace {namespace:?} does not make an identity: {reason}")]
    Identity {
        uid: String,
        namespace: String,
        service_account: String,
        reason: String,
    },
    #[error("pod {uid}: the network namespace given is ztunnel's own, not a pod's; refused")]
    OwnNetns { uid: String },
    #[error(
        "pod {uid}: its network namespace does not hold {ip}, the address the control service \
         gives this pod; the node agent sent another pod's namespace (refused)"
    )]
    NotInNetns { uid: String, ip: std::net::IpAddr },
    #[error(
        "pod {uid}: its network namespace has no address yet; ztunnel takes a pod once its \
         network is set up (after the primary CNI plugin)"
    )]
    NoAddress { uid: String },
    #[error(
        "pod {uid}: address {ip} belongs to enrolled pod {owner}; refused until that pod is \
         released (an address reused before its old pod was removed?)"
    )]
    AddressInUse {
        uid: String,
        ip: std::net::IpAddr,
        owner: String,
    },
    #[error(
        "pod {uid}: the node agent says service account {given:?}, the control service says \
         {expected:?}; refused"
    )]
    ServiceAccount {
        uid: String,
        given: String,
        expected: String,
    },
}

struct Running {
    ctx: Arc<PodContext>,
    tasks: Vec<JoinHandle<()>>,
    /// ztunnel's inbound plaintext listener in the pod, for putting its
    /// capture back.
    plaintext: Arc<OwnedFd>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What `/config_dump` shows about an enrolled pod.
#[derive(Clone, Debug, Serialize)]
pub struct PodSummary {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub ips: Vec<std::net::IpAddr>,
}

/// The pods this ztunnel serves.
pub struct Pods {
    proxy: Arc<Proxy>,
    own_netns: Arc<OwnedFd>,
    own_netns_inode: u64,
    running: Mutex<HashMap<String, Running>>,
    /// Adds and removes one at a time, so that checking a pod's addresses
    /// and taking them cannot interleave with another pod's.
    changes: tokio::sync::Mutex<()>,
}

impl Pods {
    pub fn new(proxy: Arc<Proxy>, own_netns: Arc<OwnedFd>) -> Self {
        use std::os::unix::fs::MetadataExt;
        let own_netns_inode = own_netns
            .try_clone()
            .and_then(|fd| std::fs::File::from(fd).metadata())
            .map(|m| m.ino())
            .unwrap_or(0);
        Self {
            proxy,
            own_netns,
            own_netns_inode,
            running: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks what the node agent says about a pod against what ztunnel can
    /// see for itself: the namespace is a pod's, its addresses belong to no
    /// other enrolled pod, and the control service, when it knows the pod,
    /// gives it the same service account.
    ///
    /// When the control service gives the pod an address this namespace
    /// does not hold, the add is refused if it would replace a running pod
    /// whose namespace does hold it (the node agent naming the wrong
    /// namespace). Otherwise the pod is taken, captured, but held: its
    /// description may be stale, as when kubelet recreates a pod's sandbox
    /// (after a node reboots, say) and writes its new address only after
    /// the CNI ADD returns. Until the description agrees with the
    /// namespace, the pod's connections are refused both ways (see
    /// [`Proxy::pod_workload`]).
    fn check(&self, info: &PodInfo, netns: &InpodNetns) -> Result<(), PodError> {
        let uid = || info.uid.clone();
        if netns.inode() == self.own_netns_inode {
            return Err(PodError::OwnNetns { uid: uid() });
        }
        if info.ips.is_empty() {
            return Err(PodError::NoAddress { uid: uid() });
        }
        let running = self.running.lock().expect("pods lock");
        for other in running.values().filter(|r| r.ctx.info.uid != info.uid) {
            if let Some(ip) = info.ips.iter().find(|ip| other.ctx.owns(**ip)) {
                return Err(PodError::AddressInUse {
                    uid: uid(),
                    ip: *ip,
                    owner: format!("{}/{}", other.ctx.info.namespace, other.ctx.info.name),
                });
            }
        }
        drop(running);
        let known = self
            .proxy
            .state
            .workload_for_pod(&info.uid, &info.namespace, &info.name);
        if let Some(workload) = known {
            if let Some(ip) = crate::proxy::unheld_address(&workload, &info.ips) {
                let replaces_a_true_one = self
                    .running
                    .lock()
                    .expect("pods lock")
                    .get(&info.uid)
                    .is_some_and(|r| {
                        crate::proxy::unheld_address(&workload, &r.ctx.info.ips).is_none()
                    });
                if replaces_a_true_one {
                    return Err(PodError::NotInNetns { uid: uid(), ip });
                }
                tracing::warn!(
                    pod = %info.uid, %ip, held = ?info.ips,
                    "the control service gives this pod an address its namespace does not hold; \
                     taken, its connections refused until the control service describes its \
                     current address"
                );
            }
            if workload.identity.service_account != info.service_account {
                return Err(PodError::ServiceAccount {
                    uid: uid(),
                    given: info.service_account.clone(),
                    expected: workload.identity.service_account.clone(),
                });
            }
        }
        Ok(())
    }

    /// Starts serving a pod whose network namespace is `netns`. Its
    /// addresses are the ones the namespace holds (`info.ips` is filled in
    /// here).
    pub async fn add(&self, mut info: PodInfo, netns: OwnedFd) -> Result<(), PodError> {
        let _one_at_a_time = self.changes.lock().await;
        let uid = info.uid.clone();
        let netns =
            InpodNetns::new(netns, self.own_netns.clone()).map_err(|source| PodError::Netns {
                uid: uid.clone(),
                source,
            })?;
        info.ips = netns
            .run(crate::netns::pod_addresses)
            .and_then(|ips| ips)
            .map_err(|source| PodError::Netns {
                uid: uid.clone(),
                source,
            })?;
        self.check(&info, &netns)?;
        let same = self
            .running
            .lock()
            .expect("pods lock")
            .get_mut(&uid)
            .filter(|existing| {
                existing.ctx.netns.inode() == netns.inode() && existing.ctx.info == info
            })
            .map(|existing| (existing.ctx.clone(), existing.plaintext.clone()));
        if let Some((ctx, plaintext)) = same {
            // The same pod again: nothing to redo, but its capture is put
            // back in place in case something took it away.
            return self.restore_capture(ctx, plaintext).await;
        }
        self.remove_locked(&uid).await;
        let identity_text = format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.proxy.trust.trust_domain, info.namespace, info.service_account
        );
        let identity: Identity =
            identity_text
                .parse()
                .map_err(|e: weft_proto::spiffe::IdentityError| PodError::Identity {
                    uid: uid.clone(),
                    namespace: info.namespace.clone(),
                    service_account: info.service_account.clone(),
                    reason: e.to_string(),
                })?;
        let ports = self.proxy.ports;
        let listen = |addr: SocketAddr| {
            socket::listen(&netns, addr).map_err(|source| PodError::Listen {
                uid: uid.clone(),
                addr,
                source,
            })
        };
        let outbound_listener = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, ports.outbound)))?;
        let plaintext_listener = listen(SocketAddr::from((
            Ipv4Addr::UNSPECIFIED,
            ports.inbound_plaintext,
        )))?;
        let hbone_listener = listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, ports.hbone)))?;
        let cookie =
            netns_cookie_of(outbound_listener.as_fd()).map_err(|source| PodError::Netns {
                uid: uid.clone(),
                source,
            })?;
        let ctx = Arc::new(PodContext {
            info,
            identity,
            netns,
            cookie,
            share: Default::default(),
        });
        // Capture starts once the listeners exist, so nothing captured
        // finds the door closed.
        let (capture, capture_ctx) = (self.proxy.capture.clone(), ctx.clone());
        let plaintext_fd = plaintext_listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| PodError::Netns {
                uid: uid.clone(),
                source,
            })?;
        let plaintext = Arc::new(plaintext_fd);
        let capture_fd = plaintext.clone();
        tokio::task::spawn_blocking(move || {
            capture.enroll(&PodNetwork {
                netns: &capture_ctx.netns,
                cookie: capture_ctx.cookie,
                ips: &capture_ctx.info.ips,
                plaintext_listener: capture_fd.as_fd(),
            })
        })
        .await
        .expect("capture setup does not panic")
        .map_err(|source| PodError::Capture {
            uid: uid.clone(),
            source: Box::new(source),
        })?;
        // Get the pod's certificate now, not on its first connection.
        let (certs, identity) = (self.proxy.certs.clone(), ctx.identity.clone());
        tokio::spawn(async move {
            if let Err(err) = certs.fetch(&identity).await {
                tracing::warn!(%err, "first certificate request failed; retrying in the background");
            }
        });
        let tasks = vec![
            tokio::spawn(outbound::serve(
                self.proxy.clone(),
                ctx.clone(),
                outbound_listener,
            )),
            tokio::spawn(inbound::serve_plaintext(
                self.proxy.clone(),
                ctx.clone(),
                plaintext_listener,
            )),
            tokio::spawn(inbound::serve_hbone(
                self.proxy.clone(),
                ctx.clone(),
                hbone_listener,
            )),
        ];
        self.proxy.set_local_pod(&ctx.info.ips, Some(ctx.clone()));
        tracing::info!(pod = %uid, name = %ctx.info.name, namespace = %ctx.info.namespace, identity = %ctx.identity, "pod enrolled");
        self.running.lock().expect("pods lock").insert(
            uid,
            Running {
                ctx,
                tasks,
                plaintext,
            },
        );
        Ok(())
    }

    async fn restore_capture(
        &self,
        ctx: Arc<PodContext>,
        plaintext: Arc<OwnedFd>,
    ) -> Result<(), PodError> {
        let capture = self.proxy.capture.clone();
        let uid = ctx.info.uid.clone();
        tokio::task::spawn_blocking(move || {
            capture.restore(&PodNetwork {
                netns: &ctx.netns,
                cookie: ctx.cookie,
                ips: &ctx.info.ips,
                plaintext_listener: plaintext.as_fd(),
            })
        })
        .await
        .expect("capture restore does not panic")
        .map_err(|source| PodError::Capture {
            uid,
            source: Box::new(source),
        })
    }

    /// Stops serving a pod (unknown uids are ignored).
    pub async fn remove(&self, uid: &str) {
        let _one_at_a_time = self.changes.lock().await;
        self.remove_locked(uid).await
    }

    async fn remove_locked(&self, uid: &str) {
        let removed = self.running.lock().expect("pods lock").remove(uid);
        let Some(running) = removed else {
            return;
        };
        self.proxy.set_local_pod(&running.ctx.info.ips, None);
        // New connections stop being captured before the listeners close,
        // and before the node agent hears back.
        let (capture, ctx) = (self.proxy.capture.clone(), running.ctx.clone());
        let released = tokio::task::spawn_blocking(move || {
            capture.release(&ctx.netns, ctx.cookie, &ctx.info.ips)
        })
        .await
        .expect("capture release does not panic");
        if let Err(err) = released {
            tracing::warn!(pod = %uid, %err, "removing capture from a released pod");
        }
        tracing::info!(pod = %uid, "pod released; its listeners are closed, open connections drain");
        let identity = running.ctx.identity.clone();
        drop(running);
        if !self.identities().contains(&identity) {
            self.proxy.certs.forget(&identity);
        }
    }

    /// Closes every pod's listeners (a rolling update's drain): new
    /// connections go to the ztunnel that shares the ports; capture stays
    /// in place and open connections run on.
    pub fn stop_listening(&self) {
        for running in self.running.lock().expect("pods lock").values_mut() {
            for task in running.tasks.drain(..) {
                task.abort();
            }
        }
    }

    /// Connections ztunnel holds open.
    pub fn open_connections(&self) -> usize {
        self.proxy.connections.len()
    }

    /// Whether pod `uid` is being served.
    pub fn serves(&self, uid: &str) -> bool {
        self.running.lock().expect("pods lock").contains_key(uid)
    }

    /// After a node agent's snapshot, which named `uids`: releases the pods
    /// it did not name.
    pub async fn retain(&self, uids: &HashSet<String>) {
        let _one_at_a_time = self.changes.lock().await;
        let stale: Vec<String> = self
            .running
            .lock()
            .expect("pods lock")
            .keys()
            .filter(|uid| !uids.contains(*uid))
            .cloned()
            .collect();
        for uid in stale {
            self.remove_locked(&uid).await;
        }
        // Pods a previous ztunnel enrolled in the kernel and nobody has
        // named since are released there too.
        let (cookies, ips): (HashSet<NetnsCookie>, HashSet<std::net::IpAddr>) = {
            let running = self.running.lock().expect("pods lock");
            (
                running.values().map(|r| r.ctx.cookie).collect(),
                running
                    .values()
                    .flat_map(|r| r.ctx.info.ips.clone())
                    .collect(),
            )
        };
        if let Err(err) = self.proxy.capture.retain(&cookies, &ips) {
            tracing::warn!(%err, "releasing pods that are gone from capture");
        }
    }

    /// The identities of the enrolled pods.
    pub fn identities(&self) -> BTreeSet<Identity> {
        self.running
            .lock()
            .expect("pods lock")
            .values()
            .map(|r| r.ctx.identity.clone())
            .collect()
    }

    pub fn list(&self) -> Vec<PodSummary> {
        let mut pods: Vec<PodSummary> = self
            .running
            .lock()
            .expect("pods lock")
            .values()
            .map(|r| PodSummary {
                uid: r.ctx.info.uid.clone(),
                name: r.ctx.info.name.clone(),
                namespace: r.ctx.info.namespace.clone(),
                identity: r.ctx.identity.to_string(),
                ips: r.ctx.info.ips.clone(),
            })
            .collect();
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        pods
    }
}
