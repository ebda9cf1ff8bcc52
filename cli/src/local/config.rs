//! The user's YAML: read, checked, and rendered for the control service
//! with the pod IPs the runtime assigned.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use serde_yaml::Value;
use weft_control::{
    objects::{Namespace, Object, Pod},
    source::{local::LocalSource, yaml::parse_file, ConfigSnapshot},
    translate::{translate, MeshConfig, Resources},
};

use super::paths::Paths;

/// One file of the user's YAML.
pub struct UserFile {
    /// Its name in the served directory.
    pub name: String,
    pub docs: Vec<Value>,
    pub objects: Vec<Object>,
}

/// A file of YAML text that is not on disk (what `weft waypoint apply`
/// makes), as if it had been read.
pub fn from_text(name: &str, text: &str) -> UserFile {
    let objects = parse_file(Path::new(name), text)
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let docs = serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect();
    UserFile {
        name: name.to_owned(),
        docs,
        objects,
    }
}

/// Edits every document of the served files with `edit` (which returns
/// `false` to drop a document); a file left empty is removed. Returns how
/// many documents `edit` changed or dropped (it says so through `changed`).
pub fn edit_served(
    paths: &Paths,
    mut edit: impl FnMut(&mut Value, &mut bool) -> bool,
) -> anyhow::Result<usize> {
    let mut count = 0;
    let Ok(entries) = std::fs::read_dir(paths.config()) else {
        return Ok(0);
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .filter(|v: &Value| !v.is_null())
            .collect();
        let mut kept = Vec::new();
        let mut touched = false;
        for mut doc in docs {
            let mut changed = false;
            let keep = edit(&mut doc, &mut changed);
            if changed || !keep {
                touched = true;
                count += 1;
            }
            if keep {
                kept.push(doc);
            }
        }
        if !touched {
            continue;
        }
        if kept.is_empty() {
            std::fs::remove_file(&file)?;
            continue;
        }
        let mut out = String::new();
        for doc in &kept {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(doc)?);
        }
        let tmp = file.with_extension("yaml.tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, &file)?;
    }
    Ok(count)
}

/// The `kind`, `metadata.namespace` (`default` if unset, empty for a
/// Namespace) and `metadata.name` of a document.
pub fn identify(doc: &Value) -> (String, String, String) {
    let kind = str_at(doc, &["kind"]).unwrap_or_default().to_owned();
    let name = str_at(doc, &["metadata", "name"])
        .unwrap_or_default()
        .to_owned();
    let namespace = if kind == "Namespace" {
        String::new()
    } else {
        str_at(doc, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_owned()
    };
    (kind, namespace, name)
}

/// Reads a YAML file, or every `*.yaml`/`*.yml` of a directory. Rejected
/// documents are printed with their reason; the rest is used.
pub fn read(path: &Path) -> anyhow::Result<Vec<UserFile>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        files
    } else if path.is_file() {
        vec![path.to_owned()]
    } else {
        bail!(
            "{} is neither a YAML file nor a directory of them",
            path.display()
        );
    };
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let mut objects = Vec::new();
        for result in parse_file(&file, &text) {
            match result {
                Ok(object) => objects.push(object),
                Err(error) => eprintln!("weft local: skipping {error}"),
            }
        }
        let docs = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .filter(|v: &Value| !v.is_null())
            .collect();
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "objects.yaml".into());
        out.push(UserFile {
            name,
            docs,
            objects,
        });
    }
    Ok(out)
}

/// The pods of some files.
pub fn pods(files: &[UserFile]) -> Vec<&Pod> {
    files
        .iter()
        .flat_map(|f| &f.objects)
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str()
}

/// Writes `file` into the served directory, with `status.podIP` of each of
/// its pods set from `ips` (by `namespace/name`).
pub fn write_rendered(
    paths: &Paths,
    file: &UserFile,
    ips: &BTreeMap<String, Ipv4Addr>,
) -> anyhow::Result<()> {
    let mut out = String::new();
    for doc in &file.docs {
        let mut doc = doc.clone();
        if str_at(&doc, &["kind"]) == Some("Pod") {
            let name = str_at(&doc, &["metadata", "name"])
                .unwrap_or_default()
                .to_owned();
            let namespace = str_at(&doc, &["metadata", "namespace"])
                .unwrap_or("default")
                .to_owned();
            if let Some(ip) = ips.get(&format!("{namespace}/{name}")) {
                if let Value::Mapping(map) = &mut doc {
                    let mut status = serde_yaml::Mapping::new();
                    status.insert("podIP".into(), ip.to_string().into());
                    map.insert("status".into(), Value::Mapping(status));
                }
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    std::fs::create_dir_all(paths.config())?;
    // Written whole and renamed, so the control service never reads half.
    let target = paths.config().join(&file.name);
    let tmp = paths.config().join(format!(".{}.tmp", file.name));
    std::fs::write(&tmp, out)?;
    std::fs::rename(tmp, target)?;
    Ok(())
}

/// What the control service is serving: its objects and their translation.
pub fn served(paths: &Paths) -> anyhow::Result<(ConfigSnapshot, Resources)> {
    let snapshot = LocalSource::new(paths.config()).load()?;
    let resources = translate(&snapshot, &MeshConfig::default());
    Ok((snapshot, resources))
}

/// The served pods and whether each is enrolled, by `namespace/name`.
pub fn enrollment(snapshot: &ConfigSnapshot) -> BTreeMap<String, (Pod, bool)> {
    let namespaces: BTreeMap<&str, &Namespace> = snapshot
        .objects
        .values()
        .filter_map(|o| match o {
            Object::Namespace(n) => Some((n.name.as_str(), n)),
            _ => None,
        })
        .collect();
    snapshot
        .objects
        .values()
        .filter_map(|o| match o {
            Object::Pod(p) => {
                let enrolled = p.is_enrolled(namespaces.get(p.namespace.as_str()).copied());
                Some((format!("{}/{}", p.namespace, p.name), (p.clone(), enrolled)))
            }
            _ => None,
        })
        .collect()
}
