//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis` and the
//! named groups' versions. Plain JSON only: clients that ask for aggregated
//! discovery (`application/json;g=apidiscovery.k8s.io;v=v2`) always list
//! plain `application/json` after it and fall back when the answer's content
//! type is plain JSON.

use serde_json::{Value, json};

use crate::kinds::Kind;

/// The Kubernetes version this server claims: the API level of the
/// `k8s-openapi` feature (v1_33) the sandpool backend compiles against.
pub const MAJOR: &str = "1";
pub const MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "gitVersion": format!("v{MAJOR}.{MINOR}.0-sandpool-k8s-testserver"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    })
}

fn resource(
    name: &str,
    singular: &str,
    namespaced: bool,
    kind: &str,
    verbs: &[&str],
    short: &[&str],
) -> Value {
    let mut r = json!({
        "name": name,
        "singularName": singular,
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    r
}

const OBJECT_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn core_v1() -> Value {
    let mut pods = resource("pods", "pod", true, "Pod", OBJECT_VERBS, &["po"]);
    pods["categories"] = json!(["all"]);
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource("namespaces", "namespace", false, "Namespace", &["create", "get", "list"], &["ns"]),
            pods,
            resource("pods/exec", "", true, "PodExecOptions", &["create", "get"], &[]),
            resource("pods/log", "", true, "Pod", &["get"], &[]),
            resource("pods/status", "", true, "Pod", &["get"], &[]),
        ],
    })
}

fn group(kind: Kind) -> Value {
    let gv = json!({"groupVersion": kind.api_version(), "version": "v1"});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": kind.group(),
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

/// The kinds of the named groups, one kind each.
const GROUPED: [Kind; 3] = [Kind::NetworkPolicy, Kind::Lease, Kind::EndpointSlice];

/// The named groups: networking.k8s.io, coordination.k8s.io and
/// discovery.k8s.io.
pub fn groups() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPED.map(group),
    })
}

/// `/apis/GROUP`, for the groups served.
pub fn group_doc(name: &str) -> Option<Value> {
    GROUPED.into_iter().find(|k| k.group() == name).map(group)
}

/// `/apis/GROUP/v1`, for the groups served.
pub fn group_version(name: &str) -> Option<Value> {
    let kind = GROUPED.into_iter().find(|k| k.group() == name)?;
    let (singular, short): (&str, &[&str]) = match kind {
        Kind::NetworkPolicy => ("networkpolicy", &["netpol"]),
        Kind::EndpointSlice => ("endpointslice", &[]),
        _ => ("lease", &[]),
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": kind.api_version(),
        "resources": [resource(kind.plural(), singular, true, kind.kind(), OBJECT_VERBS, short)],
    }))
}
