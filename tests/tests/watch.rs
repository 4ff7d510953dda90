//! Watching changes (`raftkv.v1.Watch`) on an in-process cluster: what a watcher receives, from
//! which revision, with which filters; what a node refuses; and what happens to a watcher that
//! does not keep up.

use std::time::Duration;

use raftkv_client::pb::watch_client::WatchClient;
use raftkv_client::pb::watch_request::Request as WatchOp;
use raftkv_client::pb::{event, TxnRequest, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use raftkv_client::{txn, ClientError, WatchOptions};
use raftkv_proto::{error_kind, metadata};
use raftkv_tests::in_process::InProcessCluster;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

const T: Duration = Duration::from_secs(20);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// (type, key, value, mod_revision, previous value) of a watch event.
fn describe(e: &raftkv_client::pb::Event) -> (&'static str, String, String, u64, Option<String>) {
    let kv = e.kv.clone().unwrap_or_default();
    let kind = if e.r#type == event::EventType::Delete as i32 {
        "delete"
    } else {
        "put"
    };
    (
        kind,
        text(&kv.key),
        text(&kv.value),
        kv.mod_revision,
        e.prev_kv.as_ref().map(|p| text(&p.value)),
    )
}

/// A raw watch stream on one node: the sender for requests and the responses.
async fn raw_watch(
    addr: &str,
    first: WatchCreateRequest,
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(WatchRequest {
        request: Some(WatchOp::Create(first)),
    })
    .await
    .expect("send create");
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    // A small HTTP/2 window, so a watcher that stops reading backs up quickly.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .expect("connect");
    let mut client = WatchClient::new(channel);
    let responses = client.watch(requests).await?.into_inner();
    Ok((tx, responses))
}

/// The next response, within `T`.
async fn next_response(responses: &mut Streaming<WatchResponse>) -> Result<WatchResponse, tonic::Status> {
    match tokio::time::timeout(T, responses.message()).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => Err(tonic::Status::unknown("the stream ended")),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "no watch response within the test's bound",
        )),
    }
}

/// - A watcher on prefix `app/` (with previous values), started before any write, sees every
///   change under the prefix once, in revision order: puts, an overwrite, a delete, and a
///   transaction's two writes at one revision — and nothing outside the prefix.
/// - It is served by a follower (any node serves watches), and the revisions it reports are
///   the ones the writers got back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_watcher_sees_every_change_once_in_order() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let writer = cluster.client();
    let on_follower = cluster.client_with(|c| c.endpoints.retain(|e| e.addr == cluster.client_addr(follower)));
    let mut watcher = on_follower.watch(WatchOptions::prefix("app/").with_prev_kv()).await?;
    assert_eq!(watcher.node(), Some(cluster.client_addr(follower).as_str()));

    let first = writer.put("app/a", "1").await?.revision;
    writer.put("other", "x").await?;
    let second = writer.put("app/a", "2").await?.revision;
    let deleted = writer.delete("app/a").await?.revision;
    let both = writer
        .txn(
            TxnRequest {
                compare: vec![],
                success: vec![txn::put("app/b", "3"), txn::put("app/c", "4")],
                failure: vec![],
            },
            None,
        )
        .await?
        .revision;

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let batch = tokio::time::timeout(T, watcher.next()).await??;
        seen.extend(batch.events.iter().map(describe));
    }
    assert_eq!(
        seen,
        vec![
            ("put", "app/a".into(), "1".into(), first, None),
            ("put", "app/a".into(), "2".into(), second, Some("1".into())),
            ("delete", "app/a".into(), "".into(), deleted, Some("2".into())),
            ("put", "app/b".into(), "3".into(), both, None),
            ("put", "app/c".into(), "4".into(), both, None),
        ]
    );
    cluster.shutdown().await;
    Ok(())
}

