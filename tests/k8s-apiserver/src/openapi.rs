//! A minimal OpenAPI v3: just enough for kubectl to see that the server
//! takes the `fieldValidation` query parameter, so `kubectl create -f` and
//! `kubectl apply -f` leave validation to the server instead of fetching
//! full schemas (which are not served). kubectl looks for a PATCH operation
//! tagged with the kind's group-version-kind that lists the parameter.

use serde_json::{Value, json};

use crate::kinds::Kind;

/// A fixed hash: the documents never change within a server's life.
const HASH: &str = "0000000000000000";

fn gv_path(kind: Kind) -> String {
    match kind.group() {
        "" => "api/v1".to_string(),
        g => format!("apis/{g}/v1"),
    }
}

/// `/openapi/v3`: the group versions and where their documents are.
pub fn root() -> Value {
    let mut paths = serde_json::Map::new();
    for kind in Kind::ALL {
        let gv = gv_path(kind);
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={HASH}")}),
        );
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/GROUP/v1`.
pub fn group_version(path: &str) -> Option<Value> {
    let kind = Kind::ALL.into_iter().find(|k| gv_path(*k) == path)?;
    let (group, version) = match kind.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", kind.api_version()),
    };
    let operation = json!({
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind.kind()},
        "parameters": [
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ],
        "responses": {"200": {"description": "OK"}},
    });
    let object_path = format!(
        "/{path}/namespaces/{{namespace}}/{}/{{name}}",
        kind.plural()
    );
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (sandpool k8s test server)", "version": "v1.33.0"},
        "paths": { object_path: { "patch": operation.clone(), "put": operation } },
        "components": {},
    }))
}
