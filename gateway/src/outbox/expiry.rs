//! Reply TTL: held replies whose TTL passed unacknowledged become dead letters.
