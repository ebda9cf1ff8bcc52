//! ZDS messages as both sides use them: the generated `istio.workload.zds`
//! types stay here, at the edge; everything else sees [`Request`] and plain
//! results.

use std::os::fd::OwnedFd;

use prost::Message;
use weft_proto::istio::workload::zds::{
    workload_request::Payload, workload_response, Ack, AddWorkload, DelWorkload, KeepWorkload,
    SnapshotSent, Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};

use super::wire::Datagram;

/// Why a datagram is not a usable ZDS message. Each is answered with a
/// negative `Ack` naming it; the connection stays up.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("the datagram was truncated (longer than 64 KiB, or with more descriptors than sent); refused")]
    Truncated,
    #[error("not a {what}: {source}")]
    Undecodable {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("a WorkloadRequest without a payload (add, keep, del or snapshot_sent)")]
    NoPayload,
    #[error("add for pod {uid} carried {count} descriptors; it must carry exactly one, the pod's network namespace")]
    AddDescriptors { uid: String, count: usize },
    #[error("{message} carried {count} descriptor(s); only add carries one")]
    UnexpectedDescriptors { message: &'static str, count: usize },
    #[error("{message} without a pod uid")]
    NoUid { message: &'static str },
    #[error("add for pod {uid} has no workload_info; ztunnel needs the pod's name, namespace and service account")]
    NoWorkloadInfo { uid: String },
    #[error("ZDS version {0} is not supported (this side speaks version 1)")]
    Version(i32),
}

/// Who a pod is, as the node agent describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

/// What the node agent asks of ztunnel.
#[derive(Debug)]
pub enum Request {
    /// Serve this pod, whose network namespace is `netns`.
    Add { workload: Workload, netns: OwnedFd },
    /// In a snapshot: keep serving this pod.
    Keep { uid: String },
    /// Stop serving this pod.
    Del { uid: String },
    /// The snapshot is complete.
    SnapshotSent,
}

impl Request {
    /// Decodes a datagram from the node agent, checking that descriptors
    /// travel with `add` and only with it (extra ones are closed when the
    /// datagram is dropped).
    pub fn decode(datagram: Datagram) -> Result<Self, ZdsError> {
        let Datagram {
            bytes,
            mut fds,
            truncated,
        } = datagram;
        if truncated {
            return Err(ZdsError::Truncated);
        }
        let request =
            WorkloadRequest::decode(bytes.as_slice()).map_err(|source| ZdsError::Undecodable {
                what: "WorkloadRequest",
                source,
            })?;
        let no_descriptors = |message: &'static str, fds: &[OwnedFd]| {
            if fds.is_empty() {
                Ok(())
            } else {
                Err(ZdsError::UnexpectedDescriptors {
                    message,
                    count: fds.len(),
                })
            }
        };
        let uid = |message: &'static str, uid: String| {
            if uid.is_empty() {
                Err(ZdsError::NoUid { message })
            } else {
                Ok(uid)
            }
        };
        match request.payload.ok_or(ZdsError::NoPayload)? {
            Payload::Add(add) => {
                let uid = uid("add", add.uid)?;
                if fds.len() != 1 {
                    return Err(ZdsError::AddDescriptors {
                        uid,
                        count: fds.len(),
                    });
                }
                let info = add
                    .workload_info
                    .ok_or_else(|| ZdsError::NoWorkloadInfo { uid: uid.clone() })?;
                Ok(Request::Add {
                    workload: Workload {
                        uid,
                        name: info.name,
                        namespace: info.namespace,
                        service_account: info.service_account,
                    },
                    netns: fds.pop().expect("one descriptor"),
                })
            }
            Payload::Keep(keep) => {
                no_descriptors("keep", &fds)?;
                Ok(Request::Keep {
                    uid: uid("keep", keep.uid)?,
                })
            }
            Payload::Del(del) => {
                no_descriptors("del", &fds)?;
                Ok(Request::Del {
                    uid: uid("del", del.uid)?,
                })
            }
            Payload::SnapshotSent(SnapshotSent {}) => {
                no_descriptors("snapshot_sent", &fds)?;
                Ok(Request::SnapshotSent)
            }
        }
    }
}

