//! Analytics: the ops as pure functions over slices ([`ops`]), and the machinery that runs them.

pub mod ops;
