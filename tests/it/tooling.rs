//! The standard gRPC services on both sockets (`keyward::server::tooling`),
//! through the clients of tonic-health and tonic-reflection, as
//! grpc_health_probe and grpcurl use them: health follows the audit log
//! both ways, and reflection describes each socket's own services and
//! nothing else. The same services as another uid sees them are in
//! `trust::tooling`.

use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use prost_types::FileDescriptorProto;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1alpha;

use crate::common::system::{is_root, skip, Immutable};
use crate::common::*;

/// What reflection lists on the service socket.
pub const KEYS_SOCKET_SERVICES: [&str; 4] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "keyward.v1.Keys",
];

/// What reflection lists on the admin socket.
pub const ADMIN_SOCKET_SERVICES: [&str; 4] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "keyward.v1.Admin",
];

/// A channel to the socket at `path` (served by root: trusted).
pub async fn channel(path: &Path) -> Result<Channel, keyward_client::Error> {
    keyward_client::channel(path).await
}

/// `grpc.health.v1.Health/Check` of `service` (`""`: the whole server).
pub async fn health(channel: &Channel, service: &str) -> Result<ServingStatus, Status> {
    let answer = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

/// One request on a v1 `ServerReflectionInfo` stream, and its answer.
pub async fn reflect(channel: &Channel, request: MessageRequest) -> Result<MessageResponse, Status> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let answer = answers.message().await?.ok_or_else(|| Status::unknown("no answer"))?;
    answer
        .message_response
        .ok_or_else(|| Status::unknown("an empty answer"))
}

/// The services reflection lists (v1), sorted.
pub async fn services(channel: &Channel) -> Result<Vec<String>, Status> {
    match reflect(channel, MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => panic!("not a list of services: {other:?}"),
    }
}

/// The services reflection lists through v1alpha (what older grpcurl
/// asks), sorted.
pub async fn services_v1alpha(channel: &Channel) -> Result<Vec<String>, Status> {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let answer = answers.message().await?.ok_or_else(|| Status::unknown("no answer"))?;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => panic!("not a list of services: {other:?}"),
    }
}

/// The descriptors reflection answers `request` with, and their bytes as
/// they came.
pub async fn files(channel: &Channel, request: MessageRequest) -> Result<(Vec<FileDescriptorProto>, Vec<u8>), Status> {
    match reflect(channel, request).await? {
        MessageResponse::FileDescriptorResponse(files) => {
            let bytes = files.file_descriptor_proto.concat();
            let decoded = files
                .file_descriptor_proto
                .iter()
                .map(|b| FileDescriptorProto::decode(b.as_slice()).expect("a file descriptor"))
                .collect();
            Ok((decoded, bytes))
        }
        other => panic!("not file descriptors: {other:?}"),
    }
}

/// The file that defines `symbol`.
pub async fn file_of(channel: &Channel, symbol: &str) -> Result<(FileDescriptorProto, Vec<u8>), Status> {
    let (mut found, bytes) = files(channel, MessageRequest::FileContainingSymbol(symbol.to_owned())).await?;
    assert_eq!(found.len(), 1, "one file for {symbol}");
    Ok((found.remove(0), bytes))
}

/// The methods of service `name` in `file`.
pub fn methods(file: &FileDescriptorProto, name: &str) -> Vec<String> {
    let service = file
        .service
        .iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("no service {name} in {}", file.name()));
    service.method.iter().map(|m| m.name().to_owned()).collect()
}

/// Waits (at most 5 s) until the health of every `(channel, service)` is
/// `want`; returns how long that took.
async fn health_becomes(checks: &[(&Channel, &str)], want: ServingStatus) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for (channel, service) in checks {
            all &= health(channel, service).await.unwrap() == want;
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "health is not {want:?} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next status a health `Watch` stream sends (within 5 s).
async fn next_status(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> ServingStatus {
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a status within 5 s")
        .expect("the watch goes on")
        .expect("a status");
    next.status()
}

/// Both sockets report `SERVING` for the whole server and for their own
/// service (and know no other); once an audit write fails they report
/// `NOT_SERVING`, a `Watch` stream is told, and after the next good write
/// they are `SERVING` again, without a restart. Fails without the health
/// service, and with a health status that does not follow the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_audit_log_cannot_be_written_and_serving_again_after() {
    if !is_root() {
        return skip("chattr +i needs root");
    }
    let agent = TestAgent::start();
    agent.put("prod/health", "sk_health_check_1");
    let keys = channel(&agent.keys_sock()).await.unwrap();
    let admin = channel(&agent.admin_sock()).await.unwrap();
    let all = [
        (&keys, ""),
        (&keys, "keyward.v1.Keys"),
        (&admin, ""),
        (&admin, "keyward.v1.Admin"),
    ];
    for (channel, service) in all {
        assert_eq!(
            health(channel, service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    // Each socket knows only the service it serves.
    let unknown = health(&keys, "keyward.v1.Admin").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_eq!(
        health(&admin, "keyward.v1.Keys").await.unwrap_err().code(),
        Code::NotFound
    );
    let mut watch = HealthClient::new(keys.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);

    // The audit log cannot be written: the fetch is refused, and health
    // says so.
    let frozen = Immutable::set(&agent.audit_file());
    let refused = agent.fetch("prod", "health").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    let not_serving = health_becomes(&all, ServingStatus::NotServing).await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    assert!(!agent.status().await.audit_error.is_empty());

    // Writable again: the next record is written, and health follows.
    drop(frozen);
    agent.fetch("prod", "health").await.unwrap();
    let serving = health_becomes(&all, ServingStatus::Serving).await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    println!(
        "tooling health: not_serving_after_ms={} serving_after_ms={}",
        not_serving.as_millis(),
        serving.as_millis()
    );
}

/// Shutdown: health turns `NOT_SERVING` and a `Watch` stream ends, so the
/// agent's drain does not wait out its grace period on it. Fails when the
/// stream is left open (the agent then takes the whole grace to stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_health_is_not_serving_and_its_watch_streams_end() {
    let mut agent = TestAgent::start_with_config("shutdown_grace = \"20s\"\n");
    let keys = channel(&agent.keys_sock()).await.unwrap();
    let mut watch = HealthClient::new(keys.clone())
        .watch(HealthCheckRequest {
            service: "keyward.v1.Keys".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    let started = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || {
        let status = agent.stop();
        (agent, status)
    });
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_)))),
        "the watch stream did not end: {end:?}"
    );
    let (_agent, status) = stopping.await.unwrap();
    assert!(status.success(), "{status}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "the agent took {took:?} to stop");
    println!("tooling shutdown: stopped_ms={}", took.as_millis());
}

