//! Policy: documents parsed into a model ([`model`]), compiled into per
//! endpoint egress tables ([`compile`]) that answer a verdict in a few memory
//! accesses, and a deliberately naive [`reference`] evaluator that walks the
//! rules directly, used to check the compiled tables.

pub mod compile;
pub mod model;
pub mod parse;
mod raw;
pub mod reference;
mod select;

use std::fmt;

use model::{Policy, RuleRef};

/// Allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
}

/// Why a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The first matching allow rule (lowest policy, then rule index).
    Allow(RuleRef),
    /// The first matching deny rule.
    Deny(RuleRef),
    /// Selected by a policy with an egress section; nothing allowed this.
    DefaultDeny,
    /// Selected only by policies that turned default deny off.
    DefaultAllow,
    /// No policy with an egress section selects the endpoint.
    NoPolicy,
}

/// A verdict and its cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub verdict: Verdict,
    pub cause: Cause,
}

impl Decision {
    pub fn from_cause(cause: Cause) -> Self {
        let verdict = match cause {
            Cause::Allow(_) | Cause::DefaultAllow | Cause::NoPolicy => Verdict::Allowed,
            Cause::Deny(_) | Cause::DefaultDeny => Verdict::Denied,
        };
        Self { verdict, cause }
    }

    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allowed
    }

    /// A sentence for people: which policy and rule, or which default.
    pub fn reason(&self, policies: &[Policy]) -> String {
        let rule = |r: &RuleRef| {
            let p = &policies[r.policy as usize];
            let (section, rules) = if r.deny {
                ("egressDeny", &p.egress.deny)
            } else {
                ("egress", &p.egress.allow)
            };
            format!(
                "{} `{}` {section}[{}] ({})",
                p.kind,
                p.display_name(),
                rules[r.rule as usize].index,
                p.origin.file.display()
            )
        };
        match &self.cause {
            Cause::Allow(r) => format!("allowed by {}", rule(r)),
            Cause::Deny(r) => format!("denied by {}", rule(r)),
            Cause::DefaultDeny => "default deny: the endpoint is selected by a policy with an \
                                   egress section and no rule allows this"
                .to_string(),
            Cause::DefaultAllow => "no rule matches and the selecting policies set \
                                    enableDefaultDeny.egress: false"
                .to_string(),
            Cause::NoPolicy => "no policy selects this endpoint for egress".to_string(),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
        })
    }
}