/// - A watch can start in the past: from revision 1 it replays what the history holds.
/// - Filters: no puts (deletes only) on one key.
/// - With a history of 5 revisions, a watch from revision 1 after 20 writes is refused with
///   OUT_OF_RANGE naming the oldest revision held (also in metadata); the client library,
///   finding no node that holds it, says Compacted with that revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_start_in_the_past_until_the_history_is_compacted() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start_with(3, |c| c.watch_history = 5).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    client.put("k", "1").await?;
    client.delete("k").await?;
    let mut replay = client.watch(WatchOptions::key("k").from_revision(1)).await?;
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        let batch = tokio::time::timeout(T, replay.next()).await??;
        replayed.extend(batch.events.iter().map(describe).map(|d| (d.0, d.3)));
    }
    assert_eq!(replayed, vec![("put", 1), ("delete", 2)]);

    let mut deletes_only = client
        .watch(WatchOptions {
            no_put: true,
            ..WatchOptions::key("k")
        })
        .await?;
    client.put("k", "2").await?;
    let gone = client.delete("k").await?.revision;
    let batch = tokio::time::timeout(T, deletes_only.next()).await??;
    assert_eq!(
        batch
            .events
            .iter()
            .map(describe)
            .map(|d| (d.0, d.3))
            .collect::<Vec<_>>(),
        vec![("delete", gone)]
    );

    let mut last = 0;
    for i in 0..20 {
        last = client.put(format!("n{i}"), "v").await?.revision;
    }
    cluster.wait_revision(last, T).await?;
    let refused = raw_watch(
        &cluster.client_addr(leader),
        WatchCreateRequest {
            key: b"n".to_vec(),
            prefix: true,
            start_revision: 1,
            ..Default::default()
        },
    )
    .await;
    let status = match refused {
        Err(status) => status,
        Ok((_tx, mut responses)) => next_response(&mut responses)
            .await
            .expect_err("a watch from revision 1"),
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let oldest: u64 = status
        .metadata()
        .get(metadata::OLDEST_REVISION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("the oldest revision in metadata");
    assert_eq!(
        status.metadata().get(metadata::ERROR_KIND).map(|v| v.to_str().ok()),
        Some(Some(error_kind::COMPACTED))
    );
    assert!(oldest > 1 && oldest <= last, "oldest {oldest}, last {last}");
    assert!(
        status.message().contains(&format!("starts at revision {oldest}")),
        "{}",
        status.message()
    );

    match client.watch(WatchOptions::prefix("n").from_revision(1)).await {
        Err(ClientError::Compacted { oldest: o, .. }) => assert!(o > 1, "{o}"),
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("a watch from a compacted revision was accepted"),
    }
    cluster.shutdown().await;
    Ok(())
}

/// - Each malformed create is refused with INVALID_ARGUMENT and a message saying what to fix:
///   an empty key without prefix, an inverted range, prefix together with end, a watch id
///   used twice on one stream.
/// - Nothing is written by any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_requests_are_refused_with_a_reason() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let addr = cluster.client_addr(leader);
    let revision_before = cluster.revision(leader);
    let cases = [
        (WatchCreateRequest::default(), "key is empty"),
        (
            WatchCreateRequest {
                key: b"b".to_vec(),
                end: b"a".to_vec(),
                ..Default::default()
            },
            "inverted range",
        ),
        (
            WatchCreateRequest {
                key: b"a".to_vec(),
                end: b"b".to_vec(),
                prefix: true,
                ..Default::default()
            },
            "either prefix or end",
        ),
    ];
    for (create, expected) in cases {
        let status = match raw_watch(&addr, create.clone()).await {
            Err(status) => status,
            Ok((_tx, mut responses)) => next_response(&mut responses).await.expect_err("a bad create"),
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{create:?}: {status:?}");
        assert!(status.message().contains(expected), "{create:?}: {}", status.message());
    }

    let create = WatchCreateRequest {
        key: b"k".to_vec(),
        watch_id: 7,
        ..Default::default()
    };
    let (tx, mut responses) = raw_watch(&addr, create.clone()).await?;
    assert!(next_response(&mut responses).await?.created);
    tx.send(WatchRequest {
        request: Some(WatchOp::Create(create)),
    })
    .await?;
    let status = next_response(&mut responses).await.expect_err("a second watch 7");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("already in use"), "{}", status.message());
    assert_eq!(
        cluster.revision(leader),
        revision_before,
        "a refused watch changed the store"
    );
    cluster.shutdown().await;
    Ok(())
}

