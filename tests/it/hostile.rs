//! Hostile input against the real binary. The webhook port faces the
//! internet: a matrix of bad inputs, each with its defined answer and metric,
//! after which the bridge still delivers, with what it had acknowledged
//! before untouched. The notifier trusts a remote server: one that breaks
//! the handshake, sends text or oversized frames costs sessions, never the
//! bridge.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use fishjam_bridge::core::proto::server_message as sm;
use fishjam_bridge::core::proto::{Content, ServerMessage};
use fishjam_bridge::core::signature;
use prost::Message;

use crate::support::*;

const SECRET: &str = "whsec-hostile-1";
const MAX_BODY: usize = 65_536;

fn room(id: &str) -> ServerMessage {
    ServerMessage {
        content: Some(Content::RoomCreated(sm::RoomCreated {
            room_id: id.to_owned(),
        })),
    }
}

/// Posts `body` signed (or with `signature` when given) and extra headers.
fn send(
    url: &str,
    body: Vec<u8>,
    signature: Option<String>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let signature = signature.unwrap_or_else(|| signature::sign(SECRET.as_bytes(), &body));
    let mut request = reqwest::blocking::Client::new()
        .post(url)
        .header("content-type", "application/x-protobuf")
        .header(signature::HEADER, signature);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().expect("the bridge answers");
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

/// A request whose body arrives one byte at a time, far slower than
/// `webhook.request_timeout`; returns the status line the bridge answers.
fn slowloris(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /webhook HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/x-protobuf\r\ncontent-length: 100\r\n\r\n"
    )
    .unwrap();
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        // The trickle is the attack, not a wait for anything.
        for _ in 0..100 {
            if writer.write_all(&[0x0a]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = [0u8; 64];
    let n = stream.read(&mut answer).unwrap();
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn every_bad_input_gets_its_answer_and_the_bridge_keeps_delivering() {
    let conf = Conf::new()
        .webhook("secret", SECRET)
        .webhook("max_body_bytes", MAX_BODY)
        .webhook("request_timeout", "1s")
        .sink(Sink::file("{dir}/events.jsonl"));
    let mut bridge = BridgeProcess::start(&conf);
    let url = bridge.webhook_url();

    // Acknowledged before the attack.
    let before = room_created("before");
    let before_signature = signature::sign(SECRET.as_bytes(), &before);
    assert_eq!(send(&url, before.clone(), None, &[]).0, 200);

    // Body problems.
    assert_eq!(
        send(&url, Vec::new(), None, &[]).0,
        200,
        "empty: nothing to publish"
    );
    let (status, reason) = send(
        &url,
        vec![0x1f, 0x8b, 0x08, 0x00, 0x01, 0x02],
        None,
        &[("content-encoding", "gzip")],
    );
    assert_eq!(
        (status, reason.contains("content-encoding gzip")),
        (415, true),
        "{reason}"
    );
    assert_eq!(
        send(&url, vec![0x0a; MAX_BODY + 1], None, &[]).0,
        413,
        "one byte over"
    );
    assert_eq!(
        send(&url, vec![0x0a; MAX_BODY], None, &[]).0,
        400,
        "at the limit, undecodable"
    );
    assert!(slowloris(bridge.webhook).starts_with("HTTP/1.1 408"));

    // Protocol problems.
    let many: Vec<ServerMessage> = (0..100_000).map(|_| room("")).collect();
    let many = batch(many);
    assert!(
        many.len() <= MAX_BODY * 8,
        "sent with the default body limit below"
    );
    let nested = batch(vec![
        room("n1"),
        ServerMessage {
            content: Some(Content::NotificationBatch(sm::NotificationBatch {
                notifications: vec![room("n2")],
            })),
        },
    ]);
    assert_eq!(
        send(&url, nested, None, &[]).0,
        200,
        "the nested batch is skipped, n1 kept"
    );
    let handshake = ServerMessage {
        content: Some(Content::Authenticated(sm::Authenticated {})),
    }
    .encode_to_vec();
    assert_eq!(
        send(&url, handshake, None, &[]).0,
        200,
        "a handshake message is skipped"
    );
    // Field 99, length-delimited and empty: a notification a newer Fishjam may send.
    assert_eq!(send(&url, vec![0x9a, 0x06, 0x00], None, &[]).0, 200);
    // room_created with a room id that is not UTF-8: published as the
    // official SDK decodes it, with U+FFFD in place of the bad byte.
    let (status, reason) = send(&url, vec![0x0a, 0x03, 0x0a, 0x01, 0xff], None, &[]);
    assert_eq!(status, 200, "{reason}");

    // Signature problems.
    assert_eq!(
        send(
            &url,
            room_created("short"),
            Some("sha256=abcd".to_owned()),
            &[]
        )
        .0,
        401
    );
    // Fishjam's signature has no timestamp or nonce: a replay cannot be told
    // from Fishjam's own retry, and is published again (at least once).
    assert_eq!(
        send(&url, before.clone(), Some(before_signature), &[]).0,
        200
    );

    // Thousands of idle connections do not starve a real webhook.
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(bridge.webhook).unwrap())
        .collect();
    assert_eq!(send(&url, room_created("during"), None, &[]).0, 200);
    drop(idle);

    assert_eq!(bridge.child.try_wait().unwrap(), None, "the bridge is up");
    assert_eq!(send(&url, room_created("after"), None, &[]).0, 200);
    let rooms: Vec<String> = read_events(&bridge.dir().join("events.jsonl"))
        .iter()
        .map(|e| e["data"]["roomId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        rooms,
        ["before", "n1", "\u{FFFD}", "before", "during", "after"]
    );

    let metrics = bridge.metrics();
    let requests = "fishjam_bridge_webhook_requests_total";
    for (status, count) in [
        ("200", 9.0),
        ("400", 1.0),
        ("401", 1.0),
        ("408", 1.0),
        ("413", 1.0),
        ("415", 1.0),
    ] {
        assert_eq!(
            metrics.sum(requests, &[("status", status)]),
            count,
            "status {status}"
        );
    }
    let skipped = "fishjam_bridge_notifications_skipped_total";
    for reason in ["empty", "nested_batch", "handshake", "unknown_variant"] {
        assert_eq!(metrics.sum(skipped, &[("reason", reason)]), 1.0, "{reason}");
    }
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_strings_mended_total",
            &[("source", "webhook")]
        ),
        1.0
    );
    assert!(bridge.terminate().success());

    // With the default body limit, a batch of 100,000 tiny notifications is
    // refused by count (webhook.max_events_per_body).
    let bridge = BridgeProcess::start(&conf.unset("webhook", "max_body_bytes"));
    let (status, reason) = send(&bridge.webhook_url(), many, None, &[]);
    assert_eq!(status, 413, "{reason}");
    assert!(reason.contains("100000 notifications"), "{reason}");
}

/// A Fishjam that misbehaves on the notifier, one way per connection:
/// a notification instead of `authenticated`, a close in the middle of the
/// handshake, then a session with a text frame and a frame over the limit,
/// then a well-behaved session. The bridge must ride through all of it.
#[test]
fn idle_connections_are_closed_and_give_their_place_to_a_webhook() {
    let conf = Conf::new()
        .webhook("max_connections", 3)
        .webhook("idle_timeout", "1s")
        .sink(Sink::file("{dir}/events.jsonl"));
    let bridge = BridgeProcess::start(&conf);
    let connections = |bridge: &BridgeProcess| {
        bridge.metrics().sum(
            "fishjam_bridge_listener_connections",
            &[("listener", "webhook")],
        )
    };
    assert_eq!(
        bridge.metrics().sum(
            "fishjam_bridge_listener_max_connections",
            &[("listener", "webhook")]
        ),
        3.0
    );
    // Three clients that connect and say nothing take every place.
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(bridge.webhook).unwrap())
        .collect();
    wait_until("three connections open", || connections(&bridge) == 3.0);
    // A webhook now waits in the backlog until the idle ones are closed.
    let url = bridge.webhook_url();
    let webhook = std::thread::spawn(move || send(&url, room_created("waited"), None, &[]).0);
    for stream in &mut idle {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("an idle connection got bytes"),
            Err(error) => assert!(
                matches!(error.kind(), std::io::ErrorKind::ConnectionReset),
                "an idle connection was not closed: {error}"
            ),
        }
    }
    assert_eq!(webhook.join().unwrap(), 200);
    let events = read_events(&bridge.dir().join("events.jsonl"));
    assert_eq!(events[0]["data"]["roomId"], "waited");
    let metrics = bridge.metrics();
    assert!(
        metrics.sum(
            "fishjam_bridge_listener_idle_closed_total",
            &[("listener", "webhook")]
        ) >= 3.0
    );
}

