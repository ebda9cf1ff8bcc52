//! A real Kubernetes API server for tests: etcd, kube-apiserver and
//! kube-controller-manager (namespace deletion, garbage collection, default
//! service accounts) on loopback, with a fresh data directory,
//! service-account signing keys and a service range inside Weft's own
//! address plan. The binaries come from `KUBEBUILDER_ASSETS`
//! (controller-runtime's envtest convention), which `cargo xtask test`
//! points at the server `cargo xtask setup` builds. Everything is in one
//! temporary directory, removed with the processes when the server is
//! dropped.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::processes::eventually;

/// The services' ClusterIP range: the harness's service VIPs (never
/// 10.0.0.0/8, which may be the machine's own network).
pub const SERVICE_RANGE: &str = "198.19.0.0/20";

/// The service-account tokens' issuer.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A running API server.
pub struct ApiServer {
    /// `https://127.0.0.1:port`.
    pub url: String,
    /// A kubeconfig for a cluster administrator (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The server's serving certificate, which the kubeconfig trusts.
    pub ca: PathBuf,
    /// The key service-account tokens are signed with (PKCS#8 PEM).
    pub service_account_key: PathBuf,
    /// The administrator's bearer token (the kubeconfig's).
    admin_token: String,
    // Dropped in order: the processes, then their directory.
    controllers: Option<Child>,
    apiserver: Child,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<String>,
    _etcd: Child,
    dir: tempfile::TempDir,
}

/// The directory of binaries to run.
fn assets() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("KUBEBUILDER_ASSETS")
        .map(PathBuf::from)
        .context(
            "KUBEBUILDER_ASSETS is not set: run the tests with `cargo xtask test` (its setup \
             builds kube-apiserver), or point it at a directory with kube-apiserver, \
             kube-controller-manager and etcd",
        )?;
    for binary in ["kube-apiserver", "kube-controller-manager", "etcd"] {
        anyhow::ensure!(
            dir.join(binary).is_file(),
            "KUBEBUILDER_ASSETS ({}) has no {binary}",
            dir.display()
        );
    }
    Ok(dir)
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `binary` with `args`, its output in `dir/<name>.log`.
fn spawn(dir: &Path, name: &str, binary: &Path, args: &[String]) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

