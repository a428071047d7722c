//! Policy documents (YAML or JSON, several per file, `List` kinds) to the
//! model. Syntax errors carry the file, line and field path serde_yaml gives;
//! meaning errors (a bad CIDR, a port out of range, an unsupported entity)
//! carry the file, the policy and the field path. A file either loads whole
//! or not at all.
//!
//! This module owns the entry points and the error type; `document` reads
//! `kind` and `apiVersion` and dispatches, `cilium` and `network_policy`
//! convert the two families of kinds, and `selector`, `cidr` and `l4`
//! convert the parts they share. Converters report a field path relative to
//! the document; the file and policy are attached on the way out.

mod cidr;
mod cilium;
mod document;
mod l4;
mod network_policy;
mod selector;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::model::{Origin, Policy};
use super::raw;
use document::parse_document;

/// A policy that could not be loaded, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based line and column, when the YAML parser knows them.
    pub location: Option<(usize, usize)>,
    /// `Kind name` of the policy, when it could be read.
    pub policy: Option<String>,
    /// Field path inside the document, e.g. `spec.egress[0].toPorts[0]`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(p) = &self.policy {
            write!(f, ": {p}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

/// A meaning error found while converting, before the file/policy context is
/// attached.
struct FieldError {
    field: String,
    message: String,
}

type FieldResult<T> = Result<T, FieldError>;

fn field_err<T>(field: impl Into<String>, message: impl Into<String>) -> FieldResult<T> {
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// Parses every policy document in `text` (read from `file`).
pub fn parse_policies(text: &str, file: &Path) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| yaml_error(file, None, e))?;
        if value.is_null() {
            continue; // an empty document (`---` at the end) carries nothing
        }
        let origin = Origin {
            file: file.to_path_buf(),
            document: index,
        };
        // The typed parse reads the document's text again so that its errors
        // carry line numbers; the untyped value only names kind and policy.
        let typed = serde_yaml::Deserializer::from_str(text)
            .nth(index)
            .expect("document seen by the first pass");
        parse_document(&value, Some(typed), &origin, "", &mut out)?;
    }
    Ok(out)
}
/// A serde_yaml message without the " at line L column C" it puts after
/// the message and again after the context (", while parsing a flow
/// mapping at line ..."), since callers print the location once.
pub(crate) fn strip_yaml_location(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line = digits(after);
        let tail = &after[line..];
        match tail.strip_prefix(" column ") {
            Some(col) if line > 0 && digits(col) > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Turns a serde_yaml error into a [`PolicyError`], rewording refusals of
/// upstream fields xpf does not implement.
fn yaml_error(file: &Path, policy: Option<String>, e: serde_yaml::Error) -> PolicyError {
    let location = e.location().map(|l| (l.line(), l.column()));
    // The location is printed apart.
    let text = strip_yaml_location(&e.to_string());
    // serde_yaml prefixes the field path as "a.b[0].c: message".
    let (mut field, mut message) = match text.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
        _ => (String::new(), text.clone()),
    };
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        let name = name.to_string();
        field = if field.is_empty() || field == "." {
            name.clone()
        } else {
            format!("{field}.{name}")
        };
        message = match raw::UNSUPPORTED_FIELDS.iter().find(|(f, _)| *f == name) {
            Some((_, why)) => format!("not supported by xpf ({why})"),
            None => match message.split_once("`, ") {
                Some((_, expected)) => format!("unknown field ({expected})"),
                None => "unknown field".to_string(),
            },
        };
    }
    PolicyError {
        file: file.to_path_buf(),
        location,
        policy,
        field,
        message,
    }
}

/// Loads every policy file named by `paths` (files, or directories whose
/// `.yaml`, `.yml` and `.json` files are read in name order).
pub fn load_policy_paths(paths: &[PathBuf]) -> Result<Vec<Policy>, PolicyError> {
    Ok(PolicyFiles::load(paths, &PolicyFiles::default())?.policies())
}

/// The policy files a list of paths named when last read: each file with
/// a hash of its text and the policies it held, so reading them again
/// parses only the files whose text changed.
#[derive(Clone, Debug, Default)]
pub struct PolicyFiles {
    files: Vec<PolicyFile>,
}

#[derive(Clone, Debug)]
struct PolicyFile {
    path: PathBuf,
    hash: u64,
    policies: Arc<Vec<Policy>>,
}

impl PolicyFiles {
    /// Reads the files `paths` name (see [`load_policy_paths`]); a file
    /// whose text is what it was in `previous` is not parsed again. A file
    /// either loads whole or the call fails.
    pub fn load(paths: &[PathBuf], previous: &PolicyFiles) -> Result<Self, PolicyError> {
        let unreadable = |file: &Path, e: std::io::Error| PolicyError {
            file: file.to_path_buf(),
            location: None,
            policy: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        };
        let mut names = Vec::new();
        for p in paths {
            let io = |e| unreadable(p, e);
            if p.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(io)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| {
                        f.is_file()
                            && matches!(
                                f.extension().and_then(|e| e.to_str()),
                                Some("yaml" | "yml" | "json")
                            )
                    })
                    .collect();
                found.sort();
                names.extend(found);
            } else {
                names.push(p.clone());
            }
        }
        let mut files = Vec::with_capacity(names.len());
        for path in names {
            let text = std::fs::read_to_string(&path).map_err(|e| unreadable(&path, e))?;
            let hash = hash_of(&text);
            let known = previous
                .files
                .iter()
                .find(|f| f.path == path && f.hash == hash);
            let policies = match known {
                Some(f) => Arc::clone(&f.policies),
                None => Arc::new(parse_policies(&text, &path)?),
            };
            files.push(PolicyFile {
                path,
                hash,
                policies,
            });
        }
        Ok(Self { files })
    }

    /// Every file's policies, in order.
    pub fn policies(&self) -> Vec<Policy> {
        self.files
            .iter()
            .flat_map(|f| f.policies.iter().cloned())
            .collect()
    }
}

/// A hash of a file's text, to tell whether it changed between reads.
pub(crate) fn hash_of(text: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
