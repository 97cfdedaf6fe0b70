//! TLS on the bridge's own listeners (webhook and admin) with a certificate
//! from a CA made by openssl in the test, and TLS with authentication to a
//! private nats-server.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::support::*;

/// A blocking HTTPS client that trusts only `ca`.
pub(crate) fn https_client(ca: &Path) -> reqwest::blocking::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

fn https_metrics(client: &reqwest::blocking::Client, admin: SocketAddr) -> Metrics {
    let text = client
        .get(format!("https://{admin}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    Metrics::parse(&text)
}

fn handshake_failures(metrics: &Metrics, reason: &str) -> f64 {
    metrics.sum(
        "fishjam_bridge_tls_handshake_failures_total",
        &[("listener", "webhook"), ("reason", reason)],
    )
}

/// The certificate the server at `addr` presents, checked against `ca`.
fn served_certificate(addr: SocketAddr, ca: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut socket = TcpStream::connect(addr).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).unwrap();
    }
    connection.peer_certificates().unwrap()[0].to_vec()
}

fn certificate_der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

/// Replaces `target` with `source` in one rename, as certificate tools do.
fn replace(source: &Path, target: &Path) {
    let staged = target.with_extension("new");
    std::fs::copy(source, &staged).unwrap();
    std::fs::rename(&staged, target).unwrap();
}

