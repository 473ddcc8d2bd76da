//! `pods/log`: the container's output from Docker, as plain text
//! (`follow`, `tailLines`, `timestamps` honoured).

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bollard::{container::LogOutput, query_parameters::LogsOptionsBuilder};
use futures::StreamExt;

use crate::{
    app::App,
    error::{ApiError, ApiResult},
    kinds::Kind,
    query::Query,
    store::uid_of,
};

pub async fn serve(app: Arc<App>, ns: &str, name: &str, q: &Query) -> ApiResult<Response> {
    let pod = app.store.get(Kind::Pod, ns, name)?;
    let container = pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or_default();
    let Some(id) = app.container_of(uid_of(&pod)) else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    let tail = match q.int("tailLines")? {
        Some(n) => n.max(0).to_string(),
        None => "all".to_string(),
    };
    let options = LogsOptionsBuilder::default()
        .follow(q.flag("follow", false))
        .stdout(true)
        .stderr(true)
        .timestamps(q.flag("timestamps", false))
        .tail(&tail)
        .build();
    let cancel = app.cancel.clone();
    let stream = app
        .docker
        .logs(&id, Some(options))
        .take_until(async move { cancel.cancelled().await })
        .filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdOut { message })
                | Ok(LogOutput::StdErr { message })
                | Ok(LogOutput::Console { message }) => Some(Ok::<Bytes, std::io::Error>(message)),
                _ => None,
            }
        });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response())
}
