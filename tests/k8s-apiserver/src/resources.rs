//! The REST verbs on pods, NetworkPolicies, Leases and EndpointSlices:
//! create, get, list, watch, update (PUT), patch (merge), delete,
//! deletecollection. Kind specifics (pod validation and lifecycle, policy
//! enforcement, a slice's immutable address type) hook in here; storage and
//! events are the store's.

use std::sync::Arc;

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::Response,
};
use serde_json::{Value, json};

use crate::{
    app::App,
    decode::{self, FieldValidation},
    error::{ApiError, ApiResult, json_response},
    kinds::Kind,
    netpol, pods,
    query::Query,
    runner,
    selector::{FieldSelector, LabelSelector},
    store::{name_of, rv_of, set_meta, uid_of},
    watch,
};

/// One request on a collection (`name` None) or an object.
pub struct Request {
    pub method: Method,
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub query: Query,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub async fn handle(app: Arc<App>, req: Request) -> ApiResult<Response> {
    if let Some(ns) = &req.namespace {
        app.saw_namespace(ns);
    }
    let ok = |v: &Value| Ok(json_response(StatusCode::OK, v));
    match (&req.method, &req.name, &req.namespace) {
        (&Method::GET, None, ns) if req.query.flag("watch", false) => {
            watch::serve(app, req.kind, ns.clone(), &req.query)
        }
        (&Method::GET, None, ns) => ok(&list(&app, req.kind, ns.as_deref(), &req.query)?),
        (&Method::GET, Some(name), Some(ns)) => ok(&app.store.get(req.kind, ns, name)?),
        (&Method::POST, None, Some(ns)) => {
            let body = json_body(&req.headers, &req.body, false)?;
            let validation = FieldValidation::from_query(&req.query)?;
            let (created, warnings) = create(&app, req.kind, ns, body, validation).await?;
            Ok(with_warnings(StatusCode::CREATED, &created, &warnings))
        }
        (&Method::PUT, Some(name), Some(ns)) => {
            let body = json_body(&req.headers, &req.body, false)?;
            let validation = FieldValidation::from_query(&req.query)?;
            let (updated, warnings) = update(&app, req.kind, ns, name, body, validation).await?;
            Ok(with_warnings(StatusCode::OK, &updated, &warnings))
        }
        (&Method::PATCH, Some(name), Some(ns)) => {
            let patch = json_body(&req.headers, &req.body, true)?;
            let current = app.store.get(req.kind, ns, name)?;
            let mut merged = current.clone();
            merge_patch(&mut merged, &patch);
            // A patch without a resourceVersion is unconditional.
            if patch.pointer("/metadata/resourceVersion").is_none() {
                set_meta(&mut merged, "resourceVersion", json!(rv_of(&current)));
            }
            let validation = FieldValidation::from_query(&req.query)?;
            let (updated, warnings) = update(&app, req.kind, ns, name, merged, validation).await?;
            Ok(with_warnings(StatusCode::OK, &updated, &warnings))
        }
        (&Method::DELETE, Some(name), Some(ns)) => {
            delete(&app, req.kind, ns, name, &req.query, &req.body).await
        }
        (&Method::DELETE, None, Some(ns)) => {
            let (items, rv) = app.store.list(req.kind, Some(ns), selection(&req.query)?);
            let mut deleted = Vec::new();
            for item in items {
                let name = name_of(&item).to_string();
                if delete(&app, req.kind, ns, &name, &req.query, &req.body)
                    .await
                    .is_ok()
                {
                    deleted.push(strip_type(item));
                }
            }
            ok(&list_object(req.kind, deleted, rv))
        }
        (m, _, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m} {})",
            req.kind.qualified()
        ))),
    }
}

/// The filter of a list or deletecollection.
fn selection(q: &Query) -> ApiResult<impl Fn(&Value) -> bool + use<>> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())?;
    Ok(move |v: &Value| labels.matches_object(v) && fields.matches(v))
}

/// Items of a list carry no kind/apiVersion, as from a real server.
fn strip_type(mut item: Value) -> Value {
    if let Some(o) = item.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    item
}

