//! The CustomResourceDefinitions for the Istio kinds Weft reads, which
//! `deploy/base/crds.yaml` ships (a test keeps the file and this code equal:
//! `WEFT_BLESS=1 cargo test -p weft-control crds` rewrites it). Names,
//! groups, versions and short names are Istio's, so users' YAML and kubectl
//! habits carry over; the schemas are structural, without CEL rules (which
//! the oldest API servers Weft supports do not know), and keep every field:
//! the control service validates objects itself and reports what it
//! rejects on the object.

use crate::objects::Kind;

/// One CRD: its kind, group, plural, short names and served versions
/// (the first is stored).
struct Crd {
    kind: Kind,
    group: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    versions: &'static [&'static str],
}

const CRDS: [Crd; 4] = [
    Crd {
        kind: Kind::AuthorizationPolicy,
        group: "security.istio.io",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        versions: &["v1", "v1beta1"],
    },
    Crd {
        kind: Kind::PeerAuthentication,
        group: "security.istio.io",
        plural: "peerauthentications",
        short_names: &["pa"],
        versions: &["v1", "v1beta1"],
    },
    Crd {
        kind: Kind::VirtualService,
        group: "networking.istio.io",
        plural: "virtualservices",
        short_names: &["vs"],
        versions: &["v1", "v1beta1", "v1alpha3"],
    },
    Crd {
        kind: Kind::DestinationRule,
        group: "networking.istio.io",
        plural: "destinationrules",
        short_names: &["dr"],
        versions: &["v1", "v1beta1", "v1alpha3"],
    },
];

/// `deploy/base/crds.yaml`.
pub fn render() -> String {
    let mut out = String::from(
        "# Generated from control/src/crds.rs: edit that, then\n\
         # WEFT_BLESS=1 cargo test -p weft-control crds\n",
    );
    for crd in &CRDS {
        let kind = crd.kind.to_string();
        let singular = kind.to_lowercase();
        let category = crd.group.replace('.', "-");
        out.push_str(&format!(
            "---\n\
             apiVersion: apiextensions.k8s.io/v1\n\
             kind: CustomResourceDefinition\n\
             metadata:\n\
             \x20 name: {plural}.{group}\n\
             \x20 labels: {{app.kubernetes.io/part-of: weft}}\n\
             spec:\n\
             \x20 group: {group}\n\
             \x20 scope: Namespaced\n\
             \x20 names:\n\
             \x20   kind: {kind}\n\
             \x20   listKind: {kind}List\n\
             \x20   plural: {plural}\n\
             \x20   singular: {singular}\n\
             \x20   shortNames: [{short}]\n\
             \x20   categories: [istio-io, {category}]\n\
             \x20 versions:\n",
            plural = crd.plural,
            group = crd.group,
            short = crd.short_names.join(", "),
        ));
        for (index, version) in crd.versions.iter().enumerate() {
            out.push_str(&format!(
                "  - name: {version}\n\
                 \x20   served: true\n\
                 \x20   storage: {storage}\n\
                 \x20   subresources: {{status: {{}}}}\n\
                 \x20   schema:\n\
                 \x20     openAPIV3Schema:\n\
                 \x20       type: object\n\
                 \x20       properties:\n\
                 \x20         spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n\
                 \x20         status: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
                storage = index == 0,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
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
