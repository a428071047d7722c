//! Every endpoint plus the internal pair as one: built all or nothing in
//! the calling thread's namespace, and torn down together (endpoints in
//! reverse order, then the pair) on [`Topology::teardown`] or drop.

use std::sync::Arc;

use super::create::setup_at;
use super::spec::validate_all;
use super::{
    keep_first, Endpoint, EndpointError, EndpointSpec, HomeNetns, InternalPair, Owner, Topology,
};

impl Topology {
    /// Makes the internal pair with `workers` queues, then every endpoint in
    /// order. All or nothing: on any error, whatever was made is torn down
    /// again before the error is returned.
    pub fn build(specs: Vec<EndpointSpec>, workers: u32) -> Result<Self, EndpointError> {
        validate_all(&specs)?;
        let home = Arc::new(HomeNetns::current_for(Owner::InternalPair)?);
        let internal = InternalPair::create_at(workers, home.clone())?;
        let mut topology = Topology {
            endpoints: Vec::with_capacity(specs.len()),
            internal,
            torn_down: false,
        };
        for spec in specs {
            match setup_at(spec, home.clone()) {
                Ok(ep) => topology.endpoints.push(ep),
                Err(e) => {
                    if let Err(undo) = topology.teardown() {
                        eprintln!("xpf: while undoing a failed build: {undo}");
                    }
                    return Err(e);
                }
            }
        }
        Ok(topology)
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.spec.name == name)
    }

    /// Tears everything down now, endpoints in reverse order and then the
    /// internal pair; returns the first error (the rest go to stderr).
    pub fn teardown(mut self) -> Result<(), EndpointError> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Result<(), EndpointError> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Ok(());
        }
        let mut first = None;
        for ep in self.endpoints.drain(..).rev() {
            keep_first(&mut first, ep.teardown());
        }
        keep_first(&mut first, self.internal.remove());
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            eprintln!("xpf: {e}");
        }
    }
}
