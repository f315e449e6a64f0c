//! Incremental (delta) protocol state for one resource type on one stream (no transport here).

use std::collections::HashMap;

use envoy_types::pb::envoy::{
    config::core::v3::Node, service::discovery::v3::DeltaDiscoveryRequest,
};

use super::{
    stream::{Protocol, XdsRequest},
    type_state::TypeState,
    Nonces, RequestEvent,
};
use crate::snapshot::Snapshot;
use crate::xds::wire::DeltaResponse;

/// What the client has and wants, for one type URL on one delta stream.
#[derive(Debug, Default)]
pub struct DeltaState {
    state: TypeState,
    started: bool,
    /// Versions the client holds, by resource name.
    client_versions: HashMap<String, String>,
}

impl DeltaState {
    /// State for the `ClusterLoadAssignment` type.
    pub fn for_assignments(type_url: &str) -> Self {
        Self {
            state: TypeState::new(type_url, true),
            ..Default::default()
        }
    }

    /// State for a type we do not serve (on ADS): answered once with nothing.
    pub fn for_unserved(type_url: &str) -> Self {
        Self {
            state: TypeState::new(type_url, false),
            ..Default::default()
        }
    }

    /// Handles one request; returns what it was and the response to send, if any.
    pub fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        snapshot: &Snapshot,
        nonces: &mut Nonces,
    ) -> (RequestEvent, Option<DeltaResponse>) {
        if !self.started {
            self.started = true;
            self.client_versions = request.initial_resource_versions.clone();
        }
        // Subscription changes count even in a request with a stale nonce (delta nonces only
        // pair ACKs with responses).
        for name in &request.resource_names_subscribe {
            self.state.subscribe(name);
        }
        for name in &request.resource_names_unsubscribe {
            self.state.unsubscribe(name);
            self.client_versions.remove(name);
        }
        let event =
            self.state
                .classify(&request.response_nonce, request.error_detail.as_ref(), None);
        self.state.record(&event);
        let response = if self.state.serves_resources() {
            self.diff(snapshot, nonces)
        } else {
            self.unserved_response(nonces)
        };
        (event, response)
    }

    /// Handles a new snapshot: sends what changed for this client, if anything.
    pub fn on_snapshot(
        &mut self,
        snapshot: &Snapshot,
        nonces: &mut Nonces,
    ) -> Option<DeltaResponse> {
        if !self.state.serves_resources() {
            return None;
        }
        self.diff(snapshot, nonces)
    }

    fn diff(&mut self, snapshot: &Snapshot, nonces: &mut Nonces) -> Option<DeltaResponse> {
        let changed: Vec<_> = snapshot
            .clusters
            .values()
            .filter(|resource| self.state.wants(&resource.name))
            .filter(|resource| self.client_versions.get(&resource.name) != Some(&resource.version))
            .cloned()
            .collect();
        let mut removed: Vec<String> = self
            .client_versions
            .keys()
            .filter(|name| !snapshot.clusters.contains_key(*name))
            .cloned()
            .collect();
        removed.sort_unstable();
        if changed.is_empty() && removed.is_empty() {
            return None;
        }
        for resource in &changed {
            self.client_versions
                .insert(resource.name.clone(), resource.version.clone());
        }
        for name in &removed {
            self.client_versions.remove(name);
        }
        let nonce = self.state.sent(nonces, Some(snapshot.version.clone()));
        Some(DeltaResponse {
            system_version_info: snapshot.version.clone(),
            resources: changed
                .iter()
                .map(|resource| resource.delta_resource.clone())
                .collect(),
            type_url: self.state.type_url().to_string(),
            nonce,
            removed_resources: removed,
        })
    }

    fn unserved_response(&mut self, nonces: &mut Nonces) -> Option<DeltaResponse> {
        if self.state.has_sent() {
            return None;
        }
        let nonce = self.state.sent(nonces, None);
        Some(DeltaResponse {
            type_url: self.state.type_url().to_string(),
            nonce,
            ..Default::default()
        })
    }
}

