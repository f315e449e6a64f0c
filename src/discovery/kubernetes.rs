//! The Kubernetes source: selected Services' EndpointSlices become EDS clusters, whole sets.
//!
//! Two `kube` watchers (Services and `discovery.k8s.io/v1` EndpointSlices, all namespaces) keep
//! an in-memory mirror. A re-list (start, resync, `410 Gone`) is buffered until it completes and
//! then replaces the mirror at once; a watch error changes nothing, so a cluster keeps its last
//! known endpoints until the API answers again. After every change the clusters are recomputed
//! and only the ones that differ are sent, as `Reset`/`Removed`.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use anyhow::Context;
use futures::{stream, StreamExt};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{mpsc, watch};

use super::{file::diff, ClusterUpdate, Endpoint, HealthStatus, Locality};
use crate::config::kubernetes::{
    discovered_labels, DiscoveredClusters, KubernetesSettings, Naming,
};

/// The label Kubernetes puts on every EndpointSlice to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service annotation naming the container whose CPU is read (`${container}` in queries);
/// unset, the Service name is used.
pub const CONTAINER_ANNOTATION: &str = "adaptive-eds.io/container";

/// `(namespace, name)` of an object.
pub type ObjectKey = (String, String);

/// What the source keeps of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    /// The Service's labels (for `kubernetes.selector`).
    pub labels: BTreeMap<String, String>,
    /// TCP ports: `(port name, service port)`.
    pub ports: Vec<(String, u16)>,
    /// The container whose CPU counts (annotation `adaptive-eds.io/container`, else the name).
    pub container: String,
}

/// What the source keeps of one EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceInfo {
    /// The owning Service (label `kubernetes.io/service-name`).
    pub service: String,
    /// TCP ports: `(port name, target port)`.
    pub ports: Vec<(String, u16)>,
    /// Endpoints with an IP address.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    /// The first address (Kubernetes treats an endpoint's addresses as interchangeable).
    pub address: IpAddr,
    /// Envoy health from the slice conditions.
    pub health: HealthStatus,
    /// Pod name from `targetRef`, the join key with metrics.
    pub pod: Option<String>,
    /// `nodeName`: the node the pod runs on.
    pub node: Option<String>,
    /// Zone, the Envoy locality zone.
    pub zone: String,
}

/// Maps EndpointSlice conditions to Envoy health: ready is healthy; serving while terminating is
/// draining (in-flight work finishes, no new requests); anything else is unhealthy.
///
/// Unset `ready` and `serving` mean true and unset `terminating` means false, as the API defines.
pub fn health(
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> HealthStatus {
    let ready = ready.unwrap_or(true);
    let serving = serving.unwrap_or(ready);
    let terminating = terminating.unwrap_or(false);
    if ready && !terminating {
        HealthStatus::Healthy
    } else if serving && terminating {
        HealthStatus::Draining
    } else {
        HealthStatus::Unhealthy
    }
}

/// Keeps what matters of a Service; `None` for kinds that have no endpoints (ExternalName).
pub fn service_info(service: &Service) -> Option<(ObjectKey, ServiceInfo)> {
    let key = object_key(&service.metadata)?;
    let spec = service.spec.as_ref();
    if spec.and_then(|spec| spec.type_.as_deref()) == Some("ExternalName") {
        return None;
    }
    let ports = spec
        .and_then(|spec| spec.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|port| is_tcp(port.protocol.as_deref()))
        .filter_map(|port| {
            let number = u16::try_from(port.port)
                .ok()
                .filter(|number| *number != 0)?;
            Some((port.name.clone().unwrap_or_default(), number))
        })
        .collect();
    let labels = service.metadata.labels.clone().unwrap_or_default();
    let container = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(CONTAINER_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| key.1.clone());
    Some((
        key,
        ServiceInfo {
            labels,
            ports,
            container,
        },
    ))
}

/// Keeps what matters of an EndpointSlice; `None` for FQDN slices and slices without a Service.
pub fn slice_info(slice: &EndpointSlice) -> Option<(ObjectKey, SliceInfo)> {
    let key = object_key(&slice.metadata)?;
    if slice.address_type == "FQDN" {
        return None;
    }
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|port| is_tcp(port.protocol.as_deref()))
        .filter_map(|port| {
            let number = u16::try_from(port.port?)
                .ok()
                .filter(|number| *number != 0)?;
            Some((port.name.clone().unwrap_or_default(), number))
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let address = endpoint.addresses.first()?.parse::<IpAddr>().ok()?;
            let conditions = endpoint.conditions.as_ref();
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|target| target.kind.as_deref() == Some("Pod"))
                .and_then(|target| target.name.clone());
            Some(SliceEndpoint {
                address,
                health: health(
                    conditions.and_then(|conditions| conditions.ready),
                    conditions.and_then(|conditions| conditions.serving),
                    conditions.and_then(|conditions| conditions.terminating),
                ),
                pod,
                node: endpoint.node_name.clone().filter(|node| !node.is_empty()),
                zone: endpoint.zone.clone().unwrap_or_default(),
            })
        })
        .collect();
    Some((
        key,
        SliceInfo {
            service,
            ports,
            endpoints,
        },
    ))
}