#[test]
fn a_misbehaving_notifier_costs_sessions_never_the_bridge() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message as Ws;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let frame = |content: Content| -> Ws {
        Ws::Binary(
            ServerMessage {
                content: Some(content),
            }
            .encode_to_vec()
            .into(),
        )
    };
    rt.spawn(async move {
        for connection in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
                continue;
            };
            // The auth request.
            let _ = socket.next().await;
            match connection {
                0 => {
                    let _ = socket.send(frame(room("too-early").content.unwrap())).await;
                }
                1 => {
                    let _ = socket
                        .send(Ws::Close(Some(CloseFrame {
                            code: CloseCode::Error,
                            reason: "internal error".into(),
                        })))
                        .await;
                }
                _ => {
                    let _ = socket
                        .send(frame(Content::Authenticated(sm::Authenticated {})))
                        .await;
                    let _ = socket.next().await;
                    let _ = socket
                        .send(frame(Content::SubscribeResponse(sm::SubscribeResponse {
                            event_type: sm::EventType::ServerNotification as i32,
                        })))
                        .await;
                    let id = format!("session-{connection}");
                    let _ = socket.send(frame(room(&id).content.unwrap())).await;
                    if connection == 2 {
                        let _ = socket.send(Ws::Text("hello".into())).await;
                        let _ = socket.send(Ws::Binary(vec![0x0a; 4096].into())).await;
                    }
                    // Hold the session open until the bridge leaves.
                    while socket.next().await.is_some() {}
                }
            }
        }
    });

    let conf = Conf::new()
        .fishjam_at(port, "t")
        .notifier("enabled", true)
        .notifier("check_credentials", false)
        .notifier("reconcile", false)
        .notifier("max_frame_bytes", 1024)
        .notifier("backoff_initial", "10ms")
        .notifier("backoff_max", "50ms")
        .sink(Sink::file("{dir}/events.jsonl"));
    let mut bridge = BridgeProcess::start(&conf);
    let path = bridge.dir().join("events.jsonl");
    wait_until("the well-behaved session's notification", || {
        read_events(&path).len() >= 2
    });
    let rooms: Vec<String> = read_events(&path)
        .iter()
        .map(|e| e["data"]["roomId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        rooms,
        ["session-2", "session-3"],
        "nothing from a broken handshake"
    );

    let metrics = bridge.metrics();
    let disconnects = "fishjam_bridge_notifier_disconnects_total";
    assert_eq!(
        metrics.sum(disconnects, &[("reason", "handshake_failed")]),
        2.0
    );
    assert_eq!(
        metrics.sum(disconnects, &[("reason", "io_error")]),
        1.0,
        "the frame over the limit"
    );
    assert_eq!(
        metrics.sum("fishjam_bridge_notifier_ignored_frames_total", &[]),
        1.0
    );
    assert_eq!(
        metrics.sum("fishjam_bridge_notifier_connects_total", &[]),
        2.0
    );
    assert!(bridge.is_ready());
    assert!(bridge.terminate().success());
}