#[test]
fn webhooks_and_metrics_are_served_over_tls_and_a_renewed_certificate_is_picked_up() {
    let certificates = tempfile::tempdir().unwrap();
    let [ca, cert, key] = private_ca(certificates.path());
    // The bridge reads these paths; the renewal replaces their contents.
    let (live_cert, live_key) = (
        certificates.path().join("live.pem"),
        certificates.path().join("live.key"),
    );
    std::fs::copy(&cert, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let conf = Conf::new()
        .webhook("request_timeout", "1s")
        .set("webhook.tls", "cert_file", &live_cert)
        .set("webhook.tls", "key_file", &live_key)
        .set("admin.tls", "cert_file", &live_cert)
        .set("admin.tls", "key_file", &live_key)
        .sink(Sink::file("{dir}/events.jsonl"));
    let bridge = BridgeProcess::spawn(&conf, Stdio::null(), &[]);
    let client = https_client(&ca);
    wait_until("ready, asked over HTTPS", || {
        client
            .get(format!("https://{}/readyz", bridge.admin))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    // Each listener says when its certificate expires (openssl made it for
    // two days): what the expiry alert reads.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let metrics = https_metrics(&client, bridge.admin);
    for listener in ["webhook", "admin"] {
        let expires = metrics.sum(
            "fishjam_bridge_tls_certificate_expiry_timestamp_seconds",
            &[("listener", listener)],
        );
        let days = (expires - now) / 86400.0;
        assert!((1.0..=2.01).contains(&days), "{listener}: {days} days left");
    }

    // A client that opens a connection and never says hello holds only that
    // connection: others are served meanwhile.
    let mut stalled = TcpStream::connect(bridge.webhook).unwrap();
    let url = format!("https://{}/webhook", bridge.webhook);
    let answer = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(room_created("tls-room"))
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let events = read_events(&bridge.dir().join("events.jsonl"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["room_id"], "tls-room");
    wait_until("the stalled handshake timed out and counted", || {
        handshake_failures(&https_metrics(&client, bridge.admin), "timeout") >= 1.0
    });
    let _ = stalled.write_all(b"late");

    // Plain HTTP to the TLS port is refused and counted.
    assert!(
        reqwest::blocking::get(format!("http://{}/webhook", bridge.webhook))
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );
    wait_until(
        "the plain-HTTP request counted as a failed handshake",
        || handshake_failures(&https_metrics(&client, bridge.admin), "error") >= 1.0,
    );
    // A client that does not trust the CA gets nowhere.
    assert!(reqwest::blocking::Client::new()
        .post(&url)
        .body(room_created("untrusted"))
        .send()
        .is_err());

    // Renewal: the files are replaced; new connections get the new
    // certificate without a restart.
    let first = certificate_der(&cert);
    assert_eq!(served_certificate(bridge.webhook, &ca), first);
    let [renewed_cert, renewed_key] = server_certificate(certificates.path(), "renewed");
    let renewed = certificate_der(&renewed_cert);
    assert_ne!(renewed, first);
    replace(&renewed_key, &live_key);
    replace(&renewed_cert, &live_cert);
    wait_until("the renewed certificate served", || {
        served_certificate(bridge.webhook, &ca) == renewed
    });
    assert_eq!(served_certificate(bridge.admin, &ca), renewed);
    let answer = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(room_created("after-renewal"))
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(read_events(&bridge.dir().join("events.jsonl")).len(), 2);
}

/// An HTTPS client that trusts only `ca` and presents `identity`
/// (certificate, key) when asked.
fn https_client_with(ca: &Path, [cert, key]: &[PathBuf; 2]) -> reqwest::blocking::Client {
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

fn post_created(client: &reqwest::blocking::Client, webhook: SocketAddr, room: &str) -> bool {
    client
        .post(format!("https://{webhook}/webhook"))
        .header("content-type", "application/x-protobuf")
        .body(room_created(room))
        .send()
        .is_ok_and(|answer| answer.status() == 200)
}

#[test]
fn with_a_client_ca_only_clients_with_a_certificate_it_signed_are_served() {
    let certificates = tempfile::tempdir().unwrap();
    let [ca, cert, key] = private_ca(certificates.path());
    let trusted = client_certificate(certificates.path(), "trusted-client");
    // A client certificate from a CA the bridge was not told of.
    let elsewhere = tempfile::tempdir().unwrap();
    private_ca(elsewhere.path());
    let stranger = client_certificate(elsewhere.path(), "stranger");
    let mut conf = Conf::new().sink(Sink::file("{dir}/events.jsonl"));
    for listener in ["webhook.tls", "admin.tls"] {
        conf = conf
            .set(listener, "cert_file", &cert)
            .set(listener, "key_file", &key)
            .set(listener, "client_ca_file", &ca);
    }
    let bridge = BridgeProcess::spawn(&conf, Stdio::null(), &[]);
    let client = https_client_with(&ca, &trusted);
    wait_until("ready, asked with a client certificate", || {
        client
            .get(format!("https://{}/readyz", bridge.admin))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    assert!(post_created(&client, bridge.webhook, "with-certificate"));

    // No certificate, or one from another CA: no request gets through, on
    // either listener, and each refusal is counted as such.
    let anonymous = https_client(&ca);
    let strange = https_client_with(&ca, &stranger);
    for refused in [&anonymous, &strange] {
        assert!(!post_created(refused, bridge.webhook, "refused"));
        assert!(refused
            .get(format!("https://{}/healthz", bridge.admin))
            .send()
            .is_err());
    }
    let events = read_events(&bridge.dir().join("events.jsonl"));
    let rooms: Vec<_> = events.iter().map(|e| e["room_id"].clone()).collect();
    assert_eq!(rooms, ["with-certificate"]);
    wait_until("both refusals on both listeners counted", || {
        let metrics = https_metrics(&client, bridge.admin);
        ["webhook", "admin"].iter().all(|listener| {
            metrics.sum(
                "fishjam_bridge_tls_handshake_failures_total",
                &[("listener", listener), ("reason", "client_certificate")],
            ) >= 2.0
        })
    });
}

#[test]
fn a_certificate_that_does_not_match_its_key_is_refused_at_start() {
    let certificates = tempfile::tempdir().unwrap();
    let [_, cert, _] = private_ca(certificates.path());
    let [_, other_key] = server_certificate(certificates.path(), "other");
    let file = certificates.path().join("bridge.toml");
    std::fs::write(
        &file,
        format!(
            "[fishjam]\nid = \"x\"\n[webhook.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[admin.tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n",
            cert.display(),
            other_key.display()
        ),
    )
    .unwrap();
    let output = check_config(&file, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("webhook.tls"), "{stderr}");
    assert!(stderr.contains("admin.tls"), "{stderr}");
    assert!(stderr.contains("/nonexistent.pem"), "{stderr}");
}

const NATS_USER: &str = "bridge";
const NATS_PASSWORD: &str = "nats-pass-3f9c";

/// A nats-server of its own with TLS and a user.
fn tls_nats(cert: &Path, key: &Path) -> ConfiguredNats {
    ConfiguredNats::start(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 2\n}}\n\
         authorization {{\n  user: \"{NATS_USER}\"\n  password: \"{NATS_PASSWORD}\"\n}}",
        cert.display(),
        key.display()
    ))
}

/// A bridge whose NATS sink reaches the server on `port` over TLS, with
/// the user and password, trusting `ca` when given.
fn nats_tls_sink(port: u16, subject: &str, ca: Option<&PathBuf>) -> Conf {
    let sink = crate::nats::nats_sink(&format!("nats://127.0.0.1:{port}"), subject)
        .set("user", NATS_USER)
        .set("password", NATS_PASSWORD)
        .set_in("tls", "required", true);
    let sink = match ca {
        Some(ca) => sink.set_in("tls", "ca_file", ca),
        None => sink,
    };
    Conf::new().sink(sink)
}

#[test]
fn nats_with_tls_and_a_password_gets_every_event() {
    let certificates = tempfile::tempdir().unwrap();
    let [ca, cert, key] = private_ca(certificates.path());
    let server = tls_nats(&cert, &key);
    let prefix = format!("tls{:08x}", rand::random::<u32>());

    // Without the CA the server's certificate is not trusted: the sink never
    // comes up, and says why.
    let untrusting = BridgeProcess::spawn(
        &nats_tls_sink(server.port, &format!("{prefix}.{{key}}"), None),
        Stdio::null(),
        &[],
    );
    wait_until("the certificate refused in the logs", || {
        untrusting.logged("UnknownIssuer")
    });
    assert_eq!(untrusting.check("sink:nats"), Some(false));
    drop(untrusting);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The subscriber unsubscribes on drop, from inside a runtime.
    let _entered = runtime.enter();
    let mut subscriber = runtime.block_on(async {
        let client = async_nats::ConnectOptions::with_user_and_password(
            NATS_USER.to_owned(),
            NATS_PASSWORD.to_owned(),
        )
        .require_tls(true)
        .add_root_certificates(ca.clone())
        .connect(format!("nats://127.0.0.1:{}", server.port))
        .await
        .unwrap();
        let subscriber = client.subscribe(format!("{prefix}.>")).await.unwrap();
        client.flush().await.unwrap();
        (client, subscriber)
    });
    let bridge = BridgeProcess::start(&nats_tls_sink(
        server.port,
        &format!("{prefix}.{{key}}.{{type}}"),
        Some(&ca),
    ));
    for room in ["a", "b", "c"] {
        let answer = post(&bridge.webhook_url(), room_created(room), None);
        assert_eq!(answer.status(), 200);
    }
    let received: Vec<(String, Value)> = runtime.block_on(async {
        let mut received = Vec::new();
        while received.len() < 3 {
            let message = tokio::time::timeout(WAIT, subscriber.1.next())
                .await
                .expect("every event arrives")
                .unwrap();
            received.push((
                message.subject.to_string(),
                serde_json::from_slice(&message.payload).unwrap(),
            ));
        }
        received
    });
    let subjects: Vec<&str> = received.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        ["a", "b", "c"].map(|room| format!("{prefix}.{room}.roomCreated"))
    );
    assert_eq!(received[1].1["room_id"], "b");
}
