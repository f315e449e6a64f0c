//! Compiles our `Inspect` API and the reflection descriptors, and generates the discovery servers.
//!
//! No system `protoc` is needed: `protox` parses the `.proto` files in pure Rust.

use std::{env, fs, path::PathBuf};

use prost::Message;

/// The Envoy protos whose descriptors gRPC reflection serves (see `proto/vendor/README.md`).
const ENVOY_REFLECTION_PROTOS: &[&str] = &[
    "envoy/service/discovery/v3/ads.proto",
    "envoy/service/endpoint/v3/eds.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/service/load_stats/v3/lrs.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");

    let inspect = protox::compile(["adaptive_eds/inspect/v1/inspect.proto"], ["proto"])?;
    fs::write(
        out_dir.join("inspect_descriptor.bin"),
        inspect.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(inspect)?;

    let remote_write = protox::compile(["prometheus/remote.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(remote_write)?;

    let envoy = protox::compile(ENVOY_REFLECTION_PROTOS, ["proto/vendor"])?;
    fs::write(out_dir.join("envoy_descriptor.bin"), envoy.encode_to_vec())?;

    generate_discovery_servers();
    Ok(())
}

/// Generates the ADS and EDS servers with our own response types.
///
/// The generated `envoy-types` servers fix the response to `DiscoveryResponse`, whose resources
/// are owned `Any` values: every stream would copy every resource. Our response types write
/// resources that were encoded once per version and are shared (`Bytes`) by every stream, and are
/// byte-for-byte the same messages on the wire.
fn generate_discovery_servers() {
    use tonic_build::manual::{Builder, Method, Service};

    const DISCOVERY: &str = "envoy_types::pb::envoy::service::discovery::v3";
    let sotw = |name: &str, route: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("{DISCOVERY}::DiscoveryRequest"))
            .output_type("crate::xds::wire::SotwResponse")
            .codec_path("crate::xds::wire::XdsCodec")
            .client_streaming()
            .server_streaming()
            .build()
    };
    let delta = |name: &str, route: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("{DISCOVERY}::DeltaDiscoveryRequest"))
            .output_type("crate::xds::wire::DeltaResponse")
            .codec_path("crate::xds::wire::XdsCodec")
            .client_streaming()
            .server_streaming()
            .build()
    };
    let ads = Service::builder()
        .name("AggregatedDiscoveryService")
        .package("envoy.service.discovery.v3")
        .method(sotw(
            "stream_aggregated_resources",
            "StreamAggregatedResources",
        ))
        .method(delta(
            "delta_aggregated_resources",
            "DeltaAggregatedResources",
        ))
        .build();
    let eds = Service::builder()
        .name("EndpointDiscoveryService")
        .package("envoy.service.endpoint.v3")
        .method(sotw("stream_endpoints", "StreamEndpoints"))
        .method(delta("delta_endpoints", "DeltaEndpoints"))
        .method(
            Method::builder()
                .name("fetch_endpoints")
                .route_name("FetchEndpoints")
                .input_type(format!("{DISCOVERY}::DiscoveryRequest"))
                .output_type("crate::xds::wire::SotwResponse")
                .codec_path("crate::xds::wire::XdsCodec")
                .build(),
        )
        .build();
    Builder::new().build_client(false).compile(&[ads, eds]);
    generate_load_reporting_server();
}

/// Generates the LRS server with our request type: `crate::lrs::wire::LoadReport` decodes a
/// `LoadStatsRequest` without the Node that Envoy resends (about 61 KB) in every report.
fn generate_load_reporting_server() {
    use tonic_build::manual::{Builder, Method, Service};

    let lrs = Service::builder()
        .name("LoadReportingService")
        .package("envoy.service.load_stats.v3")
        .method(
            Method::builder()
                .name("stream_load_stats")
                .route_name("StreamLoadStats")
                .input_type("crate::lrs::wire::LoadReport")
                .output_type("envoy_types::pb::envoy::service::load_stats::v3::LoadStatsResponse")
                .codec_path("crate::lrs::wire::LrsCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().build_client(false).compile(&[lrs]);
}
