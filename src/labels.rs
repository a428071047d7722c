//! Labels and label selectors.
//!
//! A label is `source:key=value`, as in Cilium: `k8s:app=web`. A bare key has
//! the source `any`. When a selector label is compared with an endpoint label,
//! the sources agree if they are equal or if either is `any`, so a config
//! written with bare keys is matched by policies that say `k8s:` and the other
//! way round. Keys are compared exactly.
//!
//! A [`LabelSet`] is kept sorted and free of duplicate keys, so equal sets
//! compare and hash equal and can key identity allocation.

use std::fmt;

/// Source meaning "from anywhere"; also what a bare key gets.
pub const SOURCE_ANY: &str = "any";
/// Source of xpf's own reserved labels (`reserved:host`, `reserved:world`,
/// `reserved:remote-node`).
pub const SOURCE_RESERVED: &str = "reserved";
/// Key of the reserved label another host's node addresses carry.
pub const REMOTE_NODE_KEY: &str = "remote-node";
/// Source of the labels CIDR identities carry.
pub const SOURCE_CIDR: &str = "cidr";
/// Sources a user may write in a label or a selector key.
pub const KNOWN_SOURCES: &[&str] = &[
    SOURCE_ANY,
    "k8s",
    "container",
    "unspec",
    SOURCE_RESERVED,
    SOURCE_CIDR,
];

/// The label carrying an endpoint's Kubernetes namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of the labels that carry a namespace's own labels on its endpoints.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The namespace label Kubernetes sets on every namespace (its name).
pub const K8S_NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A label key with its source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelKey {
    pub source: String,
    pub key: String,
}

impl LabelKey {
    /// Parses `source:key` or a bare `key` (source `any`). Keys may contain
    /// further colons only when a source is given.
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        let (source, key) = match s.split_once(':') {
            Some((src, key)) if KNOWN_SOURCES.contains(&src) => (src, key),
            Some((src, _)) if !src.is_empty() && !src.contains(['/', '.']) => {
                return Err(LabelError::UnknownSource {
                    label: s.to_string(),
                    src: src.to_string(),
                })
            }
            _ => (SOURCE_ANY, s),
        };
        if key.is_empty() {
            return Err(LabelError::EmptyKey {
                label: s.to_string(),
            });
        }
        Ok(Self {
            source: source.to_string(),
            key: key.to_string(),
        })
    }

    pub fn new(source: &str, key: &str) -> Self {
        Self {
            source: source.to_string(),
            key: key.to_string(),
        }
    }

    /// Whether this (selector) key names `other` (an endpoint's label key).
    pub fn matches(&self, other: &LabelKey) -> bool {
        self.key == other.key
            && (self.source == other.source
                || self.source == SOURCE_ANY
                || other.source == SOURCE_ANY)
    }
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.key)
    }
}

/// One label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub key: LabelKey,
    pub value: String,
}

impl Label {
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Self {
            key: LabelKey::new(source, key),
            value: value.to_string(),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}", self.key)
        } else {
            write!(f, "{}={}", self.key, self.value)
        }
    }
}

/// A bad label or selector key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("label `{label}`: unknown source `{src}` (known: any, k8s, container, unspec, reserved, cidr)")]
    UnknownSource { label: String, src: String },
    #[error("label `{label}`: empty key")]
    EmptyKey { label: String },
    #[error("label key `{key}` appears twice")]
    Duplicate { key: String },
}

/// A sorted set of labels with distinct keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Vec<Label>);

impl LabelSet {
    /// A set of `labels`. A key may appear once, whatever its source:
    /// `app` and `k8s:app` together would make selector matching depend on
    /// which one sorts first.
    pub fn new(mut labels: Vec<Label>) -> Result<Self, LabelError> {
        labels.sort_by(|a, b| (&a.key.key, &a.key.source).cmp(&(&b.key.key, &b.key.source)));
        for pair in labels.windows(2) {
            if pair[0].key.key == pair[1].key.key {
                return Err(LabelError::Duplicate {
                    key: pair[0].key.key.clone(),
                });
            }
        }
        labels.sort();
        Ok(Self(labels))
    }

    /// Builds a set from `key: value` pairs as written in a config file.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, LabelError> {
        let labels = pairs
            .into_iter()
            .map(|(k, v)| {
                Ok(Label {
                    key: LabelKey::parse(k)?,
                    value: v.to_string(),
                })
            })
            .collect::<Result<Vec<_>, LabelError>>()?;
        Self::new(labels)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The value of the first label that `key` names (see [`LabelKey::matches`]).
    pub fn get(&self, key: &LabelKey) -> Option<&str> {
        self.0
            .iter()
            .find(|l| key.matches(&l.key))
            .map(|l| l.value.as_str())
    }

    /// Whether any label has the given source.
    pub fn has_source(&self, source: &str) -> bool {
        self.0.iter().any(|l| l.key.source == source)
    }