fn request(payload: Payload) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

/// An `add` (its descriptor is attached by the sender).
pub fn encode_add(workload: &Workload) -> Vec<u8> {
    request(Payload::Add(AddWorkload {
        uid: workload.uid.clone(),
        workload_info: Some(WorkloadInfo {
            name: workload.name.clone(),
            namespace: workload.namespace.clone(),
            service_account: workload.service_account.clone(),
        }),
    }))
}

pub fn encode_keep(uid: &str) -> Vec<u8> {
    request(Payload::Keep(KeepWorkload {
        uid: uid.to_owned(),
    }))
}

pub fn encode_del(uid: &str) -> Vec<u8> {
    request(Payload::Del(DelWorkload {
        uid: uid.to_owned(),
    }))
}

pub fn encode_snapshot_sent() -> Vec<u8> {
    request(Payload::SnapshotSent(SnapshotSent {}))
}

/// ztunnel's first datagram.
pub fn encode_hello() -> Vec<u8> {
    ZdsHello {
        version: Version::V1 as i32,
    }
    .encode_to_vec()
}

/// Checks ztunnel's hello.
pub fn decode_hello(bytes: &[u8]) -> Result<(), ZdsError> {
    let hello = ZdsHello::decode(bytes).map_err(|source| ZdsError::Undecodable {
        what: "ZdsHello",
        source,
    })?;
    if hello.version == Version::V1 as i32 {
        Ok(())
    } else {
        Err(ZdsError::Version(hello.version))
    }
}

/// The answer to one request: empty error for success.
pub fn encode_ack(outcome: Result<(), &str>) -> Vec<u8> {
    WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack {
            error: outcome.err().unwrap_or_default().to_owned(),
        })),
    }
    .encode_to_vec()
}

/// Reads an answer: `Ok(Err(reason))` is ztunnel's refusal.
pub fn decode_ack(bytes: &[u8]) -> Result<Result<(), String>, ZdsError> {
    let response = WorkloadResponse::decode(bytes).map_err(|source| ZdsError::Undecodable {
        what: "WorkloadResponse",
        source,
    })?;
    match response.payload {
        Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
        Some(workload_response::Payload::Ack(ack)) => Ok(Err(ack.error)),
        None => Err(ZdsError::NoPayload),
    }
}

#[cfg(test)]
mod tests {
    //! Frames as Istio's implementations put them on the wire, written out
    //! byte by byte from the field numbers, so that a wrong tag here fails.

