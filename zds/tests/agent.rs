//! The node agent's side of ZDS against ztunnels played byte by byte: the
//! snapshot each new connection gets, adds to the newest connection only,
//! deletes to all, refusals, pods held while no ztunnel is connected, and
//! a hello of the wrong version turned away.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use weft_zds::{
    agent::{Agent, AgentError, AgentPod},
    messages::{encode_ack, Request, Workload},
    wire::Datagrams,
};

fn pod(uid: &str) -> AgentPod {
    let netns: OwnedFd = std::fs::File::open("/proc/self/ns/net")
        .expect("this process's network namespace")
        .into();
    AgentPod {
        workload: Workload {
            uid: uid.to_owned(),
            name: uid.to_owned(),
            namespace: "demo".into(),
            service_account: "default".into(),
        },
        netns: Arc::new(netns),
    }
}

/// A ztunnel played by the test: it answers what it is told to.
struct FakeZtunnel {
    datagrams: Datagrams,
}

/// What a fake ztunnel saw in one request.
#[derive(Debug, PartialEq)]
enum Seen {
    Add(String),
    Del(String),
    Snapshot,
    Other,
}

impl FakeZtunnel {
    /// Connects with the raw bytes of `ZdsHello{version}`.
    async fn connect(socket: &Path, hello: &[u8]) -> Self {
        let datagrams = Datagrams::connect(socket).expect("connect to the agent");
        datagrams.send(hello, &[]).await.expect("hello");
        Self { datagrams }
    }

    /// The next request, or `None` if none arrives in `wait`.
    async fn next(&self, wait: Duration) -> Option<Seen> {
        let datagram = tokio::time::timeout(wait, self.datagrams.recv())
            .await
            .ok()?
            .expect("recv")?;
        let fds = datagram.fds.len();
        Some(match Request::decode(datagram).expect("a valid request") {
            Request::Add { workload, .. } => {
                assert_eq!(fds, 1, "an add carries the namespace");
                Seen::Add(workload.uid)
            }
            Request::Del { uid } => Seen::Del(uid),
            Request::SnapshotSent => Seen::Snapshot,
            Request::Keep { .. } => Seen::Other,
        })
    }

    async fn answer(&self, outcome: Result<(), &str>) {
        self.datagrams
            .send(&encode_ack(outcome), &[])
            .await
            .expect("ack");
    }

    /// Reads and acks requests until the snapshot ends; returns the uids
    /// added.
    async fn take_snapshot(&self) -> Vec<String> {
        let mut added = Vec::new();
        loop {
            let seen = self.next(Duration::from_secs(5)).await.expect("a request");
            self.answer(Ok(())).await;
            match seen {
                Seen::Add(uid) => added.push(uid),
                Seen::Snapshot => return added,
                other => panic!("unexpected {other:?} in a snapshot"),
            }
        }
    }
}

const HELLO_V1: &[u8] = &[0x08, 0x01];

fn socket(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("ztunnel.sock")
}

#[tokio::test]
async fn adds_go_to_the_newest_ztunnel_and_deletes_to_all() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::bind(&socket(&dir)).unwrap();

    // No ztunnel yet: the pod is held, and the caller is told.
    let err = agent.add(pod("a")).await.expect_err("no ztunnel");
    assert!(matches!(err, AgentError::NoZtunnel { .. }), "{err}");
    assert_eq!(agent.pods(), ["a"]);

    // The first ztunnel gets it in its snapshot.
    let old = FakeZtunnel::connect(&socket(&dir), HELLO_V1).await;
    assert_eq!(old.take_snapshot().await, ["a"]);
    assert!(agent.wait_connected(1, Duration::from_secs(5)).await);

    // A second one (a rolling update) gets the same snapshot.
    let new = FakeZtunnel::connect(&socket(&dir), HELLO_V1).await;
    assert_eq!(new.take_snapshot().await, ["a"]);
    assert!(agent.wait_connected(2, Duration::from_secs(5)).await);

    // An add goes to the newest only.
    let (added, seen) = tokio::join!(agent.add(pod("b")), async {
        let seen = new.next(Duration::from_secs(5)).await;
        new.answer(Ok(())).await;
        seen
    });
    added.expect("acked");
    assert_eq!(seen, Some(Seen::Add("b".into())));
    assert_eq!(old.next(Duration::from_millis(300)).await, None);

    // A delete goes to both.
    let (_, seen_new, seen_old) = tokio::join!(
        agent.remove("a"),
        async {
            let seen = new.next(Duration::from_secs(5)).await;
            new.answer(Ok(())).await;
            seen
        },
        async {
            let seen = old.next(Duration::from_secs(5)).await;
            old.answer(Ok(())).await;
            seen
        }
    );
    assert_eq!(seen_new, Some(Seen::Del("a".into())));
    assert_eq!(seen_old, Some(Seen::Del("a".into())));
    assert_eq!(agent.pods(), ["b"]);

    // A refusal comes back to the caller with ztunnel's reason, and the
    // pod is not held for later snapshots.
    let (added, _) = tokio::join!(agent.add(pod("c")), async {
        new.next(Duration::from_secs(5)).await;
        new.answer(Err("no room")).await;
    });
    let err = added.expect_err("refused");
    assert_eq!(err.to_string(), "ztunnel refused pod c: no room");
    assert_eq!(
        agent.refused().get("c").map(String::as_str),
        Some("no room")
    );
    assert_eq!(agent.pods(), ["b"]);

    // The newest goes away: adds fall back to the one left.
    drop(new);
    let (added, seen) = tokio::join!(agent.add(pod("d")), async {
        let seen = old.next(Duration::from_secs(5)).await;
        old.answer(Ok(())).await;
        seen
    });
    added.expect("acked by the older ztunnel");
    assert_eq!(seen, Some(Seen::Add("d".into())));
    assert_eq!(agent.connections(), 1);
}

#[tokio::test]
async fn a_ztunnel_that_does_not_speak_v1_is_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::bind(&socket(&dir)).unwrap();
    // ZdsHello{version: 2}
    let stranger = FakeZtunnel::connect(&socket(&dir), &[0x08, 0x02]).await;
    // Turned away: the agent hangs up without sending anything.
    let closed = tokio::time::timeout(Duration::from_secs(5), stranger.datagrams.recv())
        .await
        .expect("the agent hangs up")
        .expect("recv");
    assert!(closed.is_none(), "the agent sent {closed:?}");
    assert_eq!(agent.connections(), 0);
    // Garbage instead of a hello: the same.
    let garbage = FakeZtunnel::connect(&socket(&dir), &[0xff, 0xff]).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), garbage.datagrams.recv())
        .await
        .expect("the agent hangs up")
        .expect("recv");
    assert!(closed.is_none());
    assert_eq!(agent.connections(), 0);
}
