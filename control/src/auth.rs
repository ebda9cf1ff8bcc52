//! Who is calling: node credentials for node proxies.
//!
//! [`Authenticator`] answers "which node does this caller speak for",
//! from a node token (local mode, below) or from a Kubernetes
//! service-account token the API server reviews ([`token_review`]).
//!
//! In local mode every node has a bearer token, a file `<node>.token` in the
//! credentials directory (written by `weft local` when it creates the node,
//! or by [`issue_node_token`]). A proxy sends `authorization: Bearer <token>`
//! on its xDS and CA calls; the token, not anything the proxy claims about
//! itself, decides which node it speaks for. (In Kubernetes, a service
//! account token review takes this role.)

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, RwLock,
    },
    time::{Duration, Instant, SystemTime},
};

use tonic::{metadata::MetadataMap, Status};

pub mod token_review;

const SUFFIX: &str = ".token";

/// How callers are authenticated.
#[derive(Debug)]
pub enum Authenticator {
    /// Node tokens from a directory (`weft local`, tests).
    Nodes(NodeCredentials),
    /// Service-account tokens, reviewed by the API server.
    Kubernetes(token_review::TokenReviewer),
}

/// Who an authenticated caller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A node proxy (ztunnel): it may obtain the identities of the
    /// workloads scheduled on its node.
    Node(String),
    /// A waypoint pod: it may obtain its own identity only.
    Waypoint {
        node: String,
        namespace: String,
        service_account: String,
    },
}

impl Caller {
    /// The node the caller runs on.
    pub fn node(&self) -> &str {
        match self {
            Caller::Node(node) | Caller::Waypoint { node, .. } => node,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(node) => write!(f, "node {node}"),
            Caller::Waypoint {
                namespace,
                service_account,
                ..
            } => write!(f, "waypoint {namespace}/{service_account}"),
        }
    }
}

impl Authenticator {
    /// Who the caller is.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        match self {
            Authenticator::Nodes(nodes) => nodes.authenticate(metadata).map(Caller::Node),
            Authenticator::Kubernetes(reviewer) => reviewer.caller(bearer(metadata)?).await,
        }
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let header = metadata.get("authorization").ok_or_else(|| {
        Status::unauthenticated("no credentials: send `authorization: Bearer <token>`")
    })?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer <token>`"))
}

/// Writes a fresh token for `node` into `dir` (mode 0600) and returns it.
pub fn issue_node_token(dir: &Path, node: &str) -> std::io::Result<String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    std::fs::create_dir_all(dir)?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(format!("{node}{SUFFIX}")))?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

/// An unknown token makes the directory be read again at most this often
/// (unless the directory itself changed), so a caller with made-up tokens
/// cannot keep the control service reading files under its lock.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The node tokens the control service accepts.
#[derive(Debug)]
pub struct NodeCredentials {
    dir: PathBuf,
    by_token: RwLock<HashMap<String, String>>,
    /// When the directory was last read, and its modification time then.
    last_read: Mutex<Option<(Instant, Option<SystemTime>)>>,
    reloads: AtomicU64,
}

impl NodeCredentials {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            by_token: RwLock::new(HashMap::new()),
            last_read: Mutex::new(None),
            reloads: AtomicU64::new(0),
        }
    }

    /// How many times the token directory has been read.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Whether an unknown token is worth reading the directory for: it
    /// changed (a node was added), or the last read is old enough.
    fn should_reload(&self) -> bool {
        let mtime = std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        let mut last = self.last_read.lock().expect("credentials lock");
        let due = match *last {
            None => true,
            Some((at, seen)) => seen != mtime || at.elapsed() >= RELOAD_INTERVAL,
        };
        if due {
            *last = Some((Instant::now(), mtime));
        }
        due
    }

    /// The node the caller's bearer token belongs to.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let token = bearer(metadata)?;
        if let Some(node) = self.lookup(token) {
            return Ok(node);
        }
        // Nodes may have been added since the last read.
        if self.should_reload() {
            self.reload();
        }
        self.lookup(token).ok_or_else(|| {
            Status::unauthenticated(format!(
                "the node token is not known; is this proxy's token file one of {}/<node>.token?",
                self.dir.display()
            ))
        })
    }

    fn lookup(&self, token: &str) -> Option<String> {
        let map = self.by_token.read().expect("credentials lock");
        // Compare every entry in full so timing does not reveal prefixes.
        let mut found = None;
        for (known, node) in map.iter() {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(node.clone());
            }
        }
        found
    }

    fn reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let mut fresh = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(node) = name.strip_suffix(SUFFIX) else {
                    continue;
                };
                if let Ok(token) = std::fs::read_to_string(entry.path()) {
                    let token = token.trim().to_owned();
                    if !token.is_empty() {
                        fresh.insert(token, node.to_owned());
                    }
                }
            }
        }
        *self.by_token.write().expect("credentials lock") = fresh;
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", value.parse().unwrap());
        map
    }

    #[test]
    fn tokens_map_to_their_node_and_nothing_else_passes() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = issue_node_token(dir.path(), "n1").unwrap();
        let t2 = issue_node_token(dir.path(), "n2").unwrap();
        let creds = NodeCredentials::new(dir.path());
        assert_eq!(
            creds
                .authenticate(&metadata(&format!("Bearer {t1}")))
                .unwrap(),
            "n1"
        );
        assert_eq!(
            creds
                .authenticate(&metadata(&format!("Bearer {t2}")))
                .unwrap(),
            "n2"
        );
        for bad in ["Bearer nope", "Bearer ", &t1, &format!("Basic {t1}")] {
            let err = creds.authenticate(&metadata(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        assert_eq!(
            creds.authenticate(&MetadataMap::new()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn unknown_tokens_do_not_make_it_reread_the_directory_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let creds = NodeCredentials::new(dir.path());
        issue_node_token(dir.path(), "n1").unwrap();
        for i in 0..200 {
            let err = creds
                .authenticate(&metadata(&format!("Bearer made-up-{i}")))
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
        assert_eq!(creds.reloads(), 1, "200 unknown tokens, one read");
        // A node added since is known at once: the directory changed.
        let t2 = issue_node_token(dir.path(), "n2").unwrap();
        assert_eq!(
            creds
                .authenticate(&metadata(&format!("Bearer {t2}")))
                .unwrap(),
            "n2"
        );
        assert_eq!(creds.reloads(), 2);
    }
}
