//! Label and field selectors: the `labelSelector=`/`fieldSelector=` query
//! strings of list and watch, and the structured `LabelSelector`
//! (matchLabels/matchExpressions) of a NetworkPolicy's `podSelector`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::Eq(v) => value == Some(v),
            // As in Kubernetes: `k!=v` also selects objects without `k`.
            Op::NotEq(v) => value != Some(v),
            Op::In(vs) => value.is_some_and(|x| vs.contains(x)),
            Op::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
            Op::Exists => value.is_some(),
            Op::NotExists => value.is_none(),
            Op::Gt(n) => value
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Op::Lt(n) => value
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        }
    }
}

/// A parsed label selector; empty selects everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// A structured selector that can match nothing (an unknown operator).
    nothing: bool,
}

impl LabelSelector {
    /// Parses the string form: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
    /// `k in (a,b)`, `k notin (a,b)`, `k>1`, `k<1`, joined by commas.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let bad = |why: &str| {
            ApiError::bad_request(format!("unable to parse requirement: {why} in {s:?}"))
        };
        let mut requirements = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if let Some(key) = part.strip_prefix('!') {
                requirements.push(Requirement {
                    key: checked_key(key.trim()).map_err(|e| bad(&e))?,
                    op: Op::NotExists,
                });
                continue;
            }
            // Set-based: `key in (a,b)` / `key notin (a,b)`.
            if let Some(open) = part.find('(') {
                let head = part[..open].trim();
                let close = part.rfind(')').ok_or_else(|| bad("missing ')'"))?;
                let values: Vec<String> = part[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                let (key, op) = if let Some(k) = head.strip_suffix(" notin") {
                    (k, Op::NotIn(values))
                } else if let Some(k) = head.strip_suffix(" in") {
                    (k, Op::In(values))
                } else {
                    return Err(bad("expected 'in' or 'notin'"));
                };
                requirements.push(Requirement {
                    key: checked_key(key.trim()).map_err(|e| bad(&e))?,
                    op,
                });
                continue;
            }
            let (key, op) = if let Some((k, v)) = part.split_once("!=") {
                (k, Op::NotEq(v.trim().to_string()))
            } else if let Some((k, v)) = part.split_once("==") {
                (k, Op::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = part.split_once('=') {
                (k, Op::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = part.split_once('>') {
                (
                    k,
                    Op::Gt(v.trim().parse().map_err(|_| bad("not an integer"))?),
                )
            } else if let Some((k, v)) = part.split_once('<') {
                (
                    k,
                    Op::Lt(v.trim().parse().map_err(|_| bad("not an integer"))?),
                )
            } else {
                (part, Op::Exists)
            };
            requirements.push(Requirement {
                key: checked_key(key.trim()).map_err(|e| bad(&e))?,
                op,
            });
        }
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    /// An empty or absent object selects everything, as a NetworkPolicy's
    /// `podSelector: {}` does.
    pub fn from_object(selector: Option<&Value>) -> Self {
        let mut out = Self::default();
        let Some(selector) = selector else {
            return out;
        };
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                out.requirements.push(Requirement {
                    key: k.clone(),
                    op: Op::Eq(v.as_str().unwrap_or_default().to_string()),
                });
            }
        }
        for expr in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let values: Vec<String> = expr
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let op = match expr.get("operator").and_then(Value::as_str) {
                Some("In") => Op::In(values),
                Some("NotIn") => Op::NotIn(values),
                Some("Exists") => Op::Exists,
                Some("DoesNotExist") => Op::NotExists,
                _ => {
                    out.nothing = true;
                    continue;
                }
            };
            out.requirements.push(Requirement { key, op });
        }
        out
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Matches the `metadata.labels` of a stored object.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(&labels_of(object))
    }
}

/// The labels of a stored object.
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn checked_key(key: &str) -> Result<String, String> {
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

/// Splits at commas outside parentheses (`a in (x,y),b` is two parts).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A field selector: `path=value`, `path==value`, `path!=value`, joined by
/// commas, where path is any dotted field of the object (`metadata.name`,
/// `metadata.namespace`, `status.phase`, `spec.nodeName`, ...). A real
/// server accepts only a fixed list per kind; this one accepts any field, and
/// an absent field compares as the empty string.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    terms: Vec<(Vec<String>, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            terms.push((
                path.trim().split('.').map(str::to_string).collect(),
                equal,
                value.trim().to_string(),
            ));
        }
        Ok(Self { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(path, equal, value)| {
            let mut at = Some(object);
            for segment in path {
                at = at.and_then(|v| v.get(segment));
            }
            let actual = match at {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn string_forms() {
        let l = labels(&[("app", "x"), ("tier", "web"), ("n", "5")]);
        for (sel, want) in [
            ("", true),
            ("app=x", true),
            ("app==x", true),
            ("app=y", false),
            ("app!=y", true),
            ("missing!=y", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("tier in (db, web)", true),
            ("tier in (db)", false),
            ("tier notin (db),app=x", true),
            ("missing notin (db)", true),
            ("n>4,n<6", true),
            ("app=x,tier=db", false),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a in b)").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn structured() {
        let l = labels(&[("app", "x")]);
        let sel = json!({"matchLabels": {"app": "x"}, "matchExpressions": [
            {"key": "tier", "operator": "DoesNotExist"}]});
        assert!(LabelSelector::from_object(Some(&sel)).matches(&l));
        assert!(LabelSelector::from_object(Some(&json!({}))).matches(&l));
        let sel = json!({"matchExpressions": [{"key": "app", "operator": "Weird"}]});
        assert!(!LabelSelector::from_object(Some(&sel)).matches(&l));
    }

    #[test]
    fn fields() {
        let pod = json!({"metadata": {"name": "a"}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("metadata.name=a")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("metadata.name=a,status.phase!=Failed")
                .unwrap()
                .matches(&pod)
        );
        assert!(
            !FieldSelector::parse("status.phase=Pending")
                .unwrap()
                .matches(&pod)
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
