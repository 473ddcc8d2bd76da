//! Watches: a chunked response of newline-delimited `WatchEvent`s.
//!
//! - no `resourceVersion` (or "0"), or `sendInitialEvents=true`: the current
//!   objects first as ADDED, then changes; with `sendInitialEvents` and
//!   bookmarks, a BOOKMARK annotated `k8s.io/initial-events-end` after them.
//! - `resourceVersion=N`: the changes after N; if N is older than the kept
//!   history, one ERROR event with a 410 `Expired` Status (HTTP 200), as the
//!   API server's watch cache answers, and the stream ends.
//! - `allowWatchBookmarks`: a BOOKMARK every bookmark interval carrying the
//!   newest resourceVersion this watch has caught up with.
//! - `timeoutSeconds`: the stream ends after it (default 30 minutes).
//! - selectors apply to old and new objects, so an object that stops
//!   matching is DELETED for this watch and one that starts matching ADDED.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use crate::{
    app::App,
    error::{ApiError, ApiResult},
    kinds::Kind,
    query::Query,
    selector::{FieldSelector, LabelSelector},
    store::{EventType, WatchStart},
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches_object(object) && self.fields.matches(object)
    }
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

/// Answers a watch request.
pub fn serve(app: Arc<App>, kind: Kind, ns: Option<String>, q: &Query) -> ApiResult<Response> {
    let filter = Filter {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())?,
    };
    let send_initial = q.flag("sendInitialEvents", false);
    let bookmarks = q.flag("allowWatchBookmarks", false);
    let timeout = q
        .int("timeoutSeconds")?
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64))
        .unwrap_or(DEFAULT_TIMEOUT);
    let since = match q.get("resourceVersion") {
        _ if send_initial => None,
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {v:?}")))?,
        ),
    };

    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    match app.store.watch(kind, ns.as_deref(), since) {
        Ok(start) => {
            tokio::spawn(pump(
                app,
                kind,
                ns,
                filter,
                start,
                tx,
                bookmarks,
                send_initial && bookmarks,
                timeout,
            ));
        }
        Err(gone) => {
            // Too old: one ERROR event, then the end of the stream.
            let _ = tx.try_send(Ok(line("ERROR", &gone.status())));
        }
    }
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    app: Arc<App>,
    kind: Kind,
    ns: Option<String>,
    filter: Filter,
    start: WatchStart,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    bookmarks: bool,
    initial_end: bool,
    timeout: Duration,
) {
    let WatchStart {
        initial,
        backlog,
        mut receiver,
        rv,
    } = start;
    let mut seen = rv;
    for object in initial.iter().filter(|o| filter.matches(o)) {
        if tx.send(Ok(line("ADDED", object))).await.is_err() {
            return;
        }
    }
    if initial_end && tx.send(Ok(bookmark(kind, seen, true))).await.is_err() {
        return;
    }
    for event in backlog {
        if let Some(bytes) = render(&filter, &event)
            && tx.send(Ok(bytes)).await.is_err()
        {
            return;
        }
        seen = seen.max(event.rv);
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(app.bookmark_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = app.cancel.cancelled() => return,
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = tick.tick(), if bookmarks => {
                if tx.send(Ok(bookmark(kind, seen, false))).await.is_err() {
                    return;
                }
            }
            event = receiver.recv() => match event {
                Ok(event) => {
                    if event.kind != kind || ns.as_deref().is_some_and(|n| n != event.namespace) {
                        // Still caught up to it, for bookmarks.
                        seen = seen.max(event.rv);
                        continue;
                    }
                    if let Some(bytes) = render(&filter, &event)
                        && tx.send(Ok(bytes)).await.is_err()
                    {
                        return;
                    }
                    seen = seen.max(event.rv);
                }
                Err(RecvError::Lagged(_)) => {
                    let gone = ApiError::gone("the watch fell too far behind; relist");
                    let _ = tx.send(Ok(line("ERROR", &gone.status()))).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// The event as this watch sees it through its selectors.
fn render(filter: &Filter, event: &crate::store::Event) -> Option<Bytes> {
    let now = filter.matches(&event.object);
    let before = event.previous.as_ref().is_some_and(|p| filter.matches(p));
    let event_type = match (event.event_type, before, now) {
        (EventType::Added, _, true) => "ADDED",
        (EventType::Modified, true, true) => "MODIFIED",
        (EventType::Modified, false, true) => "ADDED",
        (EventType::Modified, true, false) => "DELETED",
        (EventType::Deleted, _, true) => "DELETED",
        _ => return None,
    };
    Some(line(event_type, &event.object))
}