fn list_object(kind: Kind, items: Vec<Value>, rv: u64) -> Value {
    json!({
        "kind": kind.list_kind(),
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

/// A list (limit/continue are ignored: everything comes in one page).
fn list(app: &App, kind: Kind, ns: Option<&str>, q: &Query) -> ApiResult<Value> {
    let (items, rv) = app.store.list(kind, ns, selection(q)?);
    Ok(list_object(
        kind,
        items.into_iter().map(strip_type).collect(),
        rv,
    ))
}

/// The body as JSON; protobuf and apply-patch YAML are refused with 415
/// (clients fall back to JSON; apply is not served).
fn json_body(headers: &HeaderMap, body: &Bytes, patch: bool) -> ApiResult<Value> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let accepted = if patch {
        matches!(
            media,
            "application/merge-patch+json" | "application/strategic-merge-patch+json"
        )
    } else {
        media == "application/json" || media.is_empty()
    };
    if !accepted {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(value)
}

/// RFC 7386 JSON merge patch (also used for strategic merge patches: on
/// the fields this server stores they differ only in list merging).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A JSON response with one `Warning` header per message, as the API
/// server sends them (kubectl prints them, kube logs them).
fn with_warnings(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut response = json_response(code, body);
    for w in warnings {
        let text = format!("299 - {}", Value::String(w.clone()));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// Checks a body's kind and namespace against the URL, and normalizes it
/// through the typed object. Unknown fields drop out, and are reported as
/// `fieldValidation` says (warnings by default), as by a real server.
fn typed(
    kind: Kind,
    ns: &str,
    body: &Value,
    validation: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    if let Some(k) = body.get("kind").and_then(Value::as_str)
        && k != kind.kind()
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the body ({k}) is not {}",
            kind.kind()
        )));
    }
    if let Some(n) = body.pointer("/metadata/namespace").and_then(Value::as_str)
        && !n.is_empty()
        && n != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut body = body.clone();
    body["apiVersion"] = json!(kind.api_version());
    body["kind"] = json!(kind.kind());
    decode::quantities_as_strings(&mut body);
    let decoded = match kind {
        Kind::Pod => serde_json::to_value(pods::parse(&body)?),
        Kind::NetworkPolicy => Ok(netpol::parse(&body)?),
        Kind::Lease => {
            let lease: k8s_openapi::api::coordination::v1::Lease =
                serde_json::from_value(body.clone()).map_err(|e| {
                    ApiError::bad_request(format!(
                        "Lease in version \"v1\" cannot be handled as a Lease: {e}"
                    ))
                })?;
            serde_json::to_value(lease)
        }
        Kind::EndpointSlice => {
            let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
                serde_json::from_value(body.clone()).map_err(|e| {
                    ApiError::bad_request(format!(
                        "EndpointSlice in version \"v1\" cannot be handled as a EndpointSlice: {e}"
                    ))
                })?;
            serde_json::to_value(slice)
        }
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let warnings = validation.check(decode::unknown_fields(&body, &decoded))?;
    Ok((decoded, warnings))
}

async fn create(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    body: Value,
    validation: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    let (body, warnings) = typed(kind, ns, &body, validation)?;
    let created = match kind {
        Kind::Pod => {
            let pod = pods::prepare(body)?;
            let created = app.store.create(kind, ns, pod)?;
            app.tasks.spawn(runner::run_pod(
                app.clone(),
                ns.to_string(),
                name_of(&created).to_string(),
                uid_of(&created).to_string(),
            ));
            created
        }
        Kind::NetworkPolicy => {
            let created = app.store.create(kind, ns, body)?;
            if let Some(note) = netpol::unenforced_rules(&created) {
                tracing::warn!("{note}");
            }
            // Answer once Docker has applied it: a client that created a
            // deny-all policy may rely on selected pods being cut off.
            runner::enforce_namespace(app, ns).await;
            created
        }
        Kind::Lease | Kind::EndpointSlice => app.store.create(kind, ns, body)?,
    };
    Ok((created, warnings))
}

async fn update(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    body: Value,
    validation: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    let (body, warnings) = typed(kind, ns, &body, validation)?;
    let body_name = name_of(&body);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let updated = app.store.update(kind, ns, name, |current| {
        let want = rv_of(&body);
        if !want.is_empty() && want != rv_of(current) {
            return Err(ApiError::conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut next = current.clone();
        for field in ["labels", "annotations"] {
            match body["metadata"].get(field) {
                Some(v) if !v.is_null() => next["metadata"][field] = v.clone(),
                _ => {
                    if let Some(m) = next["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        match kind {
            Kind::Pod => pods::check_update(current, &merge_defaults(current, &body))?,
            Kind::EndpointSlice => update_slice(kind, name, current, &body, &mut next)?,
            _ => {
                if body["spec"] != current["spec"] {
                    next["spec"] = body["spec"].clone();
                    let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
                    next["metadata"]["generation"] = json!(generation + 1);
                }
            }
        }
        Ok(Some(next))
    })?;
    if matches!(kind, Kind::Pod | Kind::NetworkPolicy) {
        runner::enforce_namespace(app, ns).await;
    }
    Ok((updated, warnings))
}

/// An EndpointSlice has no spec: its data are top-level fields, of which
/// `addressType` is immutable (422, as on a real server).
fn update_slice(
    kind: Kind,
    name: &str,
    current: &Value,
    body: &Value,
    next: &mut Value,
) -> ApiResult<()> {
    if body["addressType"] != current["addressType"] {
        return Err(ApiError::invalid(
            kind,
            name,
            &[("addressType".to_string(), "field is immutable".to_string())],
        ));
    }
    let mut changed = false;
    for field in ["endpoints", "ports"] {
        if body[field] != current[field] {
            changed = true;
            match body.get(field).filter(|v| !v.is_null()) {
                Some(v) => next[field] = v.clone(),
                None => {
                    if let Some(o) = next.as_object_mut() {
                        o.remove(field);
                    }
                }
            }
        }
    }
    if changed {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        next["metadata"]["generation"] = json!(generation + 1);
    }
    Ok(())
}

/// A pod update's spec compared with the stored one: fields the server
/// defaulted count as unchanged when the body leaves them out.
fn merge_defaults(current: &Value, body: &Value) -> Value {
    let mut with = json!({"spec": current["spec"].clone()});
    if let Some(spec) = body.get("spec").filter(|s| !s.is_null()) {
        merge_patch(&mut with["spec"], spec);
    }
    with
}

/// DeleteOptions from the body (JSON) and the query.
fn delete_options(q: &Query, body: &Bytes) -> ApiResult<Value> {
    let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("DeleteOptions: {e}")))?
    };
    if let Some(g) = q.int("gracePeriodSeconds")? {
        opts["gracePeriodSeconds"] = json!(g);
    }
    Ok(opts)
}

async fn delete(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    q: &Query,
    body: &Bytes,
) -> ApiResult<Response> {
    let opts = delete_options(q, body)?;
    let current = app.store.get(kind, ns, name)?;
    if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
        && uid != uid_of(&current)
    {
        return Err(ApiError::conflict(
            kind,
            name,
            "Precondition failed: UID in precondition does not match the object",
        ));
    }
    if let Some(rv) = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        && rv != rv_of(&current)
    {
        return Err(ApiError::conflict(
            kind,
            name,
            "Precondition failed: ResourceVersion in precondition does not match the object",
        ));
    }
    match kind {
        Kind::Pod => {
            let grace = opts["gracePeriodSeconds"]
                .as_i64()
                .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0);
            let marked = runner::mark_deleting(app, ns, name, grace)?;
            let uid = uid_of(&marked).to_string();
            let job = runner::terminate(app.clone(), ns.to_string(), name.to_string(), uid, grace);
            if grace == 0 {
                // A forced delete: gone, container and all, when it answers.
                job.await;
            } else {
                app.tasks.spawn(job);
            }
            Ok(json_response(StatusCode::OK, &marked))
        }
        Kind::NetworkPolicy | Kind::Lease | Kind::EndpointSlice => {
            let removed = app.store.remove(kind, ns, name, None)?;
            if kind == Kind::NetworkPolicy {
                runner::enforce_namespace(app, ns).await;
            }
            let mut details = json!({"name": name, "kind": kind.plural(), "uid": uid_of(&removed)});
            if !kind.group().is_empty() {
                details["group"] = json!(kind.group());
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success", "details": details}),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "n": [1]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "n": [1]}));
    }
}
