//! Kubernetes label selectors (`matchLabels`, `matchExpressions`) to label
//! [`Selector`]s and requirements: plain selectors whose keys may carry a
//! Cilium source prefix, NetworkPolicy namespace selectors mapped onto the
//! namespace labels Cilium gives endpoints, and the requirement that scopes
//! a selector to one namespace.

use super::{field_err, FieldResult};
use crate::labels::{
    LabelKey, Operator, Requirement, Selector, K8S_NAMESPACE_NAME_LABEL, NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX, SOURCE_ANY,
};
use crate::policy::raw;

pub(super) fn namespace_requirement(ns: &str) -> Requirement {
    Requirement {
        key: LabelKey::new(SOURCE_ANY, NAMESPACE_LABEL),
        operator: Operator::In,
        values: vec![ns.to_string()],
    }
}

/// Converts a Kubernetes label selector. Keys may carry a Cilium source
/// prefix (`k8s:app`).
pub(super) fn selector(sel: &raw::LabelSelector, at: &str) -> FieldResult<Selector> {
    requirements(sel, at, |k| LabelKey::parse(k).map_err(|e| e.to_string()))
        .map(|requirements| Selector { requirements })
}

/// Converts a NetworkPolicy `namespaceSelector` into requirements on the
/// endpoint labels that carry namespace facts, as Cilium maps them.
pub(super) fn namespace_selector(
    sel: &raw::LabelSelector,
    at: &str,
) -> FieldResult<Vec<Requirement>> {
    requirements(sel, at, |k| {
        Ok(if k == K8S_NAMESPACE_NAME_LABEL {
            LabelKey::new(SOURCE_ANY, NAMESPACE_LABEL)
        } else {
            LabelKey::new(SOURCE_ANY, &format!("{NAMESPACE_LABELS_PREFIX}{k}"))
        })
    })
}

fn requirements(
    sel: &raw::LabelSelector,
    at: &str,
    key: impl Fn(&str) -> Result<LabelKey, String>,
) -> FieldResult<Vec<Requirement>> {
    let mut out = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        let f = format!("{at}.matchLabels.{k}");
        out.push(Requirement {
            key: key(k).or_else(|m| field_err(&f, m))?,
            operator: Operator::In,
            values: vec![v.clone()],
        });
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{at}.matchExpressions[{i}]");
        let operator = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return field_err(
                    format!("{f}.operator"),
                    format!("unknown operator `{other}` (In, NotIn, Exists, DoesNotExist)"),
                )
            }
        };
        let values = e.values.clone().unwrap_or_default();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return field_err(format!("{f}.values"), "must not be empty for In and NotIn")
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return field_err(
                    format!("{f}.values"),
                    "must be empty for Exists and DoesNotExist",
                )
            }
            _ => {}
        }
        out.push(Requirement {
            key: key(&e.key).or_else(|m| field_err(format!("{f}.key"), m))?,
            operator,
            values,
        });
    }
    Ok(out)
}