fn object_key(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectKey> {
    Some((metadata.namespace.clone()?, metadata.name.clone()?))
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|protocol| protocol == "TCP")
}

/// The EDS resource names of one service port under `settings.naming`.
pub fn cluster_names(
    settings: &KubernetesSettings,
    namespace: &str,
    service: &str,
    port: u16,
) -> Vec<String> {
    let istio = || {
        format!(
            "outbound|{port}||{service}.{namespace}.svc.{}",
            settings.cluster_domain
        )
    };
    let plain = || format!("{service}.{namespace}:{port}");
    match settings.naming {
        Naming::Istio => vec![istio()],
        Naming::Plain => vec![plain()],
        Naming::Both => vec![istio(), plain()],
    }
}

/// Whether the config selects this Service (by name, or by its label).
pub fn is_selected(settings: &KubernetesSettings, key: &ObjectKey, service: &ServiceInfo) -> bool {
    let by_name = settings
        .services
        .iter()
        .any(|reference| reference.namespace == key.0 && reference.name == key.1);
    let by_label = settings
        .selector
        .as_ref()
        .is_some_and(|selector| service.labels.get(&selector.label) == Some(&selector.value));
    by_name || by_label
}

/// Every selected service port as clusters with their endpoints, sorted by address and port
/// (so two replicas fed the same objects serve byte-identical assignments).
pub fn clusters(
    settings: &KubernetesSettings,
    services: &BTreeMap<ObjectKey, ServiceInfo>,
    slices: &BTreeMap<ObjectKey, SliceInfo>,
) -> BTreeMap<String, Vec<Endpoint>> {
    clusters_and_labels(settings, services, slices).0
}

/// [`clusters`], plus each cluster's labels for the metrics query templates.
pub fn clusters_and_labels(
    settings: &KubernetesSettings,
    services: &BTreeMap<ObjectKey, ServiceInfo>,
    slices: &BTreeMap<ObjectKey, SliceInfo>,
) -> (BTreeMap<String, Vec<Endpoint>>, DiscoveredClusters) {
    let mut slices_by_service: BTreeMap<ObjectKey, Vec<&SliceInfo>> = BTreeMap::new();
    for ((namespace, _), slice) in slices {
        slices_by_service
            .entry((namespace.clone(), slice.service.clone()))
            .or_default()
            .push(slice);
    }
    let mut clusters = BTreeMap::new();
    let mut labels = BTreeMap::new();
    for (key, service) in services {
        if !is_selected(settings, key, service) {
            continue;
        }
        let service_slices = slices_by_service.get(key).map(Vec::as_slice).unwrap_or(&[]);
        for (port_name, service_port) in &service.ports {
            let endpoints = port_endpoints(service_slices, port_name);
            for name in cluster_names(settings, &key.0, &key.1, *service_port) {
                labels.insert(
                    name.clone(),
                    discovered_labels(&name, &key.0, &key.1, &service.container),
                );
                clusters.insert(name, endpoints.clone());
            }
        }
    }
    (clusters, labels)
}