    /// The endpoint's namespace (`io.kubernetes.pod.namespace`), if any.
    pub fn namespace(&self) -> Option<&str> {
        self.get(&LabelKey::new(SOURCE_ANY, NAMESPACE_LABEL))
    }
}

/// The labels of another host's node addresses, exactly
/// `reserved:remote-node` as Cilium gives them. Cluster mode builds its node
/// entries with this set, and the inventory knows them by it, so both must
/// build it here.
pub fn remote_node_labels() -> LabelSet {
    LabelSet(vec![Label::new(SOURCE_RESERVED, REMOTE_NODE_KEY, "")])
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Operator of a `matchExpressions` requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One requirement of a selector. `matchLabels` entries become `In` with one
/// value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: LabelKey,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether `labels` satisfy this requirement (Kubernetes semantics:
    /// `NotIn` and `DoesNotExist` hold when the key is absent).
    pub fn matches(&self, labels: &LabelSet) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            Operator::NotIn => value.is_none_or(|v| self.values.iter().all(|w| w != v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector: every requirement must hold. No requirements selects
/// every endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Selects every endpoint.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector names a `reserved:` label; only such selectors
    /// may select the host or the world identity (see the policy module).
    pub fn names_reserved(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key.source == SOURCE_RESERVED)
    }

    /// Whether any requirement is about the namespace label.
    pub fn names_namespace(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key.key == NAMESPACE_LABEL)
    }

    /// Adds `requirement` (AND).
    pub fn and(mut self, requirement: Requirement) -> Self {
        self.requirements.push(requirement);
        self
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r.operator {
                Operator::In if r.values.len() == 1 => write!(f, "{}={}", r.key, r.values[0])?,
                Operator::In => write!(f, "{} in ({})", r.key, r.values.join("|"))?,
                Operator::NotIn => write!(f, "{} notin ({})", r.key, r.values.join("|"))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> LabelSet {
        LabelSet::from_pairs(pairs.iter().copied()).unwrap()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: LabelKey::parse(key).unwrap(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn keys_parse_with_and_without_source() {
        assert_eq!(LabelKey::parse("app").unwrap(), LabelKey::new("any", "app"));
        assert_eq!(
            LabelKey::parse("k8s:app").unwrap(),
            LabelKey::new("k8s", "app")
        );
        // Kubernetes-style keys with dots and slashes keep their colons-free form.
        assert_eq!(
            LabelKey::parse("kubernetes.io/metadata.name").unwrap(),
            LabelKey::new("any", "kubernetes.io/metadata.name")
        );
        assert!(matches!(
            LabelKey::parse("bogus:app"),
            Err(LabelError::UnknownSource { .. })
        ));
        assert!(matches!(
            LabelKey::parse("k8s:"),
            Err(LabelError::EmptyKey { .. })
        ));
    }

    #[test]
    fn sources_match_when_equal_or_either_is_any() {
        let labels = set(&[("k8s:app", "web"), ("env", "prod")]);
        assert!(req("app", Operator::In, &["web"]).matches(&labels));
        assert!(req("k8s:app", Operator::In, &["web"]).matches(&labels));
        assert!(!req("container:app", Operator::In, &["web"]).matches(&labels));
        assert!(req("k8s:env", Operator::In, &["prod"]).matches(&labels));
    }

    #[test]
    fn every_operator() {
        let labels = set(&[("app", "web"), ("tier", "")]);
        assert!(req("app", Operator::In, &["db", "web"]).matches(&labels));
        assert!(!req("app", Operator::In, &["db"]).matches(&labels));
        assert!(!req("zone", Operator::In, &["a"]).matches(&labels));
        assert!(!req("app", Operator::NotIn, &["web"]).matches(&labels));
        assert!(req("app", Operator::NotIn, &["db"]).matches(&labels));
        assert!(req("zone", Operator::NotIn, &["a"]).matches(&labels));
        assert!(req("tier", Operator::Exists, &[]).matches(&labels));
        assert!(!req("zone", Operator::Exists, &[]).matches(&labels));
        assert!(req("zone", Operator::DoesNotExist, &[]).matches(&labels));
        assert!(!req("app", Operator::DoesNotExist, &[]).matches(&labels));
        assert!(Selector::all().matches(&labels));
        let both = Selector::all()
            .and(req("app", Operator::In, &["web"]))
            .and(req("zone", Operator::Exists, &[]));
        assert!(!both.matches(&labels));
    }

    #[test]
    fn a_key_appears_once_whatever_its_source() {
        let err = LabelSet::from_pairs([("app", "a"), ("k8s:app", "b")]).unwrap_err();
        assert_eq!(err, LabelError::Duplicate { key: "app".into() });
        // Equal sets compare equal whatever the order they were written in.
        assert_eq!(
            set(&[("a", "1"), ("b", "2")]),
            set(&[("b", "2"), ("a", "1")])
        );
    }
}
