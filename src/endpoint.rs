//! Endpoints: a network namespace joined to the host by a veth pair.
//! (Being written.)
