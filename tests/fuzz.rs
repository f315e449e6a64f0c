//! Property-based fuzzing (proptest, so it runs in CI with a bounded case count): config parsing,
//! remote-write decoding and the xDS state machines never panic on arbitrary input, and the
//! protocol invariants hold for arbitrary request sequences.

use std::{collections::BTreeMap, sync::Arc};

use adaptive_eds::{
    discovery::{Endpoint, HealthStatus, Locality},
    metrics::remote_write,
    snapshot::{ClusterResource, ServedEndpoint, Snapshot, CLUSTER_LOAD_ASSIGNMENT},
    xds::{delta::DeltaState, sotw::SotwState, Nonces, RequestEvent},
};
use envoy_types::pb::{
    envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest},
    google::rpc::Status,
};
use proptest::prelude::*;

fn snapshot(weights: &[(u8, u32)]) -> Snapshot {
    let mut clusters = BTreeMap::new();
    for (name, weight) in weights {
        let name = format!("c{}", name % 4);
        let served = ServedEndpoint {
            endpoint: Arc::new(Endpoint {
                address: "10.0.0.1".parse().expect("ip"),
                port: 80,
                configured_weight: None,
                pod: None,
                node: None,
                locality: Locality::default(),
                health: HealthStatus::Healthy,
            }),
            weight: (*weight).max(1),
            reason: Default::default(),
        };
        clusters.insert(
            name.clone(),
            Arc::new(ClusterResource::build(&name, vec![served])),
        );
    }
    Snapshot::new(clusters)
}

/// One step a client (or the server's source) can take.
#[derive(Clone, Debug)]
enum Step {
    /// Request with these names, quoting the last nonce (or a stale or empty one), maybe a NACK.
    Request {
        names: Vec<u8>,
        nonce: u8,
        nack: bool,
        version: bool,
    },
    /// A new snapshot.
    Publish(Vec<(u8, u32)>),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (
            proptest::collection::vec(0u8..6, 0..5),
            0u8..3,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(names, nonce, nack, version)| Step::Request {
                names,
                nonce,
                nack,
                version
            }),
        proptest::collection::vec((0u8..6, 1u32..5), 0..5).prop_map(Step::Publish),
    ];
    proptest::collection::vec(step, 1..40)
}

fn nonce_for(choice: u8, last: &str) -> String {
    match choice {
        0 => String::new(),
        1 => last.to_string(),
        _ => "stale".to_string(),
    }
}

