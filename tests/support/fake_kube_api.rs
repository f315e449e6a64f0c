//! A recorded Kubernetes API server on 127.0.0.1: scripted list responses and watch streams
//! for Services and EndpointSlices, served over plain HTTP to the real `kube` client.
//!
//! This is the only mock in the suite. No API server can run on this machine (no kind, no
//! kubelet, no container runtime), and what the source must get right is how it reacts to the
//! API's responses: list, watch events, `410 Gone`, failures. So the responses are recorded
//! shapes of real ones (items without `kind` in lists, `ADDED`/`MODIFIED`/`DELETED`/`ERROR`
//! watch lines) and everything else is real: the `kube` client, its watcher and backoff, our
//! source, the engine, the xDS server and Envoy.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Services path of the core API.
pub const SERVICES: &str = "/api/v1/services";
/// EndpointSlices path of `discovery.k8s.io/v1`.
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

/// One line of a watch stream, or its end.
#[derive(Clone, Debug)]
pub enum Frame {
    /// `{"type": TYPE, "object": OBJECT}`.
    Event(&'static str, Value),
    /// `{"type":"ERROR"}` with a `410 Gone` Status, then the stream ends (the client re-lists).
    Gone,
    /// The server ends the watch (the client re-watches from the last resource version).
    End,
}

/// One resource's script: list answers (the last one repeats) and live watch frames.
struct Resource {
    lists: Mutex<VecDeque<(u16, Value)>>,
    frames: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Frame>>>,
    sender: mpsc::UnboundedSender<Frame>,
}

impl Resource {
    fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            lists: Mutex::new(VecDeque::new()),
            frames: Arc::new(tokio::sync::Mutex::new(receiver)),
            sender,
        }
    }
}

struct Shared {
    services: Resource,
    slices: Resource,
    requests: Mutex<Vec<String>>,
}

