//! Unit tests of the Iggy driver's mapping and state machine (no server is involved).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn message_at(opts: &IggyTransportOptions, topic: &str, payload: &str, offset: u64) -> IggyMessage {
    let mut m = opts
        .encode(topic, Bytes::copy_from_slice(payload.as_bytes()))
        .unwrap();
    m.header.offset = offset;
    m
}

fn polled(messages: Vec<IggyMessage>) -> PolledMessages {
    PolledMessages {
        partition_id: 0,
        current_offset: messages.last().map_or(0, |m| m.header.offset),
        count: messages.len() as u32,
        messages,
    }
}

#[test]
fn names_map_to_valid_identifiers() {
    let opts = IggyTransportOptions {
        stream: "prod.rt".into(),
        topic: IggyTransportOptions::topic_for_prefix("a.b-c_1"),
        ..IggyTransportOptions::default()
    };
    assert_eq!(opts.topic, "a.b-c_1-sockudo");
    let (s, t) = identifiers(&opts).unwrap();
    assert_eq!(s, Identifier::named("prod.rt").unwrap());
    assert_eq!(t, Identifier::named("a.b-c_1-sockudo").unwrap());
    let empty = IggyTransportOptions {
        stream: String::new(),
        ..IggyTransportOptions::default()
    };
    assert!(matches!(
        identifiers(&empty),
        Err(AdapterError::Malformed(m)) if m.contains("stream")
    ));
}

#[test]
fn envelope_round_trips_topic_and_payload() {
    let opts = IggyTransportOptions::default();
    let m = opts
        .encode("p.ch.app.c", Bytes::from_static(b"{\"event\":\"x\"}"))
        .unwrap();
    assert_eq!(
        decode(&m),
        Some((
            "p.ch.app.c".to_owned(),
            Bytes::from_static(b"{\"event\":\"x\"}")
        ))
    );
    // Through the wire format of the client crate too.
    let back = IggyMessage::from_bytes(m.to_bytes()).unwrap();
    assert_eq!(decode(&back).unwrap().0, "p.ch.app.c");
    // A message without our header is not ours.
    let foreign = IggyMessage::builder()
        .payload(Bytes::from_static(b"x"))
        .build()
        .unwrap();
    assert_eq!(decode(&foreign), None);
}

#[test]
fn sizes_are_checked_before_sending() {
    let opts = IggyTransportOptions {
        max_message_size: 1000,
        ..IggyTransportOptions::default()
    };
    assert!(opts.encode("t", Bytes::from(vec![1u8; 1000])).is_ok());
    let err = opts.encode("t", Bytes::from(vec![1u8; 1001])).unwrap_err();
    assert!(
        matches!(&err, AdapterError::Malformed(m) if m.contains("1000")),
        "{err}"
    );
    // The configured limit cannot exceed Iggy's own.
    let big = IggyTransportOptions {
        max_message_size: usize::MAX,
        ..IggyTransportOptions::default()
    };
    let over = Bytes::from(vec![0u8; MAX_PAYLOAD_SIZE as usize + 1]);
    assert!(big.encode("t", over).is_err());
    // Iggy refuses empty payloads: refused here, clearly, not by the server.
    assert!(opts.encode("t", Bytes::new()).is_err());
    let long_topic = "x".repeat(MAX_USER_HEADERS_SIZE as usize);
    assert!(opts.encode(&long_topic, Bytes::from_static(b"1")).is_err());
}

#[test]
fn cursor_starts_at_the_end_and_never_delivers_twice() {
    let opts = IggyTransportOptions::default();
    let mut c = PollCursor::default();
    assert!(!c.is_placed());
    c.place_at_end(&polled(Vec::new()));
    assert_eq!(c.strategy(), PollingStrategy::offset(0), "empty partition");

    let mut c = PollCursor::default();
    c.place_at_end(&polled(vec![message_at(&opts, "t", "old", 41)]));
    assert_eq!(c.strategy(), PollingStrategy::offset(42));
    assert!(!c.accept(41), "older than the start");
    assert!(c.accept(42));
    assert!(!c.accept(42), "re-polled after an error");
    assert!(c.accept(45), "a gap (expired messages) moves on");
    assert_eq!(c.strategy(), PollingStrategy::offset(46));
    // A reconnect keeps the position.
    c.place_at_end(&polled(vec![message_at(&opts, "t", "x", 99)]));
    assert_eq!(c.strategy(), PollingStrategy::offset(46));
}

#[test]
fn routing_filters_by_topic_and_counts_drops() {
    let opts = IggyTransportOptions::default();
    let shared = Shared::default();
    let (tx, mut rx) = mpsc::channel(2);
    shared.topics.lock().insert("p.broadcast".into(), vec![tx]);
    let mut cursor = PollCursor::default();
    cursor.place_at_end(&polled(Vec::new()));
    let batch = polled(vec![
        message_at(&opts, "p.broadcast", "a", 0),
        message_at(&opts, "p.other", "b", 1),
        message_at(&opts, "p.broadcast", "c", 2),
        message_at(&opts, "p.broadcast", "d", 3),
    ]);
    route(&shared, &mut cursor, &batch);
    // Delivered again (a re-poll): nothing twice.
    route(&shared, &mut cursor, &batch);
    assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"a"));
    assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"c"));
    assert!(rx.try_recv().is_err());
    assert_eq!(
        shared.dropped.load(Ordering::Relaxed),
        1,
        "d found the queue full"
    );
    // A dropped stream's queue is forgotten on the next message.
    drop(rx);
    route(
        &shared,
        &mut cursor,
        &polled(vec![message_at(&opts, "p.broadcast", "e", 4)]),
    );
    assert!(shared.topics.lock().is_empty());
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let opts = IggyTransportOptions::default();
    let delays: Vec<u128> = (0..7).map(|f| opts.backoff(f).as_millis()).collect();
    assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000]);
    assert_eq!(opts.backoff(u32::MAX), Duration::from_secs(2));
}

#[test]
fn connection_strings_are_parsed_by_the_client_crate() {
    assert!(IggyClient::from_connection_string("iggy://iggy:secret@127.0.0.1:8090").is_ok());
    assert!(IggyClient::from_connection_string("iggy+tcp://iggy:secret@127.0.0.1:8090").is_ok());
    assert!(IggyClient::from_connection_string("http://127.0.0.1:8090").is_err());
    assert!(IggyClient::from_connection_string("iggy://127.0.0.1:8090").is_err());
    let opts = IggyTransportOptions {
        connection_string: "iggy://admin:hunter2@h:8090".into(),
        ..IggyTransportOptions::default()
    };
    let shown = format!("{opts:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("***@h:8090"),
        "{shown}"
    );
}

#[tokio::test]
async fn connect_fails_cleanly_without_a_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = IggyTransportOptions {
        connection_string: format!("iggy://iggy:iggy@127.0.0.1:{port}"),
        connect_timeout: Duration::from_millis(500),
        ..IggyTransportOptions::default()
    };
    let started = std::time::Instant::now();
    assert!(matches!(
        IggyTransport::connect(opts).await,
        Err(AdapterError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
}
