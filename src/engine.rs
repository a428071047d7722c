//! The assembled policy core: a config's inventory, its published ipcache
//! and its compiled egress tables, with the one verdict query every command
//! uses. No I/O beyond reading the config.

use std::net::IpAddr;

use crate::config::{Config, EndpointConfig};
use crate::identity::{LocalAllocator, NumericIdentity};
use crate::inventory::Inventory;
use crate::ipcache::{IpCache, IpCacheReader};
use crate::policy::compile::{compile, CompiledPolicy};
use crate::policy::Decision;

/// Why an engine could not be built or asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Alloc(#[from] crate::identity::AllocError),
    #[error("no endpoint named `{name}` (known: {known})")]
    UnknownEndpoint { name: String, known: String },
}

/// The result of one verdict query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    pub src_identity: NumericIdentity,
    pub dst_identity: NumericIdentity,
    pub decision: Decision,
}

pub struct Engine {
    pub config: Config,
    pub inventory: Inventory,
    pub compiled: CompiledPolicy,
    pub ipcache: IpCache,
    reader: IpCacheReader,
}

impl Engine {
    pub fn new(config: Config) -> Result<Self, EngineError> {
        let inventory = Inventory::build(&config, &mut LocalAllocator::new())?;
        let compiled = compile(&config.policies, &inventory);
        let ipcache = inventory.ipcache();
        let reader = ipcache.reader();
        Ok(Self {
            config,
            inventory,
            compiled,
            ipcache,
            reader,
        })
    }

    pub fn endpoint(&self, name: &str) -> Result<(usize, &EndpointConfig), EngineError> {
        self.config
            .endpoints
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == name)
            .ok_or_else(|| EngineError::UnknownEndpoint {
                name: name.to_string(),
                known: self
                    .config
                    .endpoints
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Identity of a destination address, as the datapath sees it.
    pub fn destination(&self, dst: IpAddr) -> NumericIdentity {
        self.reader.lookup_or_world(dst)
    }

    /// The egress verdict for endpoint number `src` sending to `dst` with IP
    /// protocol `ip_proto` and `port` (destination port or ICMP type).
    pub fn check(&self, src: usize, dst: IpAddr, ip_proto: u8, port: u16) -> Check {
        let src_identity = self.inventory.endpoint_identities[src];
        let dst_identity = self.destination(dst);
        Check {
            src_identity,
            dst_identity,
            decision: self
                .compiled
                .decide(src_identity, dst_identity, ip_proto, port),
        }
    }
}