/// The fake API server; stops when dropped.
pub struct FakeKubeApi {
    /// Where it listens.
    pub address: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubeApi {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            services: Resource::new(),
            slices: Resource::new(),
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route(SERVICES, get(services))
            .route(SLICES, get(slices))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API");
        let address = listener.local_addr().expect("fake API address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            address,
            shared,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Queues a list answer for `path` (`SERVICES` or `SLICES`); the last one repeats.
    pub fn push_list(&self, path: &str, status: u16, body: Value) {
        self.resource(path)
            .lists
            .lock()
            .expect("lists lock")
            .push_back((status, body));
    }

    /// Replaces every queued list answer for `path` (the last one repeats).
    pub fn replace_lists(&self, path: &str, answers: Vec<(u16, Value)>) {
        *self.resource(path).lists.lock().expect("lists lock") = answers.into();
    }

    /// Sends a frame on `path`'s watch stream (delivered to the current or next watch).
    pub fn push_frame(&self, path: &str, frame: Frame) {
        let _ = self.resource(path).sender.send(frame);
    }

    /// Every request so far, as `PATH?QUERY`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    fn resource(&self, path: &str) -> &Resource {
        match path {
            SERVICES => &self.shared.services,
            SLICES => &self.shared.slices,
            other => panic!("the fake API serves {SERVICES} and {SLICES}, not {other}"),
        }
    }

    /// Writes a kubeconfig pointing at this server into `directory`.
    pub fn write_kubeconfig(&self, directory: &Path) -> PathBuf {
        let path = directory.join("kubeconfig.yaml");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: recorded\n  cluster: {{ server: \"{}\" }}\nusers:\n- name: recorded\n  user: {{}}\ncontexts:\n- name: recorded\n  context: {{ cluster: recorded, user: recorded }}\ncurrent-context: recorded\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn services(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    answer(&shared, SERVICES, &shared.services, query).await
}

async fn slices(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    answer(&shared, SLICES, &shared.slices, query).await
}

async fn answer(
    shared: &Shared,
    path: &str,
    resource: &Resource,
    query: Option<String>,
) -> Response {
    let query = query.unwrap_or_default();
    shared
        .requests
        .lock()
        .expect("requests lock")
        .push(format!("{path}?{query}"));
    if query.split('&').any(|pair| pair == "watch=true") {
        return watch(resource).await;
    }
    let (status, body) = {
        let mut lists = resource.lists.lock().expect("lists lock");
        if lists.len() > 1 {
            lists.pop_front()
        } else {
            lists.front().cloned()
        }
    }
    .unwrap_or((500, status_body(500, "InternalError", "no list recorded")));
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Streams frames as JSON lines until `End` or `Gone`; only one watch per resource at a time.
async fn watch(resource: &Resource) -> Response {
    let receiver = Arc::clone(&resource.frames).lock_owned().await;
    let lines = futures::stream::unfold(Some(receiver), |state| async move {
        let mut receiver = state?;
        let line = match receiver.recv().await? {
            Frame::Event(kind, object) => json!({ "type": kind, "object": object }),
            Frame::Gone => {
                let line = json!({ "type": "ERROR", "object": status_body(410, "Expired", "too old resource version: 100 (2000)") });
                return Some((Ok::<_, std::convert::Infallible>(format!("{line}\n")), None));
            }
            Frame::End => return None,
        };
        Some((Ok(format!("{line}\n")), Some(receiver)))
    });
    (
        [("content-type", "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// A `meta/v1` Status as the API server sends it.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code })
}

/// A list answer: `kind` and `resourceVersion` set, items without `kind` (as the API sends them).
pub fn list(kind: &str, api_version: &str, resource_version: &str, items: Vec<Value>) -> Value {
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut item| {
            if let Some(object) = item.as_object_mut() {
                object.remove("kind");
                object.remove("apiVersion");
            }
            item
        })
        .collect();
    json!({ "kind": kind, "apiVersion": api_version,
            "metadata": { "resourceVersion": resource_version }, "items": items })
}

/// A Service with one TCP port named `http` (and a UDP port the source must skip).
pub fn service(
    namespace: &str,
    name: &str,
    port: u16,
    labels: Value,
    resource_version: &str,
) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": { "name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                      "resourceVersion": resource_version, "labels": labels },
        "spec": { "type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                  "ports": [ { "name": "http", "protocol": "TCP", "port": port, "targetPort": "http" },
                             { "name": "metrics-udp", "protocol": "UDP", "port": 9125, "targetPort": 9125 } ],
                  "selector": { "app": name }, "sessionAffinity": "None" },
        "status": { "loadBalancer": {} }
    })
}

/// One endpoint of a slice: `(address, pod, zone, ready, serving, terminating)`.
pub struct SliceEndpoint<'a> {
    pub address: &'a str,
    pub pod: &'a str,
    pub zone: &'a str,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// A ready endpoint.
pub fn ready<'a>(address: &'a str, pod: &'a str, zone: &'a str) -> SliceEndpoint<'a> {
    SliceEndpoint {
        address,
        pod,
        zone,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// An EndpointSlice of `service` with port `http` = `port`, shaped like the controller's.
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    port: u16,
    endpoints: &[SliceEndpoint<'_>],
    resource_version: &str,
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|endpoint| {
            json!({
                "addresses": [endpoint.address],
                "conditions": { "ready": endpoint.ready, "serving": endpoint.serving,
                                "terminating": endpoint.terminating },
                "nodeName": format!("node-{}", endpoint.zone),
                "targetRef": { "kind": "Pod", "namespace": namespace, "name": endpoint.pod,
                               "uid": format!("uid-{}", endpoint.pod) },
                "zone": endpoint.zone
            })
        })
        .collect();
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": { "name": name, "namespace": namespace, "resourceVersion": resource_version,
                      "generateName": format!("{service}-"),
                      "labels": { "kubernetes.io/service-name": service,
                                  "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io" },
                      "ownerReferences": [ { "apiVersion": "v1", "kind": "Service", "name": service,
                                             "uid": format!("uid-{service}"), "controller": true,
                                             "blockOwnerDeletion": true } ] },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [ { "name": "http", "protocol": "TCP", "port": port } ]
    })
}
