//! Whether a pod is in the mesh, decided exactly as the control service
//! decides it: the API server's Pod and Namespace, turned into Weft's
//! domain objects by the control service's own parser.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use weft_control::objects::Object;

/// What the agent hands ztunnel about an enrolled pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    pub uid: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    #[error("pod {0} has no uid in the API server's answer")]
    NoUid(String),
    #[error("{0}")]
    Unreadable(String),
}

fn parse(json: serde_json::Value) -> Result<Object, EnrollmentError> {
    let text = json.to_string();
    weft_control::source::yaml::parse_file(Path::new("the API server"), &text)
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            Err(weft_control::source::yaml::DocumentError {
                file: "the API server".into(),
                document: 0,
                key: None,
                reason: "an empty object".into(),
            })
        })
        .map_err(|e| EnrollmentError::Unreadable(e.to_string()))
}

/// `Some` when `pod` is in the mesh (its namespace is `namespace`, if it
/// exists).
pub fn decide(
    pod: &Pod,
    namespace: Option<&Namespace>,
) -> Result<Option<Enrolled>, EnrollmentError> {
    let to_json = |value: serde_json::Result<serde_json::Value>| {
        value.map_err(|e| EnrollmentError::Unreadable(e.to_string()))
    };
    let mut pod_json = to_json(serde_json::to_value(pod))?;
    pod_json["apiVersion"] = "v1".into();
    pod_json["kind"] = "Pod".into();
    let Object::Pod(domain_pod) = parse(pod_json)? else {
        return Err(EnrollmentError::Unreadable("not a Pod".into()));
    };
    let domain_namespace = match namespace {
        None => None,
        Some(ns) => {
            let mut json = to_json(serde_json::to_value(ns))?;
            json["apiVersion"] = "v1".into();
            json["kind"] = "Namespace".into();
            match parse(json)? {
                Object::Namespace(ns) => Some(ns),
                _ => return Err(EnrollmentError::Unreadable("not a Namespace".into())),
            }
        }
    };
    if !domain_pod.is_enrolled(domain_namespace.as_ref()) {
        return Ok(None);
    }
    let uid = pod
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            EnrollmentError::NoUid(format!("{}/{}", domain_pod.namespace, domain_pod.name))
        })?;
    Ok(Some(Enrolled {
        uid,
        service_account: domain_pod.service_account,
    }))
}

/// The annotation that records a pod's capture, as Istio's CNI agent
/// writes it.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// Its value once ztunnel has the pod.
pub const REDIRECTION_ENABLED: &str = "enabled";

#[cfg(test)]
mod tests {
    use super::*;
    use weft_control::objects;

    fn pod(labels: &[(&str, &str)], containers: &[&str]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "app", "namespace": "demo", "uid": "u-1",
                "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            },
            "spec": {
                "nodeName": "n1",
                "serviceAccountName": "app",
                "containers": containers.iter().map(|c| serde_json::json!({"name": c, "image": "x"})).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    fn namespace(ambient: bool) -> Namespace {
        let labels = if ambient {
            serde_json::json!({objects::DATAPLANE_MODE_LABEL: "ambient"})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({"metadata": {"name": "demo", "labels": labels}}))
            .unwrap()
    }

    #[test]
    fn decides_as_the_control_service_does() {
        let enrolled = Some(Enrolled {
            uid: "u-1".into(),
            service_account: "app".into(),
        });
        let cases: Vec<(&str, Pod, Option<Namespace>, Option<Enrolled>)> = vec![
            (
                "ambient namespace",
                pod(&[], &["app"]),
                Some(namespace(true)),
                enrolled.clone(),
            ),
            (
                "plain namespace",
                pod(&[], &["app"]),
                Some(namespace(false)),
                None,
            ),
            ("no namespace object", pod(&[], &["app"]), None, None),
            (
                "pod opts in",
                pod(&[(objects::DATAPLANE_MODE_LABEL, "ambient")], &["app"]),
                Some(namespace(false)),
                enrolled.clone(),
            ),
            (
                "pod opts out",
                pod(&[(objects::DATAPLANE_MODE_LABEL, "none")], &["app"]),
                Some(namespace(true)),
                None,
            ),
            (
                "sidecar pod",
                pod(&[], &["app", objects::SIDECAR_CONTAINER]),
                Some(namespace(true)),
                None,
            ),
        ];
        for (name, pod, ns, expected) in cases {
            assert_eq!(decide(&pod, ns.as_ref()).unwrap(), expected, "{name}");
        }
    }
}