/// The endpoints behind one named service port, across every slice of the service.
fn port_endpoints(slices: &[&SliceInfo], port_name: &str) -> Vec<Endpoint> {
    let mut seen = HashSet::new();
    let mut endpoints = Vec::new();
    for slice in slices {
        let Some((_, target_port)) = slice.ports.iter().find(|(name, _)| name == port_name) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // An endpoint moving between slices may briefly appear in both: keep one.
            if !seen.insert((endpoint.address, *target_port)) {
                continue;
            }
            endpoints.push(Endpoint {
                address: endpoint.address,
                port: *target_port,
                configured_weight: None,
                pod: endpoint.pod.clone(),
                node: endpoint.node.clone(),
                locality: Locality {
                    zone: endpoint.zone.clone(),
                    ..Locality::default()
                },
                health: endpoint.health,
            });
        }
    }
    endpoints.sort_by_key(|endpoint| (endpoint.address, endpoint.port));
    endpoints
}

/// A watched collection: the live objects, plus a re-list being buffered until it completes.
#[derive(Debug)]
struct Mirror<T> {
    items: BTreeMap<ObjectKey, T>,
    relisting: Option<BTreeMap<ObjectKey, T>>,
    synced: bool,
}

impl<T: PartialEq> Mirror<T> {
    fn new() -> Self {
        Self {
            items: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }

    /// Applies one watcher event; returns whether the live objects changed.
    ///
    /// `convert` yields `None` for objects this source ignores; their key is still honoured on
    /// delete (an object can stop qualifying, e.g. a slice losing its Service label).
    fn apply<K>(
        &mut self,
        event: watcher::Event<K>,
        key_of: impl Fn(&K) -> Option<ObjectKey>,
        convert: impl Fn(&K) -> Option<(ObjectKey, T)>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                if let (Some(buffer), Some((key, value))) =
                    (self.relisting.as_mut(), convert(&object))
                {
                    buffer.insert(key, value);
                }
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let changed = listed != self.items || !self.synced;
                self.items = listed;
                self.synced = true;
                changed
            }
            watcher::Event::Apply(object) => match convert(&object) {
                Some((key, value)) => {
                    if self.items.get(&key) == Some(&value) {
                        false
                    } else {
                        self.items.insert(key, value);
                        true
                    }
                }
                None => key_of(&object).is_some_and(|key| self.items.remove(&key).is_some()),
            },
            watcher::Event::Delete(object) => {
                key_of(&object).is_some_and(|key| self.items.remove(&key).is_some())
            }
        }
    }
}

/// Watches Services and EndpointSlices and sends the selected clusters' endpoints.
pub struct KubernetesSource {
    settings: KubernetesSettings,
    client: kube::Client,
    discovered: watch::Sender<DiscoveredClusters>,
}

