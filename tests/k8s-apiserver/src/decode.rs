//! Decoding a request body the way the API server does: quantities may be
//! JSON numbers (`cpu: 1` in YAML), and unknown fields are dropped with a
//! warning, or refused under `fieldValidation=Strict`.

use serde_json::Value;

use crate::{
    error::{ApiError, ApiResult},
    query::Query,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    /// The server default: unknown fields come back as `Warning` headers.
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn from_query(q: &Query) -> ApiResult<Self> {
        match q.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: invalid value {other:?}: must be Ignore, Warn or Strict"
            ))),
        }
    }

    /// Applies the policy to the unknown fields found: an error (Strict)
    /// or the warnings to send (Warn).
    pub fn check(self, unknown: Vec<String>) -> ApiResult<Vec<String>> {
        let messages: Vec<String> = unknown
            .into_iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match self {
            Self::Ignore => Ok(Vec::new()),
            Self::Warn => Ok(messages),
            Self::Strict if messages.is_empty() => Ok(Vec::new()),
            Self::Strict => Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                messages.join(", ")
            ))),
        }
    }
}

/// Quantities written as numbers become strings, as the API server's
/// decoder accepts both (k8s-openapi takes only strings).
pub fn quantities_as_strings(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &mut *v) {
                    ("limits" | "requests", Value::Object(resources)) => {
                        for q in resources.values_mut() {
                            if q.is_number() {
                                *q = Value::String(q.to_string());
                            }
                        }
                    }
                    ("sizeLimit", q) if q.is_number() => *q = Value::String(q.to_string()),
                    _ => quantities_as_strings(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(quantities_as_strings),
        _ => {}
    }
}

/// Fields of `body` that did not survive decoding into the typed object
/// (`decoded`), as dotted paths (`spec.containers[0].imagePullPolicyy`).
pub fn unknown_fields(body: &Value, decoded: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(body, decoded, String::new(), &mut out);
    out
}

fn walk(body: &Value, decoded: &Value, path: String, out: &mut Vec<String>) {
    match (body, decoded) {
        (Value::Object(b), Value::Object(d)) => {
            for (key, v) in b {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match d.get(key) {
                    None if !v.is_null() => out.push(here),
                    None => {}
                    Some(dv) => walk(v, dv, here, out),
                }
            }
        }
        (Value::Array(b), Value::Array(d)) => {
            for (i, (v, dv)) in b.iter().zip(d).enumerate() {
                walk(v, dv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_and_quantities() {
        let mut body = json!({"spec": {"containers": [{"name": "a", "typo": 1,
            "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}}], "nul": null}});
        quantities_as_strings(&mut body);
        assert_eq!(
            body["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
        let decoded = json!({"spec": {"containers": [{"name": "a",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(unknown_fields(&body, &decoded), ["spec.containers[0].typo"]);
        let strict = FieldValidation::Strict.check(vec!["x".into()]).unwrap_err();
        assert_eq!(strict.message, "strict decoding error: unknown field \"x\"");
        assert!(
            FieldValidation::Ignore
                .check(vec!["x".into()])
                .unwrap()
                .is_empty()
        );
    }
}
