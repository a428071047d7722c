//! One policy document to the model: read its `kind` and `apiVersion`, walk
//! into `List` items, run the typed serde parse (with line numbers for a
//! top-level document, field paths under `items[i].` for list items) and
//! hand the typed document to the Cilium or NetworkPolicy converter. Every
//! error leaves here as a [`PolicyError`] naming the file and the policy.

use serde::Deserialize;

use super::cilium::convert_cilium;
use super::network_policy::convert_network_policy;
use super::{yaml_error, PolicyError};
use crate::policy::model::{Origin, Policy, PolicyKind};
use crate::policy::raw;

fn head_of(value: &serde_yaml::Value) -> raw::Head {
    raw::Head::deserialize(value.clone()).unwrap_or(raw::Head {
        api_version: None,
        kind: None,
        metadata: None,
    })
}

fn describe(head: &raw::Head) -> Option<String> {
    let kind = head.kind.as_deref()?;
    match head.metadata.as_ref().and_then(|m| m.name.as_deref()) {
        Some(name) => Some(format!("{kind} `{name}`")),
        None => Some(kind.to_string()),
    }
}

/// Parses one document given as an untyped value and, for top-level
/// documents, the deserializer over its text (for line numbers). `prefix` is
/// the field path of the document (`items[3].` inside a list).
pub(super) fn parse_document(
    value: &serde_yaml::Value,
    typed: Option<serde_yaml::Deserializer<'_>>,
    origin: &Origin,
    prefix: &str,
    out: &mut Vec<Policy>,
) -> Result<(), PolicyError> {
    let head = head_of(value);
    let who = describe(&head);
    let fail = |field: String, message: String| PolicyError {
        file: origin.file.clone(),
        location: None,
        policy: who.clone(),
        field,
        message,
    };
    let kind = head
        .kind
        .as_deref()
        .ok_or_else(|| fail(format!("{prefix}kind"), "missing `kind`".into()))?;
    let api = head.api_version.as_deref().unwrap_or("");

    fn typed_parse<T: for<'de> Deserialize<'de>>(
        value: &serde_yaml::Value,
        typed: Option<serde_yaml::Deserializer<'_>>,
        origin: &Origin,
        who: &Option<String>,
        prefix: &str,
    ) -> Result<T, PolicyError> {
        match typed {
            Some(de) => T::deserialize(de).map_err(|e| yaml_error(&origin.file, who.clone(), e)),
            None => T::deserialize(value.clone()).map_err(|e| {
                let mut err = yaml_error(&origin.file, who.clone(), e);
                err.field = format!("{prefix}{}", err.field);
                err.location = None;
                err
            }),
        }
    }

    let policy_kind = match kind {
        "CiliumNetworkPolicy" => PolicyKind::CiliumNetworkPolicy,
        "CiliumClusterwideNetworkPolicy" => PolicyKind::CiliumClusterwideNetworkPolicy,
        "NetworkPolicy" => PolicyKind::NetworkPolicy,
        k if k == "List" || k.ends_with("List") => {
            let list: raw::ListDoc = typed_parse(value, typed, origin, &who, prefix)?;
            for (i, item) in list.items.iter().enumerate() {
                parse_document(item, None, origin, &format!("{prefix}items[{i}]."), out)?;
            }
            return Ok(());
        }
        other => {
            return Err(fail(
                format!("{prefix}kind"),
                format!(
                    "unsupported kind `{other}` (xpf reads CiliumNetworkPolicy, \
                     CiliumClusterwideNetworkPolicy, NetworkPolicy and List)"
                ),
            ))
        }
    };
    let want_api = match policy_kind {
        PolicyKind::NetworkPolicy => "networking.k8s.io/v1",
        _ => "cilium.io/v2",
    };
    if api != want_api {
        return Err(fail(
            format!("{prefix}apiVersion"),
            format!("{kind} needs apiVersion `{want_api}`, found `{api}`"),
        ));
    }

    let converted = match policy_kind {
        PolicyKind::NetworkPolicy => {
            let doc: raw::NetworkPolicyDoc = typed_parse(value, typed, origin, &who, prefix)?;
            convert_network_policy(doc, origin).map(|p| vec![p])
        }
        _ => {
            let doc: raw::CiliumDoc = typed_parse(value, typed, origin, &who, prefix)?;
            convert_cilium(doc, policy_kind, origin)
        }
    };
    match converted {
        Ok(policies) => {
            out.extend(policies);
            Ok(())
        }
        Err(e) => Err(fail(format!("{prefix}{}", e.field), e.message)),
    }
}