/// Reflection lists each socket's own services, answers with their files
/// (and the files they import), knows nothing of the other socket's
/// service, and carries no key: a key's name is no symbol, and no answer
/// holds its secret. Over v1 and v1alpha alike.
#[tokio::test]
async fn reflection_describes_each_sockets_own_services_and_nothing_else() {
    let secret = "sk_live_reflected_90c1d2";
    let agent = TestAgent::start();
    agent.put("prod/reflected", secret);
    let keys = channel(&agent.keys_sock()).await.unwrap();
    let admin = channel(&agent.admin_sock()).await.unwrap();
    let mut seen = Vec::new();

    assert_eq!(services(&keys).await.unwrap(), KEYS_SOCKET_SERVICES);
    assert_eq!(services_v1alpha(&keys).await.unwrap(), KEYS_SOCKET_SERVICES);
    assert_eq!(services(&admin).await.unwrap(), ADMIN_SOCKET_SERVICES);
    assert_eq!(services_v1alpha(&admin).await.unwrap(), ADMIN_SOCKET_SERVICES);

    // The service socket: keys.proto, with every method a client calls,
    // and what it imports; the standard services' own files.
    let (file, bytes) = file_of(&keys, "keyward.v1.Keys").await.unwrap();
    seen.extend(bytes);
    assert_eq!(file.name(), "keyward/v1/keys.proto");
    assert_eq!(file.package(), "keyward.v1");
    assert_eq!(
        methods(&file, "Keys"),
        ["GetKey", "WatchKeys", "ReportAuthFailure", "ReportKeyUse"]
    );
    assert_eq!(file.dependency, ["google/protobuf/timestamp.proto"]);
    let (message, bytes) = file_of(&keys, "keyward.v1.KeySet").await.unwrap();
    seen.extend(bytes);
    assert_eq!(message.name(), "keyward/v1/keys.proto");
    let (imported, bytes) = files(
        &keys,
        MessageRequest::FileByFilename("google/protobuf/timestamp.proto".into()),
    )
    .await
    .unwrap();
    seen.extend(bytes);
    assert_eq!(imported[0].package(), "google.protobuf");
    for (symbol, service) in [
        ("grpc.health.v1.Health", "Health"),
        ("grpc.reflection.v1.ServerReflection", "ServerReflection"),
        ("grpc.reflection.v1alpha.ServerReflection", "ServerReflection"),
    ] {
        let (file, _) = file_of(&keys, symbol).await.unwrap();
        assert!(!methods(&file, service).is_empty(), "{symbol}");
    }

    // Nothing of the admin socket's, nor anything that names a key.
    for symbol in [
        "keyward.v1.Admin",
        "keyward.v1.PutKeyRequest",
        "prod/reflected",
        "prod.reflected",
        "reflected",
    ] {
        let missing = file_of(&keys, symbol)
            .await
            .map(|(file, _)| file.name().to_owned())
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{symbol}: {missing:?}");
    }
    let missing = files(&keys, MessageRequest::FileByFilename("keyward/v1/admin.proto".into()))
        .await
        .map(|(files, _)| files.len())
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // The admin socket: admin.proto, which imports keys.proto for the
    // types they share.
    let (file, bytes) = file_of(&admin, "keyward.v1.Admin").await.unwrap();
    seen.extend(bytes);
    assert_eq!(file.name(), "keyward/v1/admin.proto");
    let admin_methods = methods(&file, "Admin");
    assert!(
        admin_methods.contains(&"PutKey".to_owned()) && admin_methods.contains(&"GetStatus".to_owned()),
        "{admin_methods:?}"
    );
    assert!(file.dependency.contains(&"keyward/v1/keys.proto".to_owned()));
    let (shared, bytes) = file_of(&admin, "keyward.v1.KeyRef").await.unwrap();
    seen.extend(bytes);
    assert_eq!(shared.name(), "keyward/v1/keys.proto");

    assert_no_secret("reflection's answers", &seen, &[secret]);
    println!("tooling reflection: descriptor_bytes={}", seen.len());
}
