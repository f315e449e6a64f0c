//! State-of-the-world protocol state for one resource type on one stream (no transport here).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::{Nonces, RequestEvent};
use crate::snapshot::{combined_version, Snapshot};
use crate::xds::wire::SotwResponse;

/// Wildcard resource name: every cluster in the snapshot.
pub const WILDCARD: &str = "*";

/// Subscriptions, nonces and versions for one type URL on one SotW stream.
#[derive(Debug, Default)]
pub struct SotwState {
    type_url: String,
    subscribed: BTreeSet<String>,
    last_nonce: Option<String>,
    last_sent_version: Option<String>,
    acked_version: Option<String>,
    serves_resources: bool,
}

impl SotwState {
    /// State for the `ClusterLoadAssignment` type: responses carry snapshot resources.
    pub fn for_assignments(type_url: &str) -> Self {
        Self {
            type_url: type_url.into(),
            serves_resources: true,
            ..Default::default()
        }
    }

    /// State for a type we do not serve (on ADS): every request is answered with no resources,
    /// so the client finishes initialising instead of waiting for a timeout.
    pub fn for_unserved(type_url: &str) -> Self {
        Self {
            type_url: type_url.into(),
            serves_resources: false,
            ..Default::default()
        }
    }

    /// Subscribed names, sorted.
    pub fn subscribed(&self) -> Vec<String> {
        self.subscribed.iter().cloned().collect()
    }

    /// Number of subscribed names.
    pub fn subscribed_count(&self) -> usize {
        self.subscribed.len()
    }

    /// Last version sent on this stream, if any.
    pub fn last_sent_version(&self) -> Option<&str> {
        self.last_sent_version.as_deref()
    }

    /// Last version the client ACKed, if any.
    pub fn acked_version(&self) -> Option<&str> {
        self.acked_version.as_deref()
    }

    /// Handles one request; returns what it was and the response to send, if any.
    pub fn on_request(
        &mut self,
        request: &DiscoveryRequest,
        snapshot: &Snapshot,
        nonces: &mut Nonces,
    ) -> (RequestEvent, Option<SotwResponse>) {
        let event = self.classify(request);
        if event == RequestEvent::Stale {
            return (event, None);
        }
        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
        let subscription_changed = names != self.subscribed;
        self.subscribed = names;
        match &event {
            RequestEvent::Ack { version } => self.acked_version = Some(version.clone()),
            RequestEvent::Initial if !request.version_info.is_empty() => {
                // A reconnecting client tells us what it has; if that is what we would send,
                // there is nothing to push.
                self.last_sent_version = Some(request.version_info.clone());
                self.acked_version = Some(request.version_info.clone());
            }
            _ => {}
        }
        let response = match event {
            RequestEvent::Nack { .. } | RequestEvent::Ack { .. } if !subscription_changed => None,
            _ if !self.serves_resources => self.unserved_response(&event, nonces),
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
        if !self.serves_resources {
            return None;
        }
        self.response(snapshot, nonces)
    }

    fn classify(&self, request: &DiscoveryRequest) -> RequestEvent {
        if request.response_nonce.is_empty() {
            return RequestEvent::Initial;
        }
        if self.last_nonce.as_deref() != Some(request.response_nonce.as_str()) {
            return RequestEvent::Stale;
        }
        match &request.error_detail {
            Some(status) => RequestEvent::Nack {
                version: self.last_sent_version.clone().unwrap_or_default(),
                message: status.message.clone(),
            },
            None => RequestEvent::Ack {
                version: request.version_info.clone(),
            },
        }
    }

    fn response(&mut self, snapshot: &Snapshot, nonces: &mut Nonces) -> Option<SotwResponse> {
        let resources: Vec<_> = if self.subscribed.contains(WILDCARD) {
            snapshot.clusters.values().collect()
        } else {
            self.subscribed
                .iter()
                .filter_map(|name| snapshot.clusters.get(name))
                .collect()
        };
        let version = combined_version(
            resources
                .iter()
                .map(|resource| (resource.name.as_str(), resource.version.as_str())),
        );
        if self.last_sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        if resources.is_empty() && self.last_sent_version.is_none() {
            // Only unknown names so far: say nothing rather than invent an empty answer.
            return None;
        }
        let nonce = nonces.issue();
        self.last_nonce = Some(nonce.clone());
        self.last_sent_version = Some(version.clone());
        Some(SotwResponse {
            version_info: version,
            resources: resources
                .iter()
                .map(|resource| resource.any.clone())
                .collect(),
            type_url: self.type_url.clone(),
            nonce,
        })
    }

    fn unserved_response(
        &mut self,
        event: &RequestEvent,
        nonces: &mut Nonces,
    ) -> Option<SotwResponse> {
        if !matches!(event, RequestEvent::Initial) && self.last_nonce.is_some() {
            return None;
        }
        let nonce = nonces.issue();
        let version = combined_version([]);
        self.last_nonce = Some(nonce.clone());
        self.last_sent_version = Some(version.clone());
        Some(SotwResponse {
            version_info: version,
            resources: Vec::new(),
            type_url: self.type_url.clone(),
            nonce,
        })
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