#[test]
fn a_flood_of_voice_activity_never_takes_the_slots_of_lifecycle_events() {
    // The only sink never acknowledges (every write fails), so what is
    // admitted stays in flight and the bounds fill.
    let conf = Conf::new()
        .webhook("max_events_per_body", 50)
        .webhook("ack_timeout", "100ms")
        .sink(Sink::file("/dev/full"))
        .pipeline("max_in_flight_events", 100)
        .pipeline("max_in_flight_bursty_events", 10)
        .pipeline("bursty_when_full", "shed")
        .pipeline("retry_initial_backoff", "50ms")
        .pipeline("retry_max_backoff", "50ms")
        .without_spool();
    let bridge = BridgeProcess::start(&conf);
    let url = bridge.webhook_url();
    let vad = |n: usize| {
        batch(
            (0..n)
                .map(|i| ServerMessage {
                    content: Some(Content::VadNotification(sm::VadNotification {
                        room_id: "loud".into(),
                        peer_id: "p".into(),
                        track_id: format!("t{i}"),
                        status: 2,
                    })),
                })
                .collect(),
        )
    };
    // 30 voice activity events: 10 slots, so 20 are shed; the 10 admitted
    // wait for the sink (503 after the ack timeout, still in flight).
    assert_eq!(send(&url, vad(30), None, &[]).0, 503);
    // No slot left: the next 40 are all shed, and there is nothing to wait for.
    assert_eq!(send(&url, vad(40), None, &[]).0, 200);
    // Room lifecycle events still find their slots.
    let rooms = batch((0..50).map(|i| room(&format!("r{i}"))).collect());
    assert_eq!(send(&url, rooms, None, &[]).0, 503);
    let metrics = bridge.metrics();
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_pipeline_shed_events_total",
            &[("event_type", "vadNotification")]
        ),
        60.0
    );
    assert_eq!(
        metrics.sum("fishjam_bridge_pipeline_rejected_events_total", &[]),
        0.0
    );
    assert_eq!(
        metrics.sum("fishjam_bridge_pipeline_events_in_flight", &[]),
        60.0
    );
    assert_eq!(metrics.sum("fishjam_bridge_ack_timeouts_total", &[]), 2.0);
}

