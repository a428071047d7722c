//! The assembled policy core: a world's inventory, its published ipcache
//! and its compiled egress tables, with the one verdict query every command
//! uses. No I/O.

use std::net::IpAddr;

use crate::identity::{LocalAllocator, NumericIdentity};
use crate::inventory::Inventory;
use crate::ipcache::{IpCache, IpCacheReader};
use crate::policy::compile::{compile, CompiledPolicy};
use crate::policy::Decision;
use crate::world::{Endpoint, World};

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
    pub world: World,
    pub inventory: Inventory,
    pub compiled: CompiledPolicy,
    pub ipcache: IpCache,
    reader: IpCacheReader,
}

impl Engine {
    /// Allocates the world's identities and compiles its policies.
    pub fn new(world: &World) -> Result<Self, EngineError> {
        let inventory = Inventory::build(world, &mut LocalAllocator::new())?;
        let compiled = compile(&world.policies, &inventory);
        let ipcache = inventory.ipcache();
        let reader = ipcache.reader();
        Ok(Self {
            world: world.clone(),
            inventory,
            compiled,
            ipcache,
            reader,
        })
    }

    pub fn endpoint(&self, name: &str) -> Result<(usize, &Endpoint), EngineError> {
        self.world
            .endpoint(name)
            .ok_or_else(|| EngineError::UnknownEndpoint {
                name: name.to_string(),
                known: self
                    .world
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
