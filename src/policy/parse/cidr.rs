//! CIDR peers: a CIDR or bare address, normalised to its prefix, and a
//! CIDR with `except` prefixes that must lie inside it.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{field_err, FieldResult};
use crate::policy::model::CidrSelector;

/// Parses a CIDR (or a bare address, meaning a host prefix), normalised.
pub(super) fn parse_cidr(s: &str, at: &str) -> FieldResult<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    field_err(at, format!("invalid CIDR `{s}`"))
}

pub(super) fn cidr_selector(
    cidr: &str,
    except: Option<&[String]>,
    at: &str,
) -> FieldResult<CidrSelector> {
    let net = parse_cidr(cidr, &format!("{at}.cidr"))?;
    let mut excepts = Vec::new();
    for (i, e) in except.unwrap_or_default().iter().enumerate() {
        let f = format!("{at}.except[{i}]");
        let ex = parse_cidr(e, &f)?;
        if !net.contains(&ex) {
            return field_err(f, format!("{ex} is not inside {net}"));
        }
        excepts.push(ex);
    }
    Ok(CidrSelector {
        cidr: net,
        except: excepts,
    })
}