#[test]
fn bodies_in_hand_are_bounded_across_connections() {
    let conf = Conf::new()
        .webhook("max_body_bytes", 1000)
        .webhook("max_body_bytes_in_flight", 1000)
        // The slow body below holds the budget until the test lets it go,
        // not until request_timeout (10 s) ends it on a loaded machine.
        .webhook("request_timeout", "120s")
        .sink(Sink::file("{dir}/events.jsonl"));
    let bridge = BridgeProcess::start(&conf);
    let url = bridge.webhook_url();
    // `authenticated` is skipped: a body that is accepted with no event.
    let small = || send(&url, vec![0x32, 0x00], None, &[]);
    assert_eq!(small().0, 200);
    // A client declares a body of the whole budget and sends it slowly.
    let mut slow = TcpStream::connect(bridge.webhook).unwrap();
    write!(
        slow,
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n\x12"
    )
    .unwrap();
    let mut refused = (0, String::new());
    wait_until("a body refused while the budget is taken", || {
        refused = small();
        refused.0 == 503
    });
    assert!(
        refused.1.contains("max_body_bytes_in_flight"),
        "{}",
        refused.1
    );
    // The slow client goes away: its room comes back.
    drop(slow);
    wait_until("a body accepted again", || small().0 == 200);
    assert!(
        bridge.metrics().sum(
            "fishjam_bridge_webhook_requests_total",
            &[("status", "503")]
        ) >= 1.0
    );
}

#[test]
fn empty_batch_elements_are_counted_before_decoding() {
    // Two bytes an element: a 4 MiB body would hold two million, and
    // decoding allocates for each, so the limit applies before decoding.
    let bridge = BridgeProcess::start(&Conf::new().sink(Sink::file("{dir}/events.jsonl")));
    let empty = ServerMessage { content: None };
    let (status, text) = send(&bridge.webhook_url(), batch(vec![empty; 6000]), None, &[]);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("6000 notifications"), "{text}");
}
