//! `etcdserverpb.Watch` on the etcd port: the bidirectional watch stream, served by the native
//! watch session (the same history, progress notifications and slow-watcher cancellation) with
//! requests and responses translated.
//!
//! One difference needs more than a translation: a watch from a revision the history no longer
//! holds ends a native stream with `OUT_OF_RANGE`, while etcd answers that one watch with
//! `created` + `canceled` and `compact_revision` (the oldest revision still watchable) and
//! keeps the stream's other watches. So such creates are answered here and never reach the
//! session.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use raftkv_proto::etcd::etcdserverpb::watch_create_request::FilterType;
use raftkv_proto::etcd::etcdserverpb::watch_request::RequestUnion;
use raftkv_proto::etcd::etcdserverpb::watch_server::Watch as EtcdWatchApi;
use raftkv_proto::etcd::etcdserverpb::{WatchRequest, WatchResponse};
use raftkv_proto::etcd::mvccpb;
use raftkv_proto::v1 as native;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::api::call::ApiCalls;
use crate::api::watch_service::WatchService;
use crate::consensus::core::NodeCore;
use crate::etcd::convert::{self, bounds, selection, KeySelection};

/// An end bound above every key but the single longest possible one: "to the last key" for a
/// native watch (which takes no open-ended range other than a prefix).
const TO_THE_LAST_KEY: [u8; 4096] = [0xff; 4096];

/// Requests buffered between the etcd stream and the native session.
const BUFFER: usize = 16;

pub struct EtcdWatch {
    core: NodeCore,
    calls: ApiCalls,
    native: WatchService,
}

impl EtcdWatch {
    pub fn new(calls: ApiCalls, native: WatchService) -> Self {
        Self {
            core: calls.core().clone(),
            calls,
            native,
        }
    }
}

/// What an etcd watch request becomes.
enum Translated {
    Native(native::WatchRequest),
    /// Answered here (a create from a revision no longer held).
    Answer(WatchResponse),
    /// Refused: ends the stream.
    Refuse(Status),
    Nothing,
}

fn translate(request: WatchRequest, core: &NodeCore) -> Translated {
    let op = match request.request_union {
        Some(RequestUnion::CreateRequest(c)) => {
            let (start, end) = match selection(&c.key, &c.range_end) {
                Ok(KeySelection::Range { start, end }) if end.is_empty() => {
                    if start.is_empty() {
                        // Every key: the empty prefix.
                        (Vec::new(), None)
                    } else {
                        (start, Some(TO_THE_LAST_KEY.to_vec()))
                    }
                }
                Ok(sel) => {
                    let (start, end) = bounds(&sel);
                    match sel {
                        KeySelection::One(_) => (start, Some(Vec::new())),
                        KeySelection::Range { .. } => (start, Some(end)),
                    }
                }
                Err(status) => return Translated::Refuse(status),
            };
            let Ok(start_revision) = u64::try_from(c.start_revision) else {
                return Translated::Refuse(Status::invalid_argument(
                    "etcdserver: start_revision must not be negative",
                ));
            };
            let Ok(watch_id) = u64::try_from(c.watch_id) else {
                return Translated::Refuse(Status::invalid_argument("etcdserver: watch_id must not be negative"));
            };
            let oldest = core.store.reader().oldest_watchable();
            if start_revision != 0 && start_revision < oldest {
                let mut header = core.header();
                header.revision = core.store.reader().revision();
                return Translated::Answer(WatchResponse {
                    header: convert::header(Some(header)),
                    watch_id: c.watch_id,
                    created: true,
                    canceled: true,
                    compact_revision: convert::revision(oldest),
                    cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                    ..Default::default()
                });
            }
            let prefix = end.is_none();
            native::watch_request::Request::Create(native::WatchCreateRequest {
                key: start,
                end: end.unwrap_or_default(),
                prefix,
                start_revision,
                prev_kv: c.prev_kv,
                no_put: c.filters.contains(&(FilterType::Noput as i32)),
                no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                watch_id,
                progress_notify: c.progress_notify,
            })
        }
        Some(RequestUnion::CancelRequest(c)) => match u64::try_from(c.watch_id) {
            Ok(watch_id) => native::watch_request::Request::Cancel(native::WatchCancelRequest { watch_id }),
            Err(_) => return Translated::Nothing,
        },
        Some(RequestUnion::ProgressRequest(_)) => {
            native::watch_request::Request::Progress(native::WatchProgressRequest {})
        }
        None => return Translated::Nothing,
    };
    Translated::Native(native::WatchRequest { request: Some(op) })
}

fn etcd_kv(kv: native::KeyValue) -> mvccpb::KeyValue {
    // The lease a key had at an earlier revision is not kept: 0 (docs/etcd-compat.md).
    convert::key_value(kv, 0)
}

fn etcd_response(r: native::WatchResponse) -> WatchResponse {
    WatchResponse {
        header: convert::header(r.header),
        watch_id: convert::revision(r.watch_id),
        created: r.created,
        canceled: r.canceled,
        compact_revision: convert::revision(r.compact_revision),
        cancel_reason: r.cancel_reason,
        fragment: false,
        events: r
            .events
            .into_iter()
            .map(|e| mvccpb::Event {
                r#type: if e.r#type == native::event::EventType::Delete as i32 {
                    mvccpb::event::EventType::Delete as i32
                } else {
                    mvccpb::event::EventType::Put as i32
                },
                kv: e.kv.map(etcd_kv),
                prev_kv: e.prev_kv.map(etcd_kv),
            })
            .collect(),
    }
}

type EtcdWatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EtcdWatchApi for EtcdWatch {
    type WatchStream = EtcdWatchStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<EtcdWatchStream>, Status> {
        self.calls
            .serve("Watch", request, |request| async move {
                let mut inbound = request.into_inner();
                let (to_session, from_etcd) = mpsc::channel::<Result<native::WatchRequest, Status>>(BUFFER);
                let (answers, answered) = mpsc::channel::<Result<WatchResponse, Status>>(BUFFER);
                let core = self.core.clone();
                // Translates the client's requests until it closes its side (or the session
                // goes, dropping `from_etcd`).
                tokio::spawn(async move {
                    while let Some(message) = inbound.next().await {
                        let sent = match message {
                            Err(status) => to_session.send(Err(status)).await.is_ok(),
                            Ok(request) => match translate(request, &core) {
                                Translated::Native(r) => to_session.send(Ok(r)).await.is_ok(),
                                Translated::Answer(a) => answers.send(Ok(a)).await.is_ok(),
                                Translated::Refuse(status) => {
                                    let _ = answers.send(Err(status)).await;
                                    false
                                }
                                Translated::Nothing => true,
                            },
                        };
                        if !sent {
                            break;
                        }
                    }
                });
                let requests =
                    futures::stream::unfold(from_etcd, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
                let responses = self.native.open(Box::pin(requests)).map(|r| r.map(etcd_response));
                let answered =
                    futures::stream::unfold(answered, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
                let merged = futures::stream::select(responses, answered);
                Ok(Response::new(Box::pin(merged) as EtcdWatchStream))
            })
            .await
    }
}