/// - Two watches share one stream; cancelling one leaves the other running.
/// - A watch with progress_notify that sees no change gets a progress notification saying the
///   store's current revision; a progress request gets one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_share_a_stream_cancel_alone_and_report_progress() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let client = cluster.client();
    let now = client.put("unrelated", "x").await?.revision;
    cluster.wait_revision(now, T).await?;
    let addr = cluster.client_addr(leader);
    let (tx, mut responses) = raw_watch(
        &addr,
        WatchCreateRequest {
            key: b"a".to_vec(),
            watch_id: 1,
            ..Default::default()
        },
    )
    .await?;
    assert!(next_response(&mut responses).await?.created);
    tx.send(WatchRequest {
        request: Some(WatchOp::Create(WatchCreateRequest {
            key: b"b".to_vec(),
            watch_id: 2,
            progress_notify: true,
            ..Default::default()
        })),
    })
    .await?;
    let created = next_response(&mut responses).await?;
    assert_eq!((created.watch_id, created.created), (2, true));

    // Idle: watch 2 reports progress by itself, at the current revision.
    let progress = next_response(&mut responses).await?;
    assert_eq!((progress.watch_id, progress.events.len()), (2, 0), "{progress:?}");
    assert_eq!(progress.header.map(|h| h.revision), Some(now));

    tx.send(WatchRequest {
        request: Some(WatchOp::Cancel(WatchCancelRequest { watch_id: 1 })),
    })
    .await?;
    let mut saw_cancel = false;
    let written = client.put("b", "after").await?.revision;
    client.put("a", "after").await?;
    loop {
        let r = next_response(&mut responses).await?;
        if r.canceled {
            assert_eq!(r.watch_id, 1);
            saw_cancel = true;
        }
        assert!(r.watch_id != 1 || r.events.is_empty(), "a cancelled watch got events");
        if r.watch_id == 2 && !r.events.is_empty() {
            assert_eq!(r.events[0].kv.as_ref().map(|kv| kv.mod_revision), Some(written));
            break;
        }
    }
    assert!(saw_cancel, "the cancel was not confirmed");
    cluster.shutdown().await;
    Ok(())
}

/// - A watcher that stops reading while 600 writes of 4 KiB go on does not slow them: they all
///   finish (bounded by the test's deadline, not timed), the node keeps only a bounded buffer,
///   and once the history (50 revisions here) has moved past it, it is cancelled with a reason
///   saying it fell behind and the oldest revision still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_keep_up_is_cancelled_and_writers_never_wait() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start_with(3, |c| c.watch_history = 50).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let (_tx, mut responses) = raw_watch(
        &cluster.client_addr(leader),
        WatchCreateRequest {
            key: b"w/".to_vec(),
            prefix: true,
            ..Default::default()
        },
    )
    .await?;
    assert!(next_response(&mut responses).await?.created);

    let client = cluster.client();
    let value = "v".repeat(4096);
    let mut last = 0;
    for i in 0..600 {
        last = tokio::time::timeout(T, client.put(format!("w/{i:04}"), value.clone()))
            .await??
            .revision;
    }
    let mut delivered = 0;
    let cancel = loop {
        let r = next_response(&mut responses)
            .await
            .map_err(|e| anyhow::anyhow!("after {delivered} events: {e}"))?;
        if r.canceled {
            break r;
        }
        delivered += r.events.len();
    };
    assert!(
        delivered < 600,
        "the slow watcher got everything ({delivered}); nothing was dropped"
    );
    assert!(cancel.cancel_reason.contains("fell behind"), "{}", cancel.cancel_reason);
    assert!(
        cancel.compact_revision > 1 && cancel.compact_revision <= last,
        "{}",
        cancel.compact_revision
    );
    cluster.shutdown().await;
    Ok(())
}

/// - A watch stream lives as long as its client wants: the node's deadline for calls
///   (`--request-timeout-ms`, 300 ms here) bounds opening it, not how long it stays open. An
///   event written 1 s after the create still arrives on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outlives_the_request_timeout() -> anyhow::Result<()> {
    let cluster = InProcessCluster::start_with(3, |c| c.request_timeout_ms = 300).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let (_tx, mut responses) = raw_watch(
        &cluster.client_addr(leader),
        WatchCreateRequest {
            key: b"late".to_vec(),
            ..Default::default()
        },
    )
    .await?;
    assert!(next_response(&mut responses).await?.created);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = cluster.client().put("late", "v").await?.revision;
    let r = next_response(&mut responses).await?;
    assert_eq!(
        r.events.first().and_then(|e| e.kv.as_ref()).map(|kv| kv.mod_revision),
        Some(written)
    );
    cluster.shutdown().await;
    Ok(())
}