impl KubernetesSource {
    /// Connects with `settings.kubeconfig`, else the in-cluster account, else `KUBECONFIG`.
    pub async fn connect(settings: KubernetesSettings) -> anyhow::Result<Self> {
        // kube's rustls uses the process-wide provider; the server builds rustls with ring only.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = match &settings.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).with_context(|| {
                    format!("kubernetes.kubeconfig: cannot read {path}; fix the file or remove the key")
                })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .with_context(|| format!("kubernetes.kubeconfig: {path} has no usable context"))?
            }
            None => kube::Config::infer().await.context(
                "kubernetes: no in-cluster service account and no KUBECONFIG; set kubernetes.kubeconfig",
            )?,
        };
        let client =
            kube::Client::try_from(config).context("kubernetes: cannot build the API client")?;
        Ok(Self::with_client(settings, client))
    }

    /// Uses an existing client (tests point one at a recorded API server).
    pub fn with_client(settings: KubernetesSettings, client: kube::Client) -> Self {
        let (discovered, _) = watch::channel(BTreeMap::new());
        Self {
            settings,
            client,
            discovered,
        }
    }

    /// Follows the discovered clusters and their labels, so the weighting settings (and the
    /// metrics queries) of each can be rendered at run time.
    pub fn discovered(&self) -> watch::Receiver<DiscoveredClusters> {
        self.discovered.subscribe()
    }

    /// Watches until `updates` is closed. Watch errors are logged and retried with backoff by
    /// the watcher; the last known endpoints stay in service meanwhile.
    pub async fn run(self, updates: mpsc::Sender<Vec<ClusterUpdate>>) {
        let services = watcher(
            kube::Api::<Service>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|event| Change::Services(Box::new(event)));
        let slices = watcher(
            kube::Api::<EndpointSlice>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|event| Change::Slices(Box::new(event)));
        let mut changes = std::pin::pin!(stream::select(services, slices));
        let mut service_mirror = Mirror::new();
        let mut slice_mirror = Mirror::new();
        let mut sent: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        loop {
            let change = tokio::select! {
                change = changes.next() => change,
                () = updates.closed() => return,
            };
            let changed = match change {
                None => return,
                Some(Change::Services(event)) => match *event {
                    Ok(event) => service_mirror.apply(
                        event,
                        |service: &Service| object_key(&service.metadata),
                        service_info,
                    ),
                    Err(error) => watch_failed("services", &error),
                },
                Some(Change::Slices(event)) => match *event {
                    Ok(event) => slice_mirror.apply(
                        event,
                        |slice: &EndpointSlice| object_key(&slice.metadata),
                        slice_info,
                    ),
                    Err(error) => watch_failed("endpointslices", &error),
                },
            };
            // Until both collections are listed once, a service would look endpoint-less.
            if !changed || !service_mirror.synced || !slice_mirror.synced {
                continue;
            }
            let (next, labels) =
                clusters_and_labels(&self.settings, &service_mirror.items, &slice_mirror.items);
            self.discovered.send_if_modified(|current| {
                let changed = *current != labels;
                if changed {
                    *current = labels;
                }
                changed
            });
            let batch = diff(&sent, &next);
            if batch.is_empty() {
                continue;
            }
            tracing::info!(
                changed_clusters = batch.len(),
                clusters = next.len(),
                "Kubernetes endpoints changed"
            );
            sent = next;
            if updates.send(batch).await.is_err() {
                return;
            }
        }
    }
}

/// Logs a watch error; the mirror is untouched (returns "nothing changed").
fn watch_failed(resource: &str, error: &watcher::Error) -> bool {
    tracing::warn!(resource, %error, "Kubernetes watch failed; keeping the last known endpoints and retrying with backoff");
    false
}