proptest! {
    // 256 cases per property in CI; `PROPTEST_CASES=100000` for a long local run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(256),
        .. ProptestConfig::default()
    })]

    #[test]
    fn config_parsing_never_panics(text in "\\PC{0,400}") {
        let _ = adaptive_eds::config::parse(&text);
    }

    #[test]
    fn config_parsing_never_panics_on_yamlish_input(
        keys in proptest::collection::vec(prop_oneof![
            Just("clusters"), Just("name"), Just("endpoints"), Just("address"), Just("port"),
            Just("weight"), Just("weighting"), Just("metrics"), Just("tick"), Just("xds"), Just("-"),
            Just(":"), Just("{"), Just("}"), Just("["), Just("]"), Just("\n  "), Just("0"), Just("1e999"),
            Just("\"10.0.0.1\""), Just("${namespace}"), Just("5m"),
        ], 0..60)
    ) {
        let _ = adaptive_eds::config::parse(&keys.join(" "));
    }

    #[test]
    fn remote_write_decoding_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = remote_write::decode(&body);
        let compressed = snap::raw::Encoder::new().compress_vec(&body).expect("compress");
        let _ = remote_write::decode(&compressed);
    }

    #[test]
    fn sotw_never_resends_a_rejected_version_and_never_answers_stale_nonces(steps in steps()) {
        let mut state = SotwState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let mut nonces = Nonces::default();
        let mut current = snapshot(&[(0, 1)]);
        let mut last = (String::new(), String::new());
        let mut subscribed: Vec<String> = Vec::new();
        for step in steps {
            let response = match step {
                Step::Request { names, nonce, nack, version } => {
                    let mut names: Vec<String> = names.iter().map(|name| format!("c{}", name % 4)).collect();
                    names.sort();
                    names.dedup();
                    let request = DiscoveryRequest {
                        type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
                        resource_names: names.clone(),
                        version_info: if version { last.0.clone() } else { String::new() },
                        response_nonce: nonce_for(nonce, &last.1),
                        error_detail: nack.then(|| Status { code: 3, message: "no".into(), details: vec![] }),
                        ..Default::default()
                    };
                    let (event, response) = state.on_request(&request, &current, &mut nonces);
                    if event == RequestEvent::Stale {
                        prop_assert!(response.is_none(), "a stale nonce is never answered");
                    } else if matches!(event, RequestEvent::Nack { .. } | RequestEvent::Ack { .. }) && names == subscribed {
                        prop_assert!(response.is_none(), "an ACK or NACK without a subscription change is never answered");
                    }
                    if event != RequestEvent::Stale {
                        subscribed = names;
                    }
                    response
                }
                Step::Publish(weights) => {
                    current = snapshot(&weights);
                    state.on_snapshot(&current, &mut nonces)
                }
            };
            if let Some(response) = response {
                prop_assert_ne!(&response.nonce, &last.1, "every response has a fresh nonce");
                last = (response.version_info.clone(), response.nonce.clone());
            }
        }
    }

    #[test]
    fn delta_sends_only_changes_and_never_panics(steps in steps()) {
        let mut state = DeltaState::for_assignments(CLUSTER_LOAD_ASSIGNMENT);
        let mut nonces = Nonces::default();
        let mut current = snapshot(&[(0, 1)]);
        let mut last_nonce = String::new();
        let mut held: BTreeMap<String, String> = BTreeMap::new();
        for step in steps {
            let response = match step {
                Step::Request { names, nonce, nack, .. } => {
                    let (subscribe, unsubscribe): (Vec<u8>, Vec<u8>) = names.iter().partition(|name| **name < 4);
                    let request = DeltaDiscoveryRequest {
                        type_url: CLUSTER_LOAD_ASSIGNMENT.into(),
                        resource_names_subscribe: subscribe.iter().map(|name| format!("c{name}")).collect(),
                        resource_names_unsubscribe: unsubscribe.iter().map(|name| format!("c{}", name % 4)).collect(),
                        response_nonce: nonce_for(nonce, &last_nonce),
                        error_detail: nack.then(|| Status { code: 3, message: "no".into(), details: vec![] }),
                        ..Default::default()
                    };
                    for name in &request.resource_names_unsubscribe {
                        held.remove(name);
                    }
                    state.on_request(&request, &current, &mut nonces).1
                }
                Step::Publish(weights) => {
                    current = snapshot(&weights);
                    state.on_snapshot(&current, &mut nonces)
                }
            };
            if let Some(response) = response {
                prop_assert!(!response.resources.is_empty() || !response.removed_resources.is_empty());
                for encoded in &response.resources {
                    use prost::Message;
                    let resource = envoy_types::pb::envoy::service::discovery::v3::Resource::decode(encoded.clone()).expect("decode");
                    prop_assert_ne!(held.get(&resource.name), Some(&resource.version), "resent an unchanged resource");
                    held.insert(resource.name.clone(), resource.version.clone());
                }
                for name in &response.removed_resources {
                    prop_assert!(!current.clusters.contains_key(name));
                    held.remove(name);
                }
                last_nonce = response.nonce.clone();
            }
        }
    }
}

mod load_reports {
    //! LRS: the request decoder never panics on arbitrary or corrupted bytes, and arbitrary
    //! reports (any interval, any counters, any metric values, any addresses) never panic the
    //! aggregation nor publish a NaN, negative or infinite figure.

    use std::time::{Duration, Instant, SystemTime};

    use adaptive_eds::{
        lrs::{
            aggregate::LoadReports,
            wire::{decode_report, EncodedClusterStats},
        },
        samples::SampleTable,
        snapshot::SnapshotStore,
        telemetry::Metrics,
    };
    use envoy_types::pb::{
        envoy::{
            config::{
                core::v3::{address, socket_address::PortSpecifier, Address, Node, SocketAddress},
                endpoint::v3::{
                    ClusterStats, EndpointLoadMetricStats, UpstreamEndpointStats,
                    UpstreamLocalityStats,
                },
            },
            service::load_stats::v3::LoadStatsRequest,
        },
        google::protobuf,
    };
    use proptest::prelude::*;
    use prost::Message;

