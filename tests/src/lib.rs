//! The end-to-end harness: starts the real gateway process on free loopback ports with a temp
//! data dir, and talks to it with real MQTT 5 clients.
