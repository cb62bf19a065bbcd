//! The store: SQLite, and the only place SQL exists.

pub mod credentials;