    use super::*;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").expect("/dev/null").into()
    }

    fn datagram(bytes: &[u8], fds: usize) -> Datagram {
        Datagram {
            bytes: bytes.to_vec(),
            fds: (0..fds).map(|_| devnull()).collect(),
            truncated: false,
        }
    }

    /// add{uid "u1", workload_info{name "a", namespace "ns", service_account "sa"}}
    const ADD: &[u8] = &[
        0x0a, 0x11, // field 1 (add), 17 bytes
        0x0a, 0x02, b'u', b'1', // uid = 1
        0x12, 0x0b, // workload_info = 2, 11 bytes
        0x0a, 0x01, b'a', // name = 1
        0x12, 0x02, b'n', b's', // namespace = 2
        0x1a, 0x02, b's', b'a', // service_account = 3
    ];
    /// keep{uid "u1"}: field 5.
    const KEEP: &[u8] = &[0x2a, 0x04, 0x0a, 0x02, b'u', b'1'];
    /// del{uid "u1"}: field 2, and the uid is DelWorkload's field 2.
    const DEL: &[u8] = &[0x12, 0x04, 0x12, 0x02, b'u', b'1'];
    /// snapshot_sent{}: field 3, empty.
    const SNAPSHOT: &[u8] = &[0x1a, 0x00];

    #[test]
    fn decodes_istios_frames() {
        // Old agents also send WorkloadInfo's field 4 (a trust domain,
        // now reserved): it is skipped.
        let add = ADD;
        let mut with_reserved = add.to_vec();
        with_reserved[1] += 2;
        with_reserved[7] += 2;
        with_reserved.extend_from_slice(&[0x22, 0x00]);
        for bytes in [add, with_reserved.as_slice()] {
            match Request::decode(datagram(bytes, 1)).expect("add") {
                Request::Add { workload, .. } => assert_eq!(
                    workload,
                    Workload {
                        uid: "u1".into(),
                        name: "a".into(),
                        namespace: "ns".into(),
                        service_account: "sa".into(),
                    }
                ),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            Request::decode(datagram(KEEP, 0)),
            Ok(Request::Keep { uid }) if uid == "u1"
        ));
        assert!(matches!(
            Request::decode(datagram(DEL, 0)),
            Ok(Request::Del { uid }) if uid == "u1"
        ));
        assert!(matches!(
            Request::decode(datagram(SNAPSHOT, 0)),
            Ok(Request::SnapshotSent)
        ));
    }

    #[test]
    fn encodes_istios_frames() {
        let workload = Workload {
            uid: "u1".into(),
            name: "a".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
        };
        assert_eq!(encode_add(&workload), ADD);
        assert_eq!(encode_keep("u1"), KEEP);
        assert_eq!(encode_del("u1"), DEL);
        assert_eq!(encode_snapshot_sent(), SNAPSHOT);
        // ZdsHello{version: V1}
        assert_eq!(encode_hello(), [0x08, 0x01]);
        // WorkloadResponse{ack: {}} and {ack: {error: "no"}}
        assert_eq!(encode_ack(Ok(())), [0x0a, 0x00]);
        assert_eq!(encode_ack(Err("no")), [0x0a, 0x04, 0x0a, 0x02, b'n', b'o']);
        assert_eq!(decode_ack(&[0x0a, 0x00]).unwrap(), Ok(()));
        assert_eq!(
            decode_ack(&[0x0a, 0x04, 0x0a, 0x02, b'n', b'o']).unwrap(),
            Err("no".to_owned())
        );
        decode_hello(&[0x08, 0x01]).expect("V1");
        assert!(matches!(
            decode_hello(&[0x08, 0x02]),
            Err(ZdsError::Version(2))
        ));
        assert!(matches!(decode_hello(&[]), Err(ZdsError::Version(0))));
    }

    #[test]
    fn refuses_what_is_not_a_usable_request() {
        let truncated = Datagram {
            truncated: true,
            ..datagram(SNAPSHOT, 0)
        };
        let cases: Vec<(&str, Datagram, &str)> = vec![
            ("truncated", truncated, "truncated"),
            (
                "garbage",
                datagram(&[0xff, 0xff, 0xff], 0),
                "not a WorkloadRequest",
            ),
            ("cut short", datagram(&ADD[..6], 1), "not a WorkloadRequest"),
            ("no payload", datagram(&[], 0), "without a payload"),
            (
                "unknown payload only",
                datagram(&[0x22, 0x00], 0),
                "without a payload",
            ),
            (
                "add without netns",
                datagram(ADD, 0),
                "carried 0 descriptors",
            ),
            ("add with two", datagram(ADD, 2), "carried 2 descriptors"),
            (
                "del with netns",
                datagram(DEL, 1),
                "del carried 1 descriptor",
            ),
            ("keep with netns", datagram(KEEP, 1), "keep carried 1"),
            (
                "snapshot with netns",
                datagram(SNAPSHOT, 1),
                "snapshot_sent carried 1",
            ),
            (
                "del without uid",
                datagram(&[0x12, 0x00], 0),
                "del without a pod uid",
            ),
            (
                "add without info",
                datagram(&[0x0a, 0x04, 0x0a, 0x02, b'u', b'1'], 1),
                "has no workload_info",
            ),
        ];
        for (name, datagram, expected) in cases {
            let err = Request::decode(datagram).expect_err(name).to_string();
            assert!(err.contains(expected), "{name}: {err}");
        }
    }
}