impl ApiServer {
    /// Starts etcd, the API server and the controller manager, and waits
    /// until the server is ready.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// [`ApiServer::start`], with [`ApiServer::install_crds`] done
    /// before the controllers start.
    pub async fn start_with_crds() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(crds: bool) -> anyhow::Result<Self> {
        let bin = assets()?;
        let dir = tempfile::Builder::new().prefix("weft-kube-").tempdir()?;
        let d = dir.path();
        let (client, peer, secure) = (free_port()?, free_port()?, free_port()?);
        let etcd = spawn(
            d,
            "etcd",
            &bin.join("etcd"),
            &[
                format!("--data-dir={}", d.join("etcd").display()),
                "--name=weft-test".into(),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster=weft-test=http://127.0.0.1:{peer}"),
                "--unsafe-no-fsync".into(),
            ],
        )?;
        // Service-account tokens: an ECDSA key of the test's own.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let service_account_key = d.join("sa.key");
        std::fs::write(&service_account_key, key.serialize_pem())?;
        std::fs::write(d.join("sa.pub"), key.public_key_pem())?;
        let token = format!("weft-test-{:016x}", rand_u64());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},weft-admin,weft-admin,\"system:masters\"\n"),
        )?;
        let certs = d.join("certs");
        let apiserver_bin = bin.join("kube-apiserver");
        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", certs.display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            format!("--service-account-issuer={ISSUER}"),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                service_account_key.display()
            ),
            "--allow-privileged=true".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
        ];
        let apiserver = spawn(d, "kube-apiserver", &apiserver_bin, &apiserver_args)?;
        let url = format!("https://127.0.0.1:{secure}");
        let ca = certs.join("apiserver.crt");
        let kubeconfig = d.join("kubeconfig");
        eventually(
            "the API server's serving certificate",
            Duration::from_secs(30),
            || async { ca.is_file().then_some(()) },
        )
        .await
        .with_context(|| log_tail(d, "kube-apiserver"))?;
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: weft-test, cluster: {{server: \"{url}\", certificate-authority: \"{}\"}}}}]\n\
                 users: [{{name: weft-admin, user: {{token: \"{token}\"}}}}]\n\
                 contexts: [{{name: weft-test, context: {{cluster: weft-test, user: weft-admin}}}}]\n\
                 current-context: weft-test\n",
                ca.display()
            ),
        )?;
        let controllers_args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!(
                "--service-account-private-key-file={}",
                service_account_key.display()
            ),
            format!("--root-ca-file={}", ca.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            // 1.20 also serves plain HTTP on 10252 unless told not to: a
            // second test server's controllers would fail to start.
            "--port=0".into(),
            "--controllers=*".into(),
        ];
        let mut server = ApiServer {
            url,
            kubeconfig,
            ca,
            service_account_key,
            admin_token: token,
            controllers: None,
            apiserver,
            apiserver_bin,
            apiserver_args,
            _etcd: etcd,
            dir,
        };
        server.wait_ready().await?;
        if crds {
            server.install_crds().await?;
        }
        // The controllers last: the garbage collector then knows every kind
        // from its first discovery (a CRD installed later is watched only
        // from a resync, which may take a while).
        server.controllers = Some(spawn(
            server.dir.path(),
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &controllers_args,
        )?);
        Ok(server)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        eventually("the API server ready", Duration::from_secs(60), || async {
            let out = self
                .kubectl(&["get", "--raw", "/readyz"])
                .output()
                .await
                .ok()?;
            (out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok")
                .then_some(())
        })
        .await
        .with_context(|| log_tail(self.dir.path(), "kube-apiserver"))
    }

    /// Writes a kubeconfig at `path` for the administrator that reaches the
    /// server at `server` (a forwarder to it, say) and still verifies its
    /// certificate, issued for 127.0.0.1 (`tls-server-name`).
    pub fn write_kubeconfig_via(&self, server: &str, path: &Path) -> anyhow::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: weft-test, cluster: {{server: \"{server}\", \
                 certificate-authority: \"{}\", tls-server-name: \"127.0.0.1\"}}}}]\n\
                 users: [{{name: weft-admin, user: {{token: \"{}\"}}}}]\n\
                 contexts: [{{name: weft-test, context: {{cluster: weft-test, user: weft-admin}}}}]\n\
                 current-context: weft-test\n",
                self.ca.display(),
                self.admin_token,
            ),
        )
        .with_context(|| format!("writing {}", path.display()))
    }

    /// The `host:port` the server listens on.
    pub fn address(&self) -> anyhow::Result<SocketAddr> {
        self.url
            .trim_start_matches("https://")
            .parse()
            .with_context(|| format!("the API server's URL {}", self.url))
    }

    /// What a kubelet reports for a running pod: phase `Running` and its
    /// IP (through `pods/status`; there is no kubelet here).
    pub async fn set_pod_running(
        &self,
        namespace: &str,
        name: &str,
        ip: &str,
    ) -> anyhow::Result<()> {
        let status = serde_json::json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        }});
        self.patch_status("pod", Some(namespace), name, &status)
            .await
    }

    /// Merges `patch` (`{"status": …}`) into the status of `kind` `name`,
    /// as the object's controller or kubelet would.
    pub async fn patch_status(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let patch = patch.to_string();
        let mut args = vec!["patch", kind, name, "--subresource=status", "--type=merge"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        args.extend(["-p", &patch]);
        self.kubectl_ok(&args, None).await?;
        Ok(())
    }

    /// A token of service account `namespace/account` for `audience`
    /// (TokenRequest), bound to pod `pod` of its namespace when given, as
    /// the kubelet projects one.
    pub async fn token(
        &self,
        namespace: &str,
        account: &str,
        audience: &str,
        pod: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "create",
            "token",
            "-n",
            namespace,
            account,
            "--audience",
            audience,
        ];
        if let Some(pod) = pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
        }
        Ok(self.kubectl_ok(&args, None).await?.trim().to_owned())
    }

    /// Kills the API server (etcd and its data stay), keeps it down for
    /// `down`, then starts it again on the same address and waits until it
    /// is ready: every client's watches break and must be re-established.
    pub async fn restart_apiserver(&mut self, down: Duration) -> anyhow::Result<()> {
        self.apiserver.kill().await?;
        tokio::time::sleep(down).await;
        self.apiserver = spawn(
            self.dir.path(),
            "kube-apiserver-restarted",
            &self.apiserver_bin,
            &self.apiserver_args,
        )?;
        self.wait_ready().await
    }

    /// Installs CRDs for every kind Weft reads and waits until they are
    /// served: Weft's own for the Istio kinds (what `deploy/` ships), and
    /// open ones (fields kept, not validated) for the Gateway API kinds,
    /// standing in for the Gateway API's own CRDs, a prerequisite users
    /// install from upstream.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        const KINDS: [(&str, &str, &[&str]); 4] = [
            ("gateway.networking.k8s.io", "Gateway", &["v1", "v1beta1"]),
            ("gateway.networking.k8s.io", "HTTPRoute", &["v1", "v1beta1"]),
            ("gateway.networking.k8s.io", "GRPCRoute", &["v1"]),
            ("gateway.networking.k8s.io", "ReferenceGrant", &["v1beta1"]),
        ];
        // Groups under k8s.io are Kubernetes' own: the API server wants to
        // see where the API was approved.
        const APPROVAL: &str = "api-approved.kubernetes.io: \"https://github.com/kubernetes-sigs/gateway-api/pull/1538\"";
        let mut yaml = weft_control::crds::render();
        for (group, kind, versions) in KINDS {
            let plural = format!("{}s", kind.to_lowercase());
            yaml.push_str(&format!(
                "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
                 metadata: {{name: {plural}.{group}, annotations: {{{APPROVAL}}}}}\n\
                 spec:\n  group: {group}\n  scope: Namespaced\n\
                 \x20 names: {{kind: {kind}, plural: {plural}, singular: {}, listKind: {kind}List}}\n\
                 \x20 versions:\n",
                kind.to_lowercase(),
            ));
            for (index, version) in versions.iter().enumerate() {
                yaml.push_str(&format!(
                    "  - name: {version}\n    served: true\n    storage: {}\n\
                     \x20   subresources: {{status: {{}}}}\n\
                     \x20   schema: {{openAPIV3Schema: {{type: object, properties: {{\
                     spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}, \
                     status: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}}}\n",
                    index == 0
                ));
            }
        }
        self.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&yaml))
            .await?;
        self.kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd",
                "--all",
            ],
            None,
        )
        .await?;
        // kubectl checks objects against the OpenAPI the server publishes,
        // which follows a CRD's establishment by a moment.
        for field in [
            "authorizationpolicies.spec.action",
            "peerauthentications.spec.mtls",
        ] {
            eventually(
                "the CRDs' schemas published",
                Duration::from_secs(30),
                || async {
                    self.kubectl_ok(&["explain", field], None)
                        .await
                        .ok()
                        .map(|_| ())
                },
            )
            .await?;
        }
        Ok(())
    }

    /// `kubectl` with `args`, as the cluster administrator.
    pub fn kubectl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Runs `kubectl args` (with `stdin`, if given) and returns its
    /// stdout; a failure is an error with kubectl's own message.
    pub async fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let out = self.kubectl_output(args, stdin).await?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `kubectl args` (with `stdin`, if given) to its end, whatever
    /// its exit status.
    pub async fn kubectl_output(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<std::process::Output> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.kubectl(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl")?;
        if let Some(mut input) = child.stdin.take() {
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).await?;
            }
        }
        Ok(child.wait_with_output().await?)
    }
}

