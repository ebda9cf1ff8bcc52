//! The local YAML source: broken input is reported, never fatal, and never
//! costs the objects that are fine.

use std::{path::Path, sync::Arc, time::Duration};

use weft_control::{
    objects::{Kind, Object, ObjectKey},
    source::{local::LocalSource, ConfigSnapshot},
    translate::{translate, MeshConfig},
};

const BASELINE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec:
  nodeName: n2
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 198.18.2.2}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: http}]
"#;

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn baseline_keys() -> Vec<ObjectKey> {
    vec![
        key(Kind::Namespace, "", "demo"),
        key(Kind::Pod, "demo", "client"),
        key(Kind::Pod, "demo", "server"),
        key(Kind::Service, "demo", "server"),
    ]
}

fn corpus() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken-yaml");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} lacks a '# expect: ' first line", path.display()))
                .to_owned();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                text,
                expect,
            )
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "the corpus shrank to {}", cases.len());
    cases
}

#[test]
fn every_broken_document_is_reported_by_name_and_the_rest_keeps_working() {
    for (name, text, expect) in corpus() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000-baseline.yaml"), BASELINE).unwrap();
        std::fs::write(dir.path().join(&name), &text).unwrap();
        let snapshot = LocalSource::new(dir.path()).load().unwrap();
        for key in baseline_keys() {
            assert!(
                snapshot.objects.contains_key(&key),
                "{name}: {key} was lost"
            );
        }
        let messages: Vec<String> = snapshot.errors.iter().map(ToString::to_string).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains(&expect) && m.contains(&name)),
            "{name}: expected an error naming the file and saying {expect:?}, got {messages:#?}"
        );
        assert!(
            snapshot
                .errors
                .iter()
                .all(|e| !e.file.ends_with("000-baseline.yaml")),
            "{name}: the good file was blamed: {messages:#?}"
        );
        // Translation of whatever survived must not fail either.
        let resources = translate(&snapshot, &MeshConfig::default());
        assert!(
            resources
                .addresses
                .contains_key("Kubernetes//Pod/demo/client"),
            "{name}"
        );
    }
}

#[test]
fn a_broken_edit_keeps_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(dir.path().join("000-baseline.yaml"), BASELINE).unwrap();
    let good = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]}]
"#;
    std::fs::write(&policy, good).unwrap();
    let mut source = LocalSource::new(dir.path());
    let policy_key = key(Kind::AuthorizationPolicy, "demo", "deny-client");
    let first = source.load().unwrap();
    let Some(Object::AuthorizationPolicy(original)) = first.objects.get(&policy_key).cloned()
    else {
        panic!("policy loaded: {:?}", first.errors)
    };

    // A bad value in the document: the object keeps its last good version.
    std::fs::write(&policy, good.replace("DENY", "DENNY")).unwrap();
    let second = source.load().unwrap();
    assert_eq!(
        second.objects.get(&policy_key),
        Some(&Object::AuthorizationPolicy(original.clone()))
    );
    assert!(second
        .errors
        .iter()
        .any(|e| e.key.as_ref() == Some(&policy_key)));

    // The whole file unparseable: still kept.
    std::fs::write(&policy, "kind: [unclosed").unwrap();
    let third = source.load().unwrap();
    assert_eq!(
        third.objects.get(&policy_key),
        Some(&Object::AuthorizationPolicy(original))
    );
    assert!(third
        .errors
        .iter()
        .any(|e| e.reason.contains("not valid YAML")));

    // Deleted on purpose: gone.
    std::fs::remove_file(&policy).unwrap();
    let fourth = source.load().unwrap();
    assert!(!fourth.objects.contains_key(&policy_key));
    assert!(fourth.errors.is_empty(), "{:?}", fourth.errors);
    assert_eq!(fourth.objects.len(), 4);
}

#[tokio::test]
async fn a_change_in_the_directory_is_published() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("000-baseline.yaml"), BASELINE).unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(ConfigSnapshot::default()));
    let source = LocalSource::new(dir.path());
    let task = tokio::spawn(source.watch(tx, Duration::from_millis(20)));
    let wait_for = |rx: &mut tokio::sync::watch::Receiver<Arc<ConfigSnapshot>>, n: usize| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                rx.wait_for(|s| s.objects.len() == n),
            )
            .await
            .expect("snapshot within 10 s")
            .map(|s| s.clone())
            .unwrap()
        }
    };
    wait_for(&mut rx, 4).await;
    std::fs::write(
        dir.path().join("extra.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n",
    )
    .unwrap();
    let snapshot = wait_for(&mut rx, 5).await;
    assert!(snapshot
        .objects
        .contains_key(&key(Kind::Namespace, "", "other")));
    std::fs::remove_file(dir.path().join("extra.yaml")).unwrap();
    wait_for(&mut rx, 4).await;
    drop(rx);
    task.abort();
}