impl Protocol for DeltaState {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    fn new_state(type_url: &str, served: bool) -> Self {
        Self {
            state: TypeState::new(type_url, served),
            ..Default::default()
        }
    }
    fn on_request(
        &mut self,
        request: &DeltaDiscoveryRequest,
        snapshot: &Snapshot,
        nonces: &mut Nonces,
    ) -> (RequestEvent, Option<DeltaResponse>) {
        DeltaState::on_request(self, request, snapshot, nonces)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot, nonces: &mut Nonces) -> Option<DeltaResponse> {
        DeltaState::on_snapshot(self, snapshot, nonces)
    }
    fn type_state(&self) -> &TypeState {
        &self.state
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn name_count(&self) -> usize {
        self.resource_names_subscribe.len() + self.initial_resource_versions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::CLUSTER_LOAD_ASSIGNMENT;
    use envoy_types::pb::google::rpc::Status;

    use crate::snapshot::testing::snapshot;

    fn subscribe(names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
            resource_names_subscribe: names.iter().map(|name| name.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ack(nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sends_only_what_changed_and_removals() {
        let mut nonces = Nonces::default();
        let mut state = DeltaState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let first = snapshot(&[("a", 1), ("b", 1), ("c", 1)]);
        let (_, response) = state.on_request(&subscribe(&["a", "b"]), &first, &mut nonces);
        let response = response.expect("initial");
        assert_eq!(response.resources.len(), 2);
        let (event, none) = state.on_request(&ack(&response.nonce), &first, &mut nonces);
        assert!(matches!(event, RequestEvent::Ack { .. }));
        assert!(none.is_none());

        let second = snapshot(&[("a", 2), ("b", 1), ("c", 3)]);
        let update = state.on_snapshot(&second, &mut nonces).expect("a changed");
        assert_eq!(update.resources.len(), 1);
        assert!(update.removed_resources.is_empty());

        let third = snapshot(&[("a", 2), ("c", 3)]);
        let removal = state.on_snapshot(&third, &mut nonces).expect("b removed");
        assert!(removal.resources.is_empty());
        assert_eq!(removal.removed_resources, vec!["b"]);
    }

    #[test]
    fn reconnect_with_known_versions_gets_only_differences() {
        let mut nonces = Nonces::default();
        let snap = snapshot(&[("a", 1), ("b", 1)]);
        let versions: HashMap<String, String> = snap
            .clusters
            .values()
            .map(|resource| (resource.name.clone(), resource.version.clone()))
            .collect();
        let mut state = DeltaState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let mut request = subscribe(&["a", "b"]);
        request.initial_resource_versions = versions.clone();
        let (_, none) = state.on_request(&request, &snap, &mut nonces);
        assert!(none.is_none(), "nothing changed while disconnected");

        let mut stale = DeltaState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let mut request = subscribe(&["a", "b", "gone"]);
        request.initial_resource_versions = versions;
        request
            .initial_resource_versions
            .insert("gone".into(), "v0".into());
        let newer = snapshot(&[("a", 1), ("b", 7)]);
        let response = stale
            .on_request(&request, &newer, &mut nonces)
            .1
            .expect("differences");
        assert_eq!(response.resources.len(), 1);
        assert_eq!(response.removed_resources, vec!["gone"]);
    }

    #[test]
    fn unsubscribe_unknown_and_nack() {
        let mut nonces = Nonces::default();
        let mut state = DeltaState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let snap = snapshot(&[("a", 1)]);
        let (_, none) = state.on_request(&subscribe(&["unknown"]), &snap, &mut nonces);
        assert!(none.is_none(), "unknown names get nothing invented");
        let response = state
            .on_request(&subscribe(&["a"]), &snap, &mut nonces)
            .1
            .expect("a");
        let mut nack = ack(&response.nonce);
        nack.error_detail = Some(Status {
            code: 3,
            message: "rejected".into(),
            details: Vec::new(),
        });
        let (event, resend) = state.on_request(&nack, &snap, &mut nonces);
        assert!(matches!(event, RequestEvent::Nack { ref message, .. } if message == "rejected"));
        assert!(resend.is_none(), "no resend loop after a NACK");

        let mut unsubscribe = ack("");
        unsubscribe.resource_names_unsubscribe = vec!["a".into()];
        state.on_request(&unsubscribe, &snap, &mut nonces);
        let changed = snapshot(&[("a", 9)]);
        assert!(
            state.on_snapshot(&changed, &mut nonces).is_none(),
            "unsubscribed"
        );
        assert_eq!(state.subscribed(), vec!["unknown"]);
    }
}