/// The last lines a component logged, for an error.
fn log_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{name}'s last lines:\n{}",
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}

impl ApiServer {
    /// A service-account token (ES256 JWT) with `claims`, signed with the
    /// server's own key: how a test makes tokens the API server would never
    /// issue (already expired, say) but whose signature it accepts.
    pub fn sign_token(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        use rcgen::SigningKey;
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&self.service_account_key)?)?;
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let signed = format!("{header}.{body}");
        let der = key.sign(signed.as_bytes())?;
        let raw = ecdsa_der_to_raw(&der).context("the key's ECDSA signature is not DER")?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(raw)))
    }
}

/// An ECDSA P-256 signature, DER `SEQUENCE { r INTEGER, s INTEGER }` → the
/// 64 bytes `r || s` JWTs carry.
fn ecdsa_der_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    let (&0x30, rest) = der.split_first()? else {
        return None;
    };
    let (_, mut rest) = rest.split_first()?; // short-form length: P-256 fits
    let mut out = [0u8; 64];
    for half in out.chunks_mut(32) {
        let (&0x02, after) = rest.split_first()? else {
            return None;
        };
        let (&len, after) = after.split_first()?;
        let (int, after) = after.split_at_checked(len as usize)?;
        let int = &int[int.iter().take_while(|b| **b == 0).count()..];
        half.get_mut(32usize.checked_sub(int.len())?..)?
            .copy_from_slice(int);
        rest = after;
    }
    Some(out)
}
