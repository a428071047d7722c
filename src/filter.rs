//! Egress filter core (being written).
