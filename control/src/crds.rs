//! The CustomResourceDefinitions for the Istio kinds Weft reads, which
//! `deploy/base/crds.yaml` ships (a test keeps the file and this code equal:
//! `WEFT_BLESS=1 cargo test -p weft-control crds` rewrites it). Names,
//! groups, versions and short names are Istio's, so users' YAML and kubectl
//! habits carry over.
//!
//! The security kinds' schemas are derived from the very serde types the
//! control service parses them with (`source::yaml::istio_security`), so
//! the API server refuses a misspelt field or a wrong type when the user
//! applies the object, and `kubectl explain` describes every field. The
//! networking kinds keep open schemas: Weft honours part of them and
//! reports the rest as not applied, so their other fields must survive.
//! Schemas are structural and carry no CEL rules, which the oldest API
//! servers Weft supports do not know.

use schemars::{generate::SchemaSettings, JsonSchema};
use serde_json::{json, Value};

use crate::{
    objects::Kind,
    source::yaml::istio_security::{AuthzSpecYaml, PeerAuthnSpecYaml},
};

/// One CRD: its kind, group, plural, short names, served versions (the
/// first is stored) and the schema of its `spec` (open when `None`).
struct Crd {
    kind: Kind,
    group: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    versions: &'static [&'static str],
    spec: Option<fn() -> Value>,
}

const CRDS: [Crd; 4] = [
    Crd {
        kind: Kind::AuthorizationPolicy,
        group: "security.istio.io",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        versions: &["v1", "v1beta1"],
        spec: Some(structural_schema::<AuthzSpecYaml>),
    },
    Crd {
        kind: Kind::PeerAuthentication,
        group: "security.istio.io",
        plural: "peerauthentications",
        short_names: &["pa"],
        versions: &["v1", "v1beta1"],
        spec: Some(structural_schema::<PeerAuthnSpecYaml>),
    },
    Crd {
        kind: Kind::VirtualService,
        group: "networking.istio.io",
        plural: "virtualservices",
        short_names: &["vs"],
        versions: &["v1", "v1beta1", "v1alpha3"],
        spec: None,
    },
    Crd {
        kind: Kind::DestinationRule,
        group: "networking.istio.io",
        plural: "destinationrules",
        short_names: &["dr"],
        versions: &["v1", "v1beta1", "v1alpha3"],
        spec: None,
    },
];

/// `deploy/base/crds.yaml`.
pub fn render() -> String {
    let mut out = String::from(
        "# Generated from control/src/crds.rs and the types it names: edit\n\
         # those, then WEFT_BLESS=1 cargo test -p weft-control crds\n",
    );
    for crd in &CRDS {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&definition(crd)).expect("a CRD serializes"));
    }
    out
}

fn definition(crd: &Crd) -> Value {
    let kind = crd.kind.to_string();
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let spec = crd.spec.map_or_else(|| open.clone(), |schema| schema());
    let versions: Vec<Value> = crd
        .versions
        .iter()
        .enumerate()
        .map(|(index, version)| {
            json!({
                "name": version,
                "served": true,
                "storage": index == 0,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": spec, "status": open},
                }},
            })
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", crd.plural, crd.group),
            "labels": {"app.kubernetes.io/part-of": "weft"},
        },
        "spec": {
            "group": crd.group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": crd.plural,
                "singular": kind.to_lowercase(),
                "shortNames": crd.short_names,
                "categories": ["istio-io", crd.group.replace('.', "-")],
            },
            "versions": versions,
        },
    })
}

/// `T`'s JSON schema in the form a CRD needs: every subschema inline,
/// `Option`s as `nullable`, and none of what a structural schema forbids
/// (`additionalProperties: false`: the API server prunes unknown fields
/// instead) or what would change stored objects (`default`s).
fn structural_schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    make_structural(&mut schema);
    schema
}

fn make_structural(node: &mut Value) {
    let Value::Object(map) = node else { return };
    map.remove("$schema");
    map.remove("title");
    map.remove("default");
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        map.remove("additionalProperties");
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.values_mut().for_each(make_structural);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get_mut(key) {
            make_structural(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    /// Where `schema` breaks a rule of structural schemas that Weft's
    /// generation could: a node without a type, or a combinator or reference.
    fn structural_violations(path: &str, schema: &Map<String, Value>, found: &mut Vec<String>) {
        if !schema.contains_key("type")
            && !schema.contains_key("x-kubernetes-preserve-unknown-fields")
        {
            found.push(format!("{path}: no type"));
        }
        for key in [
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "$defs",
            "definitions",
        ] {
            if schema.contains_key(key) {
                found.push(format!("{path}: {key}"));
            }
        }
        if schema.contains_key("properties") && schema.contains_key("additionalProperties") {
            found.push(format!("{path}: properties and additionalProperties"));
        }
        for (key, child) in schema {
            let child_path = match key.as_str() {
                "items" | "additionalProperties" => format!("{path}.{key}"),
                "properties" => {
                    for (name, property) in child.as_object().into_iter().flatten() {
                        if let Some(property) = property.as_object() {
                            structural_violations(&format!("{path}.{name}"), property, found);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some(child) = child.as_object() {
                structural_violations(&child_path, child, found);
            }
        }
    }

    #[test]
    fn security_schemas_are_structural_and_typed() {
        for crd in CRDS.iter().filter(|c| c.spec.is_some()) {
            let schema = (crd.spec.unwrap())();
            let mut found = Vec::new();
            structural_violations("spec", schema.as_object().unwrap(), &mut found);
            assert!(found.is_empty(), "{}: {found:?}", crd.kind);
        }
        // What the API server will check, field by field.
        let authz = structural_schema::<AuthzSpecYaml>();
        let cases = [
            ("/properties/action/enum", json!(["ALLOW", "DENY", "AUDIT", "CUSTOM"])),
            ("/properties/action/type", json!("string")),
            ("/properties/action/nullable", json!(true)),
            ("/properties/rules/type", json!("array")),
            ("/properties/rules/items/properties/when/items/required", json!(["key"])),
            (
                "/properties/rules/items/properties/to/items/properties/operation/properties/ports/items/type",
                json!("string"),
            ),
            ("/properties/selector/properties/matchLabels/additionalProperties/type", json!("string")),
            ("/properties/targetRefs/items/required", json!(["kind", "name"])),
            ("/properties/provider/required", json!(["name"])),
        ];
        for (pointer, expected) in cases {
            assert_eq!(
                authz.pointer(pointer),
                Some(&expected),
                "{pointer}: {authz:#}"
            );
        }
        let peer = structural_schema::<PeerAuthnSpecYaml>();
        let cases = [
            (
                "/properties/mtls/properties/mode/enum",
                json!(["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]),
            ),
            (
                "/properties/portLevelMtls/additionalProperties/properties/mode/type",
                json!("string"),
            ),
        ];
        for (pointer, expected) in cases {
            assert_eq!(
                peer.pointer(pointer),
                Some(&expected),
                "{pointer}: {peer:#}"
            );
        }
        assert!(authz.pointer("/properties/action/description").is_some());
        assert!(
            authz.pointer("/additionalProperties").is_none(),
            "{authz:#}"
        );
    }

    #[test]
    fn deploy_crds_match_the_code() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/crds.yaml");
        let rendered = super::render();
        if std::env::var_os("WEFT_BLESS").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == rendered,
            "{} is out of date: WEFT_BLESS=1 cargo test -p weft-control crds",
            path.display()
        );
    }
}
