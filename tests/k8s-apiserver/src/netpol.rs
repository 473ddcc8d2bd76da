//! NetworkPolicy semantics, as far as this server enforces them.
//!
//! Enforced: a pod is cut off from every network (only `lo` left) when it is
//! isolated for both ingress and egress by the policies of its namespace
//! that select it, and none of those policies allows anything. That is the
//! deny-all policy (`podSelector` matching the pod, `policyTypes: [Ingress,
//! Egress]`, no rules); policies are additive, so one more policy that
//! selects the pod and allows some traffic gives it its network back.
//!
//! Not enforced: partial rules (allow from/to some peers or ports): a pod
//! they select keeps the default bridge, fully connected. Policy
//! `policyTypes` default as in Kubernetes (Ingress, plus Egress when
//! `egress` rules are present).

use serde_json::Value;

use crate::{
    error::{ApiError, ApiResult},
    kinds::Kind,
    selector::{LabelSelector, labels_of},
    store::name_of,
};

/// Checks the body is a NetworkPolicy (400 when it is not).
pub fn parse(body: &Value) -> ApiResult<Value> {
    let typed: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(body.clone()).map_err(|e| {
            ApiError::bad_request(format!(
                "NetworkPolicy in version \"v1\" cannot be handled as a NetworkPolicy: {e}"
            ))
        })?;
    serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))
}

fn policy_types(policy: &Value) -> (bool, bool) {
    let spec = &policy["spec"];
    match spec["policyTypes"].as_array() {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (
            true,
            spec["egress"].as_array().is_some_and(|e| !e.is_empty()),
        ),
    }
}

fn has_rules(policy: &Value, field: &str) -> bool {
    policy["spec"][field]
        .as_array()
        .is_some_and(|r| !r.is_empty())
}

pub fn selects(policy: &Value, pod: &Value) -> bool {
    LabelSelector::from_object(policy["spec"].get("podSelector")).matches(&labels_of(pod))
}

/// Whether `pod` must have no network under `policies` (those of its
/// namespace).
pub fn isolated(pod: &Value, policies: &[Value]) -> bool {
    let selecting: Vec<&Value> = policies.iter().filter(|p| selects(p, pod)).collect();
    let (mut ingress, mut egress, mut allows) = (false, false, false);
    for p in &selecting {
        let (i, e) = policy_types(p);
        ingress |= i;
        egress |= e;
        allows |= (i && has_rules(p, "ingress")) || (e && has_rules(p, "egress"));
    }
    ingress && egress && !allows
}

/// A note for the log when a policy has rules this server does not enforce.
pub fn unenforced_rules(policy: &Value) -> Option<String> {
    let (i, e) = policy_types(policy);
    let partial = (i && has_rules(policy, "ingress")) || (e && has_rules(policy, "egress"));
    let one_way = i != e;
    (partial || one_way).then(|| {
        format!(
            "{} \"{}\": only deny-all (Ingress+Egress, no rules) is enforced; pods it selects keep their network",
            Kind::NetworkPolicy.qualified(),
            name_of(policy)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deny_all_and_additive_allows() {
        let pod = json!({"metadata": {"labels": {"pool": "a"}}});
        let other = json!({"metadata": {"labels": {"pool": "b"}}});
        let deny = json!({"metadata": {"name": "deny"}, "spec": {
            "podSelector": {"matchLabels": {"pool": "a"}}, "policyTypes": ["Ingress", "Egress"]}});
        assert!(isolated(&pod, std::slice::from_ref(&deny)));
        assert!(!isolated(&other, std::slice::from_ref(&deny)));
        let ingress_only = json!({"metadata": {"name": "i"}, "spec": {"podSelector": {}}});
        assert!(!isolated(&pod, std::slice::from_ref(&ingress_only)));
        assert!(unenforced_rules(&ingress_only).is_some());
        let allow_dns = json!({"metadata": {"name": "dns"}, "spec": {"podSelector": {},
            "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53}]}]}});
        assert!(!isolated(&pod, &[deny.clone(), allow_dns]));
        assert!(unenforced_rules(&deny).is_none());
    }
}