/// One event from either watcher (boxed: the objects are large).
enum Change {
    Services(Box<Result<watcher::Event<Service>, watcher::Error>>),
    Slices(Box<Result<watcher::Event<EndpointSlice>, watcher::Error>>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::kubernetes::{LabelSelector, ServiceReference};

    fn settings(naming: Naming) -> KubernetesSettings {
        KubernetesSettings {
            kubeconfig: None,
            services: vec![ServiceReference {
                namespace: "shop".into(),
                name: "checkout".into(),
            }],
            selector: Some(LabelSelector {
                label: "adaptive-eds.io/enabled".into(),
                value: "true".into(),
            }),
            naming,
            cluster_domain: "cluster.local".into(),
        }
    }

    fn service(namespace: &str, name: &str, labels: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": namespace, "name": name, "labels": labels },
            "spec": { "ports": [
                { "name": "http", "port": 8080, "targetPort": 9090 },
                { "name": "dns", "port": 53, "protocol": "UDP" }
            ] }
        }))
        .expect("service JSON")
    }

    fn slice(name: &str, service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": "shop", "name": name,
                          "labels": { "kubernetes.io/service-name": service } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 9090, "protocol": "TCP" }],
            "endpoints": endpoints
        }))
        .expect("slice JSON")
    }

    #[test]
    fn conditions_map_to_envoy_health() {
        use HealthStatus::*;
        assert_eq!(health(Some(true), Some(true), Some(false)), Healthy);
        assert_eq!(health(None, None, None), Healthy, "unset ready means ready");
        assert_eq!(health(Some(false), Some(true), Some(true)), Draining);
        assert_eq!(health(Some(false), Some(false), Some(true)), Unhealthy);
        assert_eq!(health(Some(false), None, None), Unhealthy);
        assert_eq!(health(Some(false), Some(true), Some(false)), Unhealthy);
    }

    #[test]
    fn selected_service_ports_become_named_clusters_with_sorted_endpoints() {
        let mut services = BTreeMap::new();
        for service in [
            service("shop", "checkout", serde_json::json!({})),
            service(
                "shop",
                "cart",
                serde_json::json!({ "adaptive-eds.io/enabled": "true" }),
            ),
            service(
                "shop",
                "ignored",
                serde_json::json!({ "adaptive-eds.io/enabled": "no" }),
            ),
        ] {
            let (key, info) = service_info(&service).expect("kept");
            services.insert(key, info);
        }
        let mut slices = BTreeMap::new();
        for slice in [
            slice(
                "checkout-b",
                "checkout",
                serde_json::json!([
                    { "addresses": ["10.0.0.2"], "conditions": { "ready": false, "serving": true, "terminating": true },
                      "targetRef": { "kind": "Pod", "name": "checkout-2" }, "zone": "z2" },
                    { "addresses": ["10.0.0.1"], "conditions": { "ready": true },
                      "targetRef": { "kind": "Pod", "name": "checkout-1" }, "zone": "z1",
                      "nodeName": "node-a" }
                ]),
            ),
            slice(
                "checkout-a",
                "checkout",
                serde_json::json!([
                    { "addresses": ["10.0.0.1"], "conditions": { "ready": true },
                      "targetRef": { "kind": "Pod", "name": "checkout-1" }, "zone": "z1",
                      "nodeName": "node-a" }
                ]),
            ),
            slice(
                "ignored-a",
                "ignored",
                serde_json::json!([{ "addresses": ["10.0.0.9"] }]),
            ),
        ] {
            let (key, info) = slice_info(&slice).expect("kept");
            slices.insert(key, info);
        }
        let found = clusters(&settings(Naming::Both), &services, &slices);
        let names: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "cart.shop:8080",
                "checkout.shop:8080",
                "outbound|8080||cart.shop.svc.cluster.local",
                "outbound|8080||checkout.shop.svc.cluster.local",
            ],
            "UDP ports and unselected services are skipped"
        );
        assert!(found["cart.shop:8080"].is_empty(), "no slices yet");
        let checkout = &found["outbound|8080||checkout.shop.svc.cluster.local"];
        assert_eq!(
            checkout.len(),
            2,
            "10.0.0.1 listed by two slices is kept once"
        );
        assert_eq!(checkout[0].address.to_string(), "10.0.0.1");
        assert_eq!(checkout[0].port, 9090, "the slice's target port");
        assert_eq!(checkout[0].pod.as_deref(), Some("checkout-1"));
        assert_eq!(checkout[0].locality.zone, "z1");
        assert_eq!(
            checkout[0].node.as_deref(),
            Some("node-a"),
            "the slice's nodeName"
        );
        assert_eq!(checkout[1].node, None, "no nodeName");
        assert_eq!(checkout[0].health, HealthStatus::Healthy);
        assert_eq!(checkout[1].health, HealthStatus::Draining);
        assert_eq!(found["checkout.shop:8080"], *checkout);
    }

    #[test]
    fn a_relist_replaces_the_mirror_only_when_complete() {
        let key = |service: &Service| object_key(&service.metadata);
        let mut mirror = Mirror::new();
        let first = service("shop", "checkout", serde_json::json!({}));
        assert!(!mirror.apply(watcher::Event::Init, key, service_info));
        assert!(!mirror.apply(watcher::Event::InitApply(first.clone()), key, service_info));
        assert!(!mirror.synced);
        assert!(mirror.apply(watcher::Event::InitDone, key, service_info));
        assert_eq!(mirror.items.len(), 1);

        // A re-list in progress (e.g. after 410 Gone) changes nothing until it is done.
        assert!(!mirror.apply(watcher::Event::Init, key, service_info));
        assert_eq!(mirror.items.len(), 1);
        assert!(!mirror.apply(watcher::Event::InitApply(first.clone()), key, service_info));
        assert!(
            !mirror.apply(watcher::Event::InitDone, key, service_info),
            "same content"
        );
        assert!(!mirror.apply(watcher::Event::Apply(first.clone()), key, service_info));
        assert!(mirror.apply(watcher::Event::Delete(first.clone()), key, service_info));
        assert!(mirror.items.is_empty());
        assert!(!mirror.apply(watcher::Event::Init, key, service_info));
        assert!(!mirror.apply(watcher::Event::InitApply(first), key, service_info));
        assert!(mirror.apply(watcher::Event::InitDone, key, service_info));
        assert_eq!(mirror.items.len(), 1);
    }
}
