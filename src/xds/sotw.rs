//! State-of-the-world protocol state for one resource type on one stream (no transport here).

use envoy_types::pb::envoy::{config::core::v3::Node, service::discovery::v3::DiscoveryRequest};

use super::{
    stream::{Protocol, XdsRequest},
    type_state::TypeState,
    Nonces, RequestEvent,
};
use crate::snapshot::{combined_version, Snapshot};
use crate::xds::wire::SotwResponse;

/// Subscriptions, nonces and versions for one type URL on one SotW stream.
#[derive(Debug, Default)]
pub struct SotwState {
    state: TypeState,
}

impl SotwState {
    /// State for the `ClusterLoadAssignment` type: responses carry snapshot resources.
    pub fn for_assignments(type_url: &str) -> Self {
        Self {
            state: TypeState::new(type_url, true),
        }
    }

    /// State for a type we do not serve (on ADS): every request is answered with no resources,
    /// so the client finishes initialising instead of waiting for a timeout.
    pub fn for_unserved(type_url: &str) -> Self {
        Self {
            state: TypeState::new(type_url, false),
        }
    }

    /// Handles one request; returns what it was and the response to send, if any.
    pub fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        snapshot: &Snapshot,
        nonces: &mut Nonces,
    ) -> (RequestEvent, Option<SotwResponse>) {
        let event = self.state.classify(
            &request.response_nonce,
            request.error_detail.as_ref(),
            Some(&request.version_info),
        );
        if event == RequestEvent::Stale {
            return (event, None);
        }
        let subscription_changed = self.state.replace_subscription(&request.resource_names);
        self.state.record(&event);
        if event == RequestEvent::Initial && !request.version_info.is_empty() {
            // A reconnecting client tells us what it has; if that is what we would send,
            // there is nothing to push.
            self.state.resume_at(&request.version_info);
        }
        let response = match event {
            RequestEvent::Nack { .. } | RequestEvent::Ack { .. } if !subscription_changed => None,
            _ if !self.state.serves_resources() => self.unserved_response(&event, nonces),
            _ => self.response(snapshot, nonces),
        };
        (event, response)
    }

    /// Handles a new snapshot; returns a response if what this client subscribed to changed.
    pub fn on_snapshot(
        &mut self,
        snapshot: &Snapshot,
        nonces: &mut Nonces,
    ) -> Option<SotwResponse> {
        if !self.state.serves_resources() {
            return None;
        }
        self.response(snapshot, nonces)
    }

    fn response(&mut self, snapshot: &Snapshot, nonces: &mut Nonces) -> Option<SotwResponse> {
        let resources: Vec<_> = if self.state.is_wildcard() {
            snapshot.clusters.values().collect()
        } else {
            self.state
                .names()
                .filter_map(|name| snapshot.clusters.get(name))
                .collect()
        };
        let version = combined_version(
            resources
                .iter()
                .map(|resource| (resource.name.as_str(), resource.version.as_str())),
        );
        if self.state.last_sent_version() == Some(version.as_str()) {
            return None;
        }
        if resources.is_empty() && self.state.last_sent_version().is_none() {
            // Only unknown names so far: say nothing rather than invent an empty answer.
            return None;
        }
        let nonce = self.state.sent(nonces, Some(version.clone()));
        Some(SotwResponse {
            version_info: version,
            resources: resources
                .iter()
                .map(|resource| resource.any.clone())
                .collect(),
            type_url: self.state.type_url().to_string(),
            nonce,
        })
    }

    fn unserved_response(
        &mut self,
        event: &RequestEvent,
        nonces: &mut Nonces,
    ) -> Option<SotwResponse> {
        if !matches!(event, RequestEvent::Initial) && self.state.has_sent() {
            return None;
        }
        let version = combined_version([]);
        let nonce = self.state.sent(nonces, Some(version.clone()));
        Some(SotwResponse {
            version_info: version,
            resources: Vec::new(),
            type_url: self.state.type_url().to_string(),
            nonce,
        })
    }
}

impl Protocol for SotwState {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;
    fn new_state(type_url: &str, served: bool) -> Self {
        Self {
            state: TypeState::new(type_url, served),
        }
    }
    fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        snapshot: &Snapshot,
        nonces: &mut Nonces,
    ) -> (RequestEvent, Option<SotwResponse>) {
        SotwState::on_request(self, request, snapshot, nonces)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot, nonces: &mut Nonces) -> Option<SotwResponse> {
        SotwState::on_snapshot(self, snapshot, nonces)
    }
    fn type_state(&self) -> &TypeState {
        &self.state
    }
}

impl XdsRequest for DiscoveryRequest {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn name_count(&self) -> usize {
        self.resource_names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::CLUSTER_LOAD_ASSIGNMENT;
    use envoy_types::pb::google::rpc::Status;

    use crate::snapshot::testing::snapshot;

    fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
            resource_names: names.iter().map(|name| name.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn subscribe_ack_update_nack_and_no_resend() {
        let mut nonces = Nonces::default();
        let mut state = SotwState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let first = snapshot(&[("a", 1), ("b", 1)]);
        let (event, response) = state.on_request(&request(&["a"], "", ""), &first, &mut nonces);
        assert_eq!(event, RequestEvent::Initial);
        let response = response.expect("initial response");
        assert_eq!(response.resources.len(), 1);

        let ack = request(&["a"], &response.version_info, &response.nonce);
        let (event, again) = state.on_request(&ack, &first, &mut nonces);
        assert!(matches!(event, RequestEvent::Ack { .. }));
        assert!(again.is_none(), "an ACK is not answered");

        let unrelated = snapshot(&[("a", 1), ("b", 2)]);
        assert!(
            state.on_snapshot(&unrelated, &mut nonces).is_none(),
            "b is not subscribed"
        );

        let changed = snapshot(&[("a", 5), ("b", 2)]);
        let update = state.on_snapshot(&changed, &mut nonces).expect("a changed");
        assert_ne!(update.version_info, response.version_info);

        let mut nack = request(&["a"], &response.version_info, &update.nonce);
        nack.error_detail = Some(Status {
            code: 3,
            message: "bad weights".into(),
            details: Vec::new(),
        });
        let (event, resend) = state.on_request(&nack, &changed, &mut nonces);
        assert_eq!(
            event,
            RequestEvent::Nack {
                version: update.version_info.clone(),
                message: "bad weights".into()
            }
        );
        assert!(
            resend.is_none(),
            "a NACK is never answered with the same version"
        );
        assert!(state.on_snapshot(&changed, &mut nonces).is_none());
        assert_eq!(state.acked_version(), Some(response.version_info.as_str()));
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let mut nonces = Nonces::default();
        let mut state = SotwState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let snap = snapshot(&[("a", 1), ("b", 1)]);
        let (_, first) = state.on_request(&request(&["a"], "", ""), &snap, &mut nonces);
        let first = first.expect("response");
        let (_, second) =
            state.on_request(&request(&["a", "b"], "", &first.nonce), &snap, &mut nonces);
        assert!(second.is_some(), "subscription change is answered");
        let (event, none) =
            state.on_request(&request(&["b"], "", &first.nonce), &snap, &mut nonces);
        assert_eq!(event, RequestEvent::Stale);
        assert!(none.is_none());
        assert_eq!(
            state.subscribed(),
            vec!["a", "b"],
            "stale request changes nothing"
        );
    }

    #[test]
    fn reconnect_with_current_version_gets_no_push() {
        let mut nonces = Nonces::default();
        let snap = snapshot(&[("a", 1)]);
        let mut first = SotwState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let (_, response) = first.on_request(&request(&["a"], "", ""), &snap, &mut nonces);
        let version = response.expect("response").version_info;
        let mut reconnected = SotwState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let (_, none) = reconnected.on_request(&request(&["a"], &version, ""), &snap, &mut nonces);
        assert!(none.is_none());
        let mut outdated = SotwState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let (_, some) = outdated.on_request(&request(&["a"], "old", ""), &snap, &mut nonces);
        assert!(some.is_some());
    }

    #[test]
    fn unknown_names_get_nothing_invented() {
        let mut nonces = Nonces::default();
        let mut state = SotwState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let (_, response) = state.on_request(
            &request(&["nope"], "", ""),
            &snapshot(&[("a", 1)]),
            &mut nonces,
        );
        assert!(response.is_none());
        let later = snapshot(&[("a", 1), ("nope", 4)]);
        let response = state
            .on_snapshot(&later, &mut nonces)
            .expect("appears once it exists");
        assert_eq!(response.resources.len(), 1);
    }

    #[test]
    fn unsubscribe_and_wildcard() {
        let mut nonces = Nonces::default();
        let snap = snapshot(&[("a", 1), ("b", 1), ("c", 1)]);
        let mut state = SotwState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let (_, all) = state.on_request(&request(&["*"], "", ""), &snap, &mut nonces);
        let all = all.expect("wildcard response");
        assert_eq!(all.resources.len(), 3);
        let (_, fewer) = state.on_request(
            &request(&["c"], &all.version_info, &all.nonce),
            &snap,
            &mut nonces,
        );
        assert_eq!(fewer.expect("unsubscribe answered").resources.len(), 1);
    }

    #[test]
    fn unserved_types_get_one_empty_answer_per_request() {
        let mut nonces = Nonces::default();
        let snap = snapshot(&[("a", 1)]);
        let mut state =
            SotwState::for_unserved("type.googleapis.com/envoy.config.cluster.v3.Cluster");
        let (_, response) = state.on_request(&request(&[], "", ""), &snap, &mut nonces);
        let response = response.expect("answered");
        assert!(response.resources.is_empty());
        let (_, ack) = state.on_request(
            &request(&[], &response.version_info, &response.nonce),
            &snap,
            &mut nonces,
        );
        assert!(ack.is_none());
        assert!(state.on_snapshot(&snap, &mut nonces).is_none());
    }
}