    fn counter() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..200, any::<u64>()]
    }

    fn endpoint_stats() -> impl Strategy<Value = UpstreamEndpointStats> {
        (
            prop_oneof![
                Just("10.0.0.1".to_string()),
                Just("10.0.0.2".to_string()),
                "\\PC{0,12}"
            ],
            prop_oneof![Just(80u32), any::<u32>()],
            (counter(), counter(), counter(), counter()),
            proptest::option::of((counter(), any::<f64>())),
        )
            .prop_map(|(ip, port, (success, error, issued, in_progress), cpu)| {
                UpstreamEndpointStats {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: ip,
                            port_specifier: Some(PortSpecifier::PortValue(port)),
                            ..Default::default()
                        })),
                    }),
                    total_successful_requests: success,
                    total_error_requests: error,
                    total_issued_requests: issued,
                    total_requests_in_progress: in_progress,
                    load_metric_stats: cpu
                        .map(|(requests, total)| EndpointLoadMetricStats {
                            metric_name: "cpu_utilization".into(),
                            num_requests_finished_with_metric: requests,
                            total_metric_value: total,
                        })
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }
            })
    }

    fn cluster_stats() -> impl Strategy<Value = ClusterStats> {
        (
            prop_oneof![Just("c0"), Just("c1"), Just("other")],
            proptest::option::of((
                prop_oneof![0i64..3, any::<i64>()],
                prop_oneof![0i32..1_000_000_000, any::<i32>()],
            )),
            proptest::collection::vec(endpoint_stats(), 0..4),
        )
            .prop_map(|(name, interval, endpoints)| ClusterStats {
                cluster_name: name.into(),
                load_report_interval: interval
                    .map(|(seconds, nanos)| protobuf::Duration { seconds, nanos }),
                upstream_locality_stats: vec![UpstreamLocalityStats {
                    upstream_endpoint_stats: endpoints,
                    ..Default::default()
                }],
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), first in any::<bool>()) {
            let _ = decode_report(bytes.as_slice(), first);
        }

        #[test]
        fn decoding_corrupted_reports_never_panics(
            stats in proptest::collection::vec(cluster_stats(), 0..3),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        ) {
            let request = LoadStatsRequest {
                node: Some(Node { id: "envoy".into(), ..Default::default() }),
                cluster_stats: stats.clone(),
            };
            let mut bytes = request.encode_to_vec();
            let decoded = decode_report(bytes.as_slice(), false).expect("valid bytes decode");
            let decoded: Vec<ClusterStats> = decoded
                .cluster_stats
                .iter()
                .map(|encoded| encoded.decode().expect("valid stats decode"))
                .collect();
            prop_assert_eq!(decoded, stats);
            for (index, value) in flips {
                if !bytes.is_empty() {
                    let at = index.index(bytes.len());
                    bytes[at] ^= value;
                }
            }
            for first in [true, false] {
                if let Ok(report) = decode_report(bytes.as_slice(), first) {
                    for encoded in &report.cluster_stats {
                        // The names read without decoding are the ones a full decode reads.
                        if let Ok(stats) = encoded.decode() {
                            let name = if stats.cluster_service_name.is_empty() {
                                &stats.cluster_name
                            } else {
                                &stats.cluster_service_name
                            };
                            prop_assert_eq!(encoded.name(), name.as_str());
                        }
                    }
                }
            }
        }

        #[test]
        fn arbitrary_reports_never_panic_nor_publish_garbage(
            reports in proptest::collection::vec((0u8..3, 0u64..4000, proptest::collection::vec(cluster_stats(), 0..3)), 1..20),
        ) {
            let store = SnapshotStore::new();
            store.publish(super::snapshot(&[(0, 1)]));
            let table = SampleTable::default();
            let aggregate = LoadReports::new(store, table.clone(), Metrics::default(), Duration::from_secs(1));
            let mut streams: Vec<_> = (0..3).map(|id| Some(aggregate.open_stream(id))).collect();
            let start = Instant::now();
            let mut now = start;
            for (stream, advance_ms, stats) in reports {
                now += Duration::from_millis(advance_ms);
                if let Some(handle) = &streams[usize::from(stream)] {
                    if advance_ms % 2 == 0 {
                        handle.record(&stats, now, SystemTime::now());
                    } else {
                        let encoded: Vec<_> = stats.iter().map(EncodedClusterStats::encode).collect();
                        handle.record_encoded(&encoded, now, SystemTime::now());
                    }
                }
                if advance_ms > 3000 {
                    // Now and then a stream goes away.
                    streams[usize::from(stream)] = None;
                }
                aggregate.publish(now);
                for (_, endpoints) in aggregate.figures(now).values() {
                    for figures in endpoints.values() {
                        for value in [figures.rps, figures.errors, figures.in_flight]
                            .into_iter()
                            .chain(figures.latency)
                            .chain(figures.cpu)
                        {
                            prop_assert!(value.is_finite() && value >= 0.0, "{:?}", figures);
                        }
                        prop_assert!(figures.errors <= figures.rps + 1e-9, "{:?}", figures);
                    }
                }
            }
        }
    }
}
