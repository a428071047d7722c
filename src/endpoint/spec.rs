//! What an endpoint should look like, checked before anything is made:
//! each spec on its own ([`EndpointSpec::validate`]) and a set of them
//! against each other ([`validate_all`]).

use std::net::IpAddr;

use super::{EndpointError, EndpointSpec, Owner, INTERNAL_HOST_IFNAME, INTERNAL_NET_IFNAME};
use crate::rules;

impl EndpointSpec {
    pub(super) fn owner(&self) -> Owner {
        Owner::Endpoint(self.name.clone())
    }

    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }

    /// Checks the fields on their own, before anything is made.
    pub fn validate(&self) -> Result<(), EndpointError> {
        let invalid = |field, message: String| EndpointError::Invalid {
            owner: self.owner(),
            field,
            message,
        };
        if self.name.is_empty() {
            return Err(invalid("name", "is empty".into()));
        }
        if let Err(why) = rules::netns(&self.netns) {
            return Err(invalid("netns", format!("`{}` {why}", self.netns)));
        }
        if let Err(why) = rules::ifname(&self.host_ifname) {
            return Err(invalid(
                "host_ifname",
                format!("`{}` {why}", self.host_ifname),
            ));
        }
        if [INTERNAL_NET_IFNAME, INTERNAL_HOST_IFNAME].contains(&self.host_ifname.as_str()) {
            return Err(invalid(
                "host_ifname",
                format!("`{}` is reserved for xpf's internal pair", self.host_ifname),
            ));
        }
        if self.queues == 0 {
            return Err(invalid("queues", "must be at least 1".into()));
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(invalid(
                "ipv4",
                "an endpoint needs at least one of ipv4 and ipv6".into(),
            ));
        }
        if let Some(a) = self.ipv4 {
            if let Err(why) = rules::endpoint_ipv4(a) {
                return Err(invalid("ipv4", format!("{a} {why}")));
            }
        }
        if let Some(a) = self.ipv6 {
            if let Err(why) = rules::endpoint_ipv6(a) {
                return Err(invalid("ipv6", format!("{a} {why}")));
            }
        }
        Ok(())
    }
}

/// Every spec valid on its own, and no name, namespace, host interface or
/// address used twice.
pub(super) fn validate_all(specs: &[EndpointSpec]) -> Result<(), EndpointError> {
    for (i, spec) in specs.iter().enumerate() {
        spec.validate()?;
        for other in &specs[..i] {
            let clash = |field, what: String| EndpointError::Invalid {
                owner: spec.owner(),
                field,
                message: format!("{what} is also used by endpoint `{}`", other.name),
            };
            if spec.name == other.name {
                return Err(clash("name", format!("`{}`", spec.name)));
            }
            if spec.netns == other.netns {
                return Err(clash(
                    "netns",
                    format!("network namespace `{}`", spec.netns),
                ));
            }
            if spec.host_ifname == other.host_ifname {
                return Err(clash(
                    "host_ifname",
                    format!("interface `{}`", spec.host_ifname),
                ));
            }
            if let Some(a) = spec.ipv4.filter(|a| other.ipv4 == Some(*a)) {
                return Err(clash("ipv4", a.to_string()));
            }
            if let Some(a) = spec.ipv6.filter(|a| other.ipv6 == Some(*a)) {
                return Err(clash("ipv6", a.to_string()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::endpoint::{Attach, GATEWAY_V4, GATEWAY_V6};

    fn spec() -> EndpointSpec {
        EndpointSpec {
            name: "web".into(),
            netns: "web".into(),
            host_ifname: "xpf-web".into(),
            ipv4: Some(Ipv4Addr::new(198, 18, 0, 2)),
            ipv6: Some("2001:db8::2".parse().unwrap()),
            attach: Attach::Create,
            queues: 1,
        }
    }

    fn invalid_field(r: Result<(), EndpointError>) -> &'static str {
        match r {
            Err(EndpointError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(spec().validate().is_ok());
        type Break = fn(&mut EndpointSpec);
        let cases: [(&str, Break); 9] = [
            ("name", |s| s.name.clear()),
            ("netns", |s| s.netns = "a/b".into()),
            ("host_ifname", |s| s.host_ifname = "sixteen-chars-xx".into()),
            ("host_ifname", |s| {
                s.host_ifname = INTERNAL_HOST_IFNAME.into()
            }),
            ("queues", |s| s.queues = 0),
            ("ipv4", |s| (s.ipv4, s.ipv6) = (None, None)),
            ("ipv4", |s| s.ipv4 = Some(GATEWAY_V4)),
            ("ipv6", |s| s.ipv6 = Some(GATEWAY_V6)),
            ("ipv6", |s| s.ipv6 = Some(Ipv6Addr::UNSPECIFIED)),
        ];
        for (field, break_it) in cases {
            let mut s = spec();
            break_it(&mut s);
            assert_eq!(invalid_field(s.validate()), field);
        }
    }

    #[test]
    fn duplicates_across_endpoints_name_the_field() {
        let mut b = spec();
        b.name = "api".into();
        b.netns = "api".into();
        b.host_ifname = "xpf-api".into();
        b.ipv6 = None;
        let err = validate_all(&[spec(), b]).unwrap_err();
        assert!(
            matches!(&err, EndpointError::Invalid { field: "ipv4", .. }),
            "{err}"
        );
        assert_eq!(err.owner(), &Owner::Endpoint("api".into()));
        assert!(err.to_string().contains("endpoint `web`"), "{err}");
    }
}
