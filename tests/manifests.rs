//! Every file in `deploy/` parses as what it claims to be, so a typo fails CI: Kubernetes objects
//! round-trip through k8s-openapi types (an unknown or misspelt field is lost and caught), our
//! configs pass `config::parse`, kustomize renders, and the Grafana dashboard queries only
//! metric families the server registers.

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde_json::Value;
use support::{repo_path, require_tool};

fn files_under(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).expect("read deploy directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Every YAML document of `text`, as JSON values.
fn documents(path: &Path, text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| {
            let value = <serde_norway::Value as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: invalid YAML: {error}", path.display()));
            serde_json::to_value(value)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// Deserializes into `T` and back; any field `T` does not know (a typo) makes them differ.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    what: &str,
    document: &Value,
) -> T {
    let typed: T =
        serde_json::from_value(document.clone()).unwrap_or_else(|error| panic!("{what}: {error}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &back, document,
        "{what}: fields were lost in k8s-openapi's type (misspelt or misplaced?)"
    );
    typed
}

/// Checks one Kubernetes object by its kind; returns whether the kind is known.
fn check_object(what: &str, document: &Value) -> bool {
    let kind = document["kind"].as_str().unwrap_or_default();
    match (document["apiVersion"].as_str().unwrap_or_default(), kind) {
        ("v1", "Namespace") => drop(round_trip::<Namespace>(what, document)),
        ("v1", "ServiceAccount") => drop(round_trip::<ServiceAccount>(what, document)),
        ("v1", "Service") => drop(round_trip::<Service>(what, document)),
        ("v1", "ConfigMap") => {
            let config_map = round_trip::<ConfigMap>(what, document);
            for (name, text) in config_map.data.unwrap_or_default() {
                if name.ends_with(".yaml") {
                    check_config(&format!("{what} data.{name}"), &text);
                }
            }
        }
        ("apps/v1", "Deployment") => drop(round_trip::<Deployment>(what, document)),
        ("policy/v1", "PodDisruptionBudget") => {
            drop(round_trip::<PodDisruptionBudget>(what, document))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            drop(round_trip::<ClusterRole>(what, document))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            drop(round_trip::<ClusterRoleBinding>(what, document))
        }
        _ => return false,
    }
    true
}

/// An adaptive-eds config: valid, and listening on 0.0.0.0 when meant for a pod.
fn check_config(what: &str, text: &str) -> adaptive_eds::config::ValidConfig {
    adaptive_eds::config::parse(text)
        .unwrap_or_else(|problems| panic!("{what}: invalid config: {problems:?}"))
}

fn check_kustomization(path: &Path, document: &Value) {
    let directory = path.parent().expect("kustomization directory");
    let mut referenced: Vec<&str> = Vec::new();
    for key in ["resources", "bases"] {
        referenced.extend(
            document[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
    }
    for generator in document["configMapGenerator"]
        .as_array()
        .into_iter()
        .flatten()
    {
        referenced.extend(
            generator["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
    }
    assert!(
        !referenced.is_empty(),
        "{}: references nothing",
        path.display()
    );
    for relative in referenced {
        assert!(
            directory.join(relative).exists(),
            "{}: references {relative}, which does not exist",
            path.display()
        );
    }
}

fn check_envoy_filter(what: &str, document: &Value) {
    let patches = document["spec"]["configPatches"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no spec.configPatches"));
    let added = patches
        .iter()
        .find(|patch| patch["patch"]["operation"] == "ADD")
        .unwrap_or_else(|| panic!("{what}: no ADD patch for the adaptive_eds cluster"));
    assert_eq!(added["applyTo"], "CLUSTER");
    assert_eq!(added["patch"]["value"]["name"], "adaptive_eds");
    // The repointed eds_config is exactly what the Istio-like bootstrap the tests run uses.
    let bootstrap_text = std::fs::read_to_string(repo_path("deploy/envoy/istio-like.yaml"))
        .expect("istio-like bootstrap");
    let bootstrap = &documents(Path::new("istio-like.yaml"), &bootstrap_text)[0];
    let cluster = bootstrap["static_resources"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|cluster| cluster["name"] == "outbound|8080||checkout.shop.svc.cluster.local")
        .expect("the Istio cluster in istio-like.yaml");
    let merges: Vec<&Value> = patches
        .iter()
        .filter(|patch| patch["patch"]["operation"] == "MERGE")
        .collect();
    assert!(!merges.is_empty(), "{what}: no MERGE patch");
    for merge in merges {
        assert_eq!(merge["applyTo"], "CLUSTER", "{what}");
        assert_eq!(
            merge["match"]["cluster"]["service"],
            "checkout.shop.svc.cluster.local"
        );
        assert_eq!(merge["match"]["cluster"]["portNumber"], 8080);
        assert_eq!(
            merge["patch"]["value"]["eds_cluster_config"]["eds_config"]["api_config_source"],
            cluster["eds_cluster_config"]["eds_config"]["api_config_source"],
            "{what}: the patch and deploy/envoy/istio-like.yaml must agree"
        );
    }
}

/// Names of the families the server registers (`# TYPE name kind`).
fn registered_families() -> BTreeSet<String> {
    adaptive_eds::telemetry::example_exposition()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn check_dashboard(path: &Path, text: &str) {
    let dashboard: Value = serde_json::from_str(text)
        .unwrap_or_else(|error| panic!("{}: invalid JSON: {error}", path.display()));
    let families = registered_families();
    let panels = dashboard["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no panels", path.display()));
    assert!(
        panels.len() >= 6,
        "{}: expected the main panels",
        path.display()
    );
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: panel {title:?} has no targets", path.display()));
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| {
                panic!("{}: panel {title:?}: target without expr", path.display())
            });
            let names: Vec<&str> = expr
                .split(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
                .filter(|word| word.starts_with("adaptive_eds_"))
                .collect();
            assert!(
                !names.is_empty(),
                "{}: panel {title:?} queries none of our metrics: {expr}",
                path.display()
            );
            for name in names {
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                assert!(
                    families.contains(family),
                    "{}: panel {title:?} uses {name}, which the server does not export (families: {families:?})",
                    path.display()
                );
                used.insert(family.to_string());
            }
        }
    }
    for family in [
        "adaptive_eds_endpoint_weight",
        "adaptive_eds_endpoint_cpu_cores",
        "adaptive_eds_xds_pushes",
        "adaptive_eds_xds_nacks",
        "adaptive_eds_xds_streams",
        "adaptive_eds_tick_duration_seconds",
        "adaptive_eds_cluster_mode",
    ] {
        assert!(
            used.contains(family),
            "{}: no panel shows {family}",
            path.display()
        );
    }
}

#[test]
fn every_file_in_deploy_parses_as_what_it_is() {
    let deploy = repo_path("deploy");
    let mut checked = 0;
    for path in files_under(&deploy) {
        let relative = path
            .strip_prefix(repo_path(""))
            .unwrap_or(&path)
            .display()
            .to_string();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{relative}: {error}"));
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("json") => check_dashboard(&path, &text),
            Some("yaml" | "yml") => {
                for (index, document) in documents(&path, &text).iter().enumerate() {
                    let what = format!("{relative} (document {index})");
                    let api_version = document["apiVersion"].as_str().unwrap_or_default();
                    if api_version.starts_with("kustomize.config.k8s.io/") {
                        check_kustomization(&path, document);
                    } else if api_version.starts_with("networking.istio.io/") {
                        check_envoy_filter(&what, document);
                    } else if !api_version.is_empty() {
                        assert!(check_object(&what, document), "{what}: unknown kind; add a check for it in tests/manifests.rs");
                    } else if relative.starts_with("deploy/envoy/") {
                        assert!(document["static_resources"].is_object(), "{what}: an Envoy bootstrap needs static_resources");
                    } else if relative.ends_with("config.yaml") || relative.starts_with("deploy/examples/") {
                        check_config(&what, &text);
                    } else if relative == "deploy/istio/service-label.yaml" {
                        assert_eq!(document["metadata"]["labels"]["adaptive-eds.io/enabled"], "true", "{what}");
                    } else {
                        panic!("{what}: unknown file; add a check for it in tests/manifests.rs");
                    }
                }
            }
            _ => panic!("{relative}: unexpected file type in deploy/; add a check for it in tests/manifests.rs"),
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} files checked");
}

/// `kubectl kustomize DIR`, parsed.
fn kustomize(directory: &str) -> Vec<Value> {
    let kubectl = require_tool("kubectl", "apt-get install kubernetes-client");
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(repo_path(directory))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "kubectl kustomize {directory} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    documents(Path::new(directory), &text)
}

#[test]
fn kustomize_renders_the_base_and_the_victoriametrics_overlay() {
    for directory in [
        "deploy/kubernetes",
        "deploy/kubernetes/overlays/victoriametrics",
    ] {
        let objects = kustomize(directory);
        let kinds: BTreeSet<&str> = objects
            .iter()
            .filter_map(|object| object["kind"].as_str())
            .collect();
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
        ] {
            assert!(kinds.contains(kind), "{directory}: no {kind} in {kinds:?}");
        }
        for (index, object) in objects.iter().enumerate() {
            assert!(
                check_object(&format!("{directory} object {index}"), object),
                "{directory}: unchecked kind {}",
                object["kind"]
            );
        }
        let find = |kind: &str| {
            objects
                .iter()
                .find(|object| object["kind"] == kind)
                .expect("kind present")
        };

        let deployment: Deployment =
            serde_json::from_value(find("Deployment").clone()).expect("Deployment");
        let spec = deployment.spec.expect("deployment spec");
        assert_eq!(spec.replicas, Some(2), "{directory}");
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(
            pod.security_context
                .as_ref()
                .and_then(|context| context.run_as_non_root),
            Some(true)
        );
        let container = &pod.containers[0];
        let security = container
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe
                .as_ref()
                .and_then(|probe| probe.http_get.as_ref())
                .and_then(|get| get.path.clone())
        };
        assert_eq!(
            probe_path(&container.readiness_probe).as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            probe_path(&container.liveness_probe).as_deref(),
            Some("/healthz")
        );
        assert!(
            container
                .resources
                .as_ref()
                .and_then(|resources| resources.requests.as_ref())
                .is_some(),
            "resource requests"
        );

        let role: ClusterRole =
            serde_json::from_value(find("ClusterRole").clone()).expect("ClusterRole");
        let mut resources = BTreeSet::new();
        for rule in role.rules.unwrap_or_default() {
            assert_eq!(
                rule.verbs,
                vec!["get", "list", "watch"],
                "{directory}: read-only RBAC"
            );
            resources.extend(rule.resources.unwrap_or_default());
        }
        assert_eq!(
            resources,
            BTreeSet::from(["endpointslices".to_string(), "services".to_string()])
        );

        let config_map: ConfigMap =
            serde_json::from_value(find("ConfigMap").clone()).expect("ConfigMap");
        let text = config_map
            .data
            .unwrap_or_default()
            .remove("config.yaml")
            .expect("config.yaml in the ConfigMap");
        let config = check_config(directory, &text);
        assert!(
            config.xds_listen.ip().is_unspecified(),
            "{directory}: xds.listen must be 0.0.0.0 in a pod"
        );
        assert!(
            config.admin_listen.ip().is_unspecified(),
            "{directory}: admin.listen must be 0.0.0.0 in a pod"
        );
        assert!(
            config.kubernetes.is_some(),
            "{directory}: the Kubernetes source is on"
        );
        let mounted = pod.volumes.unwrap_or_default().iter().any(|volume| {
            volume
                .config_map
                .as_ref()
                .map(|source| source.name.as_str())
                == config_map.metadata.name.as_deref()
        });
        assert!(
            mounted,
            "{directory}: the Deployment mounts the generated ConfigMap"
        );
        if directory.ends_with("victoriametrics") {
            assert!(
                config.adaptive.prometheus.is_some(),
                "the overlay pulls from VictoriaMetrics"
            );
        }
    }
}
