//! What `weft install` applies: `deploy/base`, built into the binary, with
//! `--set` overrides.

use anyhow::{bail, Context};
use serde_json::Value;

/// The base, in the order kustomize's `resources` lists it.
const BASE: [(&str, &str); 5] = [
    (
        "namespace.yaml",
        include_str!("../../../deploy/base/namespace.yaml"),
    ),
    ("crds.yaml", include_str!("../../../deploy/base/crds.yaml")),
    (
        "control.yaml",
        include_str!("../../../deploy/base/control.yaml"),
    ),
    (
        "ztunnel.yaml",
        include_str!("../../../deploy/base/ztunnel.yaml"),
    ),
    (
        "node-agent.yaml",
        include_str!("../../../deploy/base/node-agent.yaml"),
    ),
];

/// `--set` keys.
pub const SETTINGS: &str =
    "hub=<registry> (images <hub>/control, <hub>/ztunnel, <hub>/node-agent, <hub>/waypoint), \
    tag=<tag>, control.replicas=<n>, ztunnel.surge=true|false (false for clusters older than 1.22)";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub hub: Option<String>,
    pub tag: Option<String>,
    pub control_replicas: Option<u32>,
    pub ztunnel_surge: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hub: None,
            tag: None,
            control_replicas: None,
            ztunnel_surge: true,
        }
    }
}

impl Settings {
    pub fn parse(pairs: &[String]) -> anyhow::Result<Self> {
        let mut settings = Settings::default();
        for pair in pairs {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--set {pair:?} is not key=value; keys: {SETTINGS}");
            };
            match key {
                "hub" => settings.hub = Some(value.trim_end_matches('/').to_owned()),
                "tag" => settings.tag = Some(value.to_owned()),
                "control.replicas" => {
                    settings.control_replicas =
                        Some(value.parse().with_context(|| {
                            format!("--set control.replicas={value}: not a number")
                        })?)
                }
                "ztunnel.surge" => {
                    settings.ztunnel_surge = value
                        .parse()
                        .with_context(|| format!("--set ztunnel.surge={value}: true or false"))?
                }
                other => bail!("--set: unknown key {other:?}; keys: {SETTINGS}"),
            }
        }
        Ok(settings)
    }
}

/// The objects to apply, each as JSON, in order.
pub fn render(settings: &Settings) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (file, text) in BASE {
        for document in serde_yaml::Deserializer::from_str(text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .with_context(|| format!("deploy/base/{file} (built in)"))?;
            if value.is_null() {
                continue;
            }
            objects.push(value);
        }
    }
    for object in &mut objects {
        apply_settings(object, settings);
    }
    Ok(objects)
}

fn image(current: &str, settings: &Settings) -> String {
    // weft/<component>:<version>
    let (repo, tag) = current.rsplit_once(':').unwrap_or((current, "latest"));
    let component = repo.rsplit('/').next().unwrap_or(repo);
    let repo = match &settings.hub {
        Some(hub) => format!("{hub}/{component}"),
        None => repo.to_owned(),
    };
    format!("{repo}:{}", settings.tag.as_deref().unwrap_or(tag))
}

fn apply_settings(object: &mut Value, settings: &Settings) {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(containers) = object
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for container in containers {
            if let Some(current) = container["image"].as_str() {
                container["image"] = image(current, settings).into();
            }
        }
    }
    if kind == "Deployment" && name == "weft-control" {
        if let Some(replicas) = settings.control_replicas {
            object["spec"]["replicas"] = replicas.into();
        }
        if settings.hub.is_some() || settings.tag.is_some() {
            let waypoint = image(
                &format!("weft/waypoint:{}", env!("CARGO_PKG_VERSION")),
                settings,
            );
            if let Some(args) = object
                .pointer_mut("/spec/template/spec/containers/0/args")
                .and_then(Value::as_array_mut)
            {
                args.push(format!("--waypoint-image={waypoint}").into());
            }
        }
    }
    if kind == "DaemonSet" && !settings.ztunnel_surge {
        object["spec"]["updateStrategy"]["rollingUpdate"] =
            serde_json::json!({"maxUnavailable": 1});
    }
}

/// The objects as YAML documents (what `--dry-run` prints).
pub fn to_yaml(objects: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(object)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_refuse() {
        let cases: [(&[&str], Result<Settings, &str>); 5] = [
            (&[], Ok(Settings::default())),
            (
                &[
                    "hub=registry.example/weft/",
                    "tag=1.2",
                    "control.replicas=3",
                ],
                Ok(Settings {
                    hub: Some("registry.example/weft".into()),
                    tag: Some("1.2".into()),
                    control_replicas: Some(3),
                    ztunnel_surge: true,
                }),
            ),
            (
                &["ztunnel.surge=false"],
                Ok(Settings {
                    ztunnel_surge: false,
                    ..Settings::default()
                }),
            ),
            (&["replicas=3"], Err("unknown key \"replicas\"")),
            (&["control.replicas=many"], Err("not a number")),
        ];
        for (pairs, expected) in cases {
            let pairs: Vec<String> = pairs.iter().map(|p| p.to_string()).collect();
            match (Settings::parse(&pairs), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{pairs:?}"),
                (Err(err), Err(want)) => {
                    assert!(format!("{err:#}").contains(want), "{pairs:?}: {err:#}")
                }
                (got, want) => panic!("{pairs:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn settings_change_images_replicas_and_surge() {
        let objects = render(&Settings {
            hub: Some("localhost:5000/weft".into()),
            tag: Some("dev".into()),
            control_replicas: Some(3),
            ztunnel_surge: false,
        })
        .unwrap();
        let find = |kind: &str| objects.iter().find(|o| o["kind"] == kind).unwrap();
        let control = find("Deployment");
        assert_eq!(control["spec"]["replicas"], 3);
        assert_eq!(
            control["spec"]["template"]["spec"]["containers"][0]["image"],
            "localhost:5000/weft/control:dev"
        );
        let args = control["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap();
        assert!(args.contains(&"--waypoint-image=localhost:5000/weft/waypoint:dev".into()));
        let ztunnel = find("DaemonSet");
        assert_eq!(
            ztunnel["spec"]["template"]["spec"]["containers"][0]["image"],
            "localhost:5000/weft/ztunnel:dev"
        );
        assert_eq!(
            ztunnel["spec"]["updateStrategy"]["rollingUpdate"],
            serde_json::json!({"maxUnavailable": 1})
        );
    }
}
