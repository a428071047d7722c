//! The conntrack journal: a pinned BPF hash map that mirrors the workers'
//! connection table, so a crashed or restarted `xpf run` finds every flow
//! it had admitted (and every inbound flow the TC program had reported) and
//! the replies of established connections keep passing.
//!
//! No BPF program reads it: it is a BPF map only so that the kernel keeps it
//! (pinned in the instance's bpffs folder) when the process dies, whatever
//! kills it. Writes happen when a flow appears, changes TCP state or goes
//! (one `bpf_map_update_elem`/`delete_elem` each), never per packet.
//!
//! Layout (native byte order, never reordered; `xpf` only):
//! - key, 40 bytes: the canonical flow (`conntrack::Tuple::key`): source
//!   address (16 bytes, IPv4 in the first 4), destination address (16),
//!   source port (u16), destination port (u16), protocol (u8), family
//!   (4 or 6, u8), two bytes of zero padding;
//! - value, 8 bytes: whether the key's first side opened the flow (u8),
//!   the state (u8: 0 SYN sent, 1 established, 2 closing), six bytes zero.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libbpf_rs::{libbpf_sys, MapCore, MapFlags, MapHandle, MapType};

use crate::conntrack::{Conntrack, Journal, State, Tuple};

const KEY_SIZE: usize = 40;
const VALUE_SIZE: usize = 8;
const MAP_NAME: &str = "xpf_ct";

/// Why the journal could not be opened or made.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("conntrack journal {path}: {action}: {source}")]
    Map {
        path: String,
        action: &'static str,
        source: libbpf_rs::Error,
    },
}

/// The pinned journal map, shared by every worker's conntrack calls.
pub struct CtJournal {
    map: MapHandle,
    /// Writes the kernel refused (full map, no memory): counted, never
    /// retried on the packet path.
    pub failed: Arc<AtomicU64>,
}

fn encode_key(t: &Tuple) -> [u8; KEY_SIZE] {
    let mut k = [0u8; KEY_SIZE];
    let put = |a: IpAddr, out: &mut [u8]| match a {
        IpAddr::V4(v) => out[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => out[..16].copy_from_slice(&v.octets()),
    };
    put(t.src, &mut k[0..16]);
    put(t.dst, &mut k[16..32]);
    k[32..34].copy_from_slice(&t.sport.to_ne_bytes());
    k[34..36].copy_from_slice(&t.dport.to_ne_bytes());
    k[36] = t.proto;
    k[37] = if t.src.is_ipv4() { 4 } else { 6 };
    k
}

fn decode_key(k: &[u8]) -> Option<Tuple> {
    if k.len() != KEY_SIZE {
        return None;
    }
    let addr = |b: &[u8]| -> Option<IpAddr> {
        match k[37] {
            4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
            _ => None,
        }
    };
    Some(Tuple {
        src: addr(&k[0..16])?,
        dst: addr(&k[16..32])?,
        sport: u16::from_ne_bytes([k[32], k[33]]),
        dport: u16::from_ne_bytes([k[34], k[35]]),
        proto: k[36],
    })
}

fn encode_value(opened_by_first: bool, state: State) -> [u8; VALUE_SIZE] {
    let mut v = [0u8; VALUE_SIZE];
    v[0] = u8::from(opened_by_first);
    v[1] = match state {
        State::SynSent => 0,
        State::Established => 1,
        State::Closing => 2,
    };
    v
}

fn decode_value(v: &[u8]) -> Option<(bool, State)> {
    if v.len() != VALUE_SIZE {
        return None;
    }
    let state = match v[1] {
        0 => State::SynSent,
        1 => State::Established,
        2 => State::Closing,
        _ => return None,
    };
    Some((v[0] != 0, state))
}

impl CtJournal {
    /// Opens the journal pinned at `path`, or makes and pins one holding
    /// up to `capacity` flows. A pinned journal of another size is copied
    /// into a new one of the right size (as many flows as fit).
    pub fn open_or_create(path: &Path, capacity: u32) -> Result<Self, JournalError> {
        let err = |action, source| JournalError::Map {
            path: path.display().to_string(),
            action,
            source,
        };
        let mut old = match MapHandle::from_pinned_path(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => None,
            Err(e) => return Err(err("opening", e)),
        };
        let same_layout = |m: &MapHandle| {
            m.key_size() as usize == KEY_SIZE && m.value_size() as usize == VALUE_SIZE
        };
        if let Some(map) = old.take_if(|m| same_layout(m) && m.max_entries() == capacity) {
            return Ok(Self {
                map,
                failed: Arc::default(),
            });
        }
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
            // Memory only for flows that exist, not for the whole bound.
            map_flags: libbpf_sys::BPF_F_NO_PREALLOC,
            ..Default::default()
        };
        let mut map = MapHandle::create(
            MapType::Hash,
            Some(MAP_NAME),
            KEY_SIZE as u32,
            VALUE_SIZE as u32,
            capacity.max(1),
            &opts,
        )
        .map_err(|e| err("creating", e))?;
        if let Some(old) = old {
            // Sizes changed between runs: carry over what fits, then put
            // the new map where the old one was pinned.
            if same_layout(&old) {
                for k in old.keys() {
                    if let Ok(Some(v)) = old.lookup(&k, MapFlags::ANY) {
                        let _ = map.update(&k, &v, MapFlags::ANY);
                    }
                }
            }
            let _ = std::fs::remove_file(path);
        }
        map.pin(path).map_err(|e| err("pinning", e))?;
        Ok(Self {
            map,
            failed: Arc::default(),
        })
    }

    /// Puts every journalled flow back into `ct` as seen at `now`, charged
    /// to the owner `owner_of` names for it; returns how many. Flows that
    /// do not fit, or do not decode, are dropped from the journal too.
    pub fn restore_into(
        &self,
        ct: &Conntrack,
        owner_of: impl Fn(&Tuple, bool) -> u16,
        now: u64,
    ) -> usize {
        let mut restored = 0;
        let mut stale = Vec::new();
        for k in self.map.keys() {
            let v = self.map.lookup(&k, MapFlags::ANY).ok().flatten();
            match (decode_key(&k), v.as_deref().and_then(decode_value)) {
                (Some(t), Some((first, state)))
                    if ct.restore(&t, first, state, owner_of(&t, first), now) =>
                {
                    restored += 1
                }
                _ => stale.push(k),
            }
        }
        for k in stale {
            let _ = self.map.delete(&k);
        }
        restored
    }
}

impl Journal for CtJournal {
    fn record(&self, key: &Tuple, opened_by_first: bool, state: State) {
        let k = encode_key(key);
        let v = encode_value(opened_by_first, state);
        if self.map.update(&k, &v, MapFlags::ANY).is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn forget(&self, key: &Tuple) {
        // Absent already is fine: the table and the map agree.
        let _ = self.map.delete(&encode_key(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        for (a, b) in [
            ("198.18.10.2", "198.18.10.3"),
            ("2001:db8::2", "2001:db8::3"),
        ] {
            let t = Tuple {
                src: a.parse().unwrap(),
                dst: b.parse().unwrap(),
                sport: 40000,
                dport: 8080,
                proto: 6,
            };
            assert_eq!(decode_key(&encode_key(&t)), Some(t));
        }
        for s in [State::SynSent, State::Established, State::Closing] {
            assert_eq!(decode_value(&encode_value(true, s)), Some((true, s)));
        }
        assert_eq!(decode_value(&[0, 9, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_key(&[0u8; KEY_SIZE]), None);
    }
}
