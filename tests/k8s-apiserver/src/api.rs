//! Request routing: the URL paths of the Kubernetes API this server
//! serves, by pattern on the path's segments.

use std::sync::Arc;

use axum::{
    body::{Body, to_bytes},
    extract::State,
    http::{HeaderMap, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    app::{App, lock},
    discovery,
    error::{ApiError, ApiResult, json_response},
    exec,
    kinds::Kind,
    query::Query,
    resources,
};

/// Request bodies larger than this are refused (a real server's limit is
/// 3 MiB per object).
const MAX_BODY: usize = 3 << 20;

pub async fn dispatch(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = route(app, req).await;
    match result {
        Ok(response) => {
            tracing::debug!(%method, %path, status = response.status().as_u16());
            response
        }
        Err(e) => {
            tracing::debug!(%method, %path, status = e.code, "{}", e.message);
            e.into_response()
        }
    }
}

/// JSON is the only representation served; a client that accepts nothing
/// else (protobuf only) gets 406.
fn check_accept(headers: &HeaderMap) -> ApiResult<()> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let ok = accept.split(',').any(|m| {
        let media = m.split(';').next().unwrap_or_default().trim();
        matches!(media, "application/json" | "*/*" | "application/*" | "")
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable(accept))
    }
}

async fn route(app: Arc<App>, req: Request<Body>) -> ApiResult<Response> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));

    // The websocket exec takes the raw request (for the upgrade).
    if let ["api", "v1", "namespaces", ns, "pods", name, "exec"] = segments.as_slice() {
        if method != Method::GET && method != Method::POST {
            return Err(ApiError::method_not_allowed("pods/exec takes GET or POST"));
        }
        let (ns, name) = (ns.to_string(), name.to_string());
        return exec::handle(app, req, &ns, &name).await;
    }
    // OpenAPI: v3 only, and only what kubectl needs to leave validation to
    // the server. v2 is not served.
    match (&method, segments.as_slice()) {
        (&Method::GET, ["openapi", "v3"]) => return ok(crate::openapi::root()),
        (&Method::GET, ["openapi", "v3", rest @ ..]) => {
            return crate::openapi::group_version(&rest.join("/"))
                .map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(not_found_path);
        }
        (_, ["openapi", ..]) => return Err(not_found_path()),
        _ => {}
    }
    check_accept(req.headers())?;

    if method == Method::GET {
        match segments.as_slice() {
            ["version"] => return ok(discovery::version()),
            ["api"] => return ok(discovery::core_versions(&app.address)),
            ["api", "v1"] => return ok(discovery::core_v1()),
            ["apis"] => return ok(discovery::groups()),
            ["apis", group] => {
                return discovery::group_doc(group)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(not_found_path);
            }
            ["apis", group, "v1"] => {
                return discovery::group_version(group)
                    .map(|d| json_response(StatusCode::OK, &d))
                    .ok_or_else(not_found_path);
            }
            ["healthz" | "livez" | "readyz"] => {
                return Ok((StatusCode::OK, "ok").into_response());
            }
            _ => {}
        }
    }
    if method == Method::POST && segments == ["api", "v1", "namespaces"] {
        let body = to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| ApiError::new(413, "RequestEntityTooLarge", e.to_string()))?;
        return create_namespace(&app, &body);
    }
    if let Some(response) = namespaces(&app, &method, &segments)? {
        return Ok(response);
    }

    // Resource paths: /api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]] and
    // /apis/GROUP/v1[/namespaces/NS]/PLURAL[/NAME].
    let (group, rest): (&str, &[&str]) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, "v1", rest @ ..] => (group, rest),
        _ => return Err(not_found_path()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(*sub)),
        _ => return Err(not_found_path()),
    };
    let kind = Kind::from_path(group, plural).ok_or_else(not_found_path)?;
    if name.is_some() && namespace.is_none() {
        return Err(not_found_path());
    }
    match (kind, sub) {
        (_, None) => {}
        (Kind::Pod, Some("status")) if method == Method::GET => {}
        (Kind::Pod, Some("log")) if method == Method::GET => {
            let (ns, name) = (namespace.unwrap_or_default(), name.unwrap_or_default());
            return crate::logs::serve(app, &ns, &name, &Query::parse(req.uri().query())).await;
        }
        (_, Some(_)) => return Err(not_found_path()),
    }
    let query = Query::parse(req.uri().query());
    let headers = req.headers().clone();
    let body = to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError::new(413, "RequestEntityTooLarge", e.to_string()))?;
    resources::handle(
        app,
        resources::Request {
            method,
            kind,
            namespace,
            name,
            query,
            headers,
            body,
        },
    )
    .await
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn namespace_object(app: &App, name: &str) -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": format!("00000000-0000-4000-8000-{:012x}", name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) & 0xffff_ffff_ffff),
            "resourceVersion": "1",
            "creationTimestamp": app.started,
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// Namespaces: every name exists; the ones seen are listed; creating one
/// that was seen is 409.
fn namespaces(app: &App, method: &Method, segments: &[&str]) -> ApiResult<Option<Response>> {
    let response = match (method, segments) {
        (&Method::GET, ["api", "v1", "namespaces"]) => {
            let names: Vec<String> = lock(&app.namespaces).iter().cloned().collect();
            let items: Vec<Value> = names
                .iter()
                .map(|n| {
                    let mut o = namespace_object(app, n);
                    if let Some(m) = o.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    o
                })
                .collect();
            json!({"kind": "NamespaceList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": app.store.resource_version().to_string()},
                   "items": items})
        }
        (&Method::GET, ["api", "v1", "namespaces", ns]) => {
            app.saw_namespace(ns);
            namespace_object(app, ns)
        }
        _ => return Ok(None),
    };
    Ok(Some(json_response(StatusCode::OK, &response)))
}

/// Creating a namespace records it (409 when it was already seen).
fn create_namespace(app: &App, body: &[u8]) -> ApiResult<Response> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !crate::pods::is_dns_subdomain(&name) || name.contains('.') {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("Namespace {name:?} is invalid: metadata.name: must be a DNS label"),
        ));
    }
    if !lock(&app.namespaces).insert(name.clone()) {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("namespaces \"{name}\" already exists"),
        ));
    }
    Ok(json_response(
        StatusCode::CREATED,
        &namespace_object(app, &name),
    ))
}
