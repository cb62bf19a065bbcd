//! Per-client-id connect serialisation and the connection counters (the login counters are
//! [`super::login::LoginStats`], rendered with them).
//!
//! Fed by the session (one [`IdGates::lock`] per CONNECT) and the accept loop; feeds the lead's
//! status and metrics through [`FrontDoorStats`].
//!
//! **Invariant:** for one client id, at most one upstream connection is between CONNECT and
//! CONNACK at a time, and none is dropped before its CONNACK arrived. rumqttd leaves a dead
//! Will-channel sender behind when a connection dies in that window (for instance when the
//! client closed before the CONNACK could be written), and the next CONNECT of the same id then
//! panics while holding the listener's Will-handler mutex, poisoning the listener for everyone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Counters for status and metrics. All monotonic except `open`.
#[derive(Debug, Default)]
pub struct FrontDoorStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections that got through CONNACK.
    pub connected: AtomicU64,
    /// Connections refused at accept because `limits.max_connections` were open.
    pub over_limit: AtomicU64,
    /// CONNECTs refused: bad client id, bad or missing credentials, unsupported protocol.
    pub refused: AtomicU64,
    /// Connections closed for a malformed packet, a protocol violation or a size limit.
    pub violations: AtomicU64,
    /// Connections that sent no CONNECT within `limits.connect_timeout_ms`.
    pub connect_timeouts: AtomicU64,
    /// PUBLISHes denied by the ACL.
    pub denied_publish: AtomicU64,
    /// Subscription filters denied by the ACL.
    pub denied_subscribe: AtomicU64,
    /// CONNECTs refused for a Will outside the device's presence topic.
    pub denied_will: AtomicU64,
    /// Device connections closed because a newer one of the same client id took over.
    pub takeovers: AtomicU64,
    /// Broker messages for a device whose session could not take them (not reading): the
    /// outbox redelivers replies on the next wake.
    pub deliveries_dropped: AtomicU64,
    /// Authentication failures by reason, throttled and rate-limited logins and connections.
    pub login: Arc<super::login::LoginStats>,
    /// Messages not sent because they were over the device's Maximum Packet Size.
    pub too_large: AtomicU64,
}

impl FrontDoorStats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP roost_frontdoor_connections Device connections open now."
        );
        let _ = writeln!(out, "# TYPE roost_frontdoor_connections gauge");
        let _ = writeln!(out, "roost_frontdoor_connections {}", load(&self.open));
        let _ = writeln!(
            out,
            "# HELP roost_frontdoor_connections_total Device connections by outcome."
        );
        let _ = writeln!(out, "# TYPE roost_frontdoor_connections_total counter");
        for (outcome, counter) in [
            ("accepted", &self.accepted),
            ("connected", &self.connected),
            ("over_limit", &self.over_limit),
            ("refused", &self.refused),
            ("violation", &self.violations),
            ("connect_timeout", &self.connect_timeouts),
            ("taken_over", &self.takeovers),
        ] {
            let _ = writeln!(
                out,
                "roost_frontdoor_connections_total{{outcome=\"{outcome}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP roost_frontdoor_denials_total ACL denials by kind."
        );
        let _ = writeln!(out, "# TYPE roost_frontdoor_denials_total counter");
        for (kind, counter) in [
            ("publish", &self.denied_publish),
            ("subscribe", &self.denied_subscribe),
            ("will", &self.denied_will),
        ] {
            let _ = writeln!(
                out,
                "roost_frontdoor_denials_total{{kind=\"{kind}\"}} {}",
                load(counter)
            );
        }
        self.render_deliveries(out);
        self.login.render(out);
    }

    /// Appends the dropped-deliveries counter in Prometheus text format.
    pub fn render_deliveries(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP roost_frontdoor_deliveries_dropped_total Broker messages a device session could not take."
        );
        let _ = writeln!(
            out,
            "# TYPE roost_frontdoor_deliveries_dropped_total counter"
        );
        let _ = writeln!(
            out,
            "roost_frontdoor_deliveries_dropped_total {}",
            self.deliveries_dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP roost_frontdoor_too_large_total Messages not sent for being over the device's Maximum Packet Size."
        );
        let _ = writeln!(out, "# TYPE roost_frontdoor_too_large_total counter");
        let _ = writeln!(
            out,
            "roost_frontdoor_too_large_total {}",
            self.too_large.load(Ordering::Relaxed)
        );
    }
}

/// One async lock per client id that is connecting right now.
#[derive(Debug, Default)]
pub struct IdGates {
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a client id's upstream connection is between CONNECT and CONNACK.
#[derive(Debug)]
pub struct IdGate<'a> {
    gates: &'a IdGates,
    id: String,
    gate: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl IdGates {
    /// Waits until no other connection of `id` is between CONNECT and CONNACK.
    pub async fn lock(&self, id: &str) -> IdGate<'_> {
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
            gates.entry(id.to_owned()).or_default().clone()
        };
        let guard = gate.clone().lock_owned().await;
        IdGate {
            gates: self,
            id: id.to_owned(),
            gate,
            guard: Some(guard),
        }
    }

    /// Ids with a gate in the table (for tests: the table must not grow without bound).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.gates.lock().map(|g| g.len()).unwrap_or(0)
    }

    /// Whether no id is connecting.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for IdGate<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut gates = self.gates.gates.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the table's: nobody else is waiting, so the entry can go.
        if Arc::strong_count(&self.gate) == 2 {
            gates.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_connect_per_id_at_a_time_and_the_table_empties() {
        let gates = Arc::new(IdGates::default());
        let first = gates.lock("d1").await;
        let other = gates.lock("d2").await;
        // The second lock of d1 cannot be had while the first is held; d2 is independent.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), gates.lock("d1"))
                .await
                .is_err()
        );
        drop(first);
        let second = gates.lock("d1").await;
        drop(second);
        drop(other);
        assert!(gates.is_empty());
    }
}
