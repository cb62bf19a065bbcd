//! The outbox's once-a-second work: dead-letter held replies whose TTL passed, notice devices
//! whose listen window ran out, publish due device status. (What the dedupe window and the
//! telemetry retention no longer keep is pruned by a task of its own: `store::retention`.)

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Outbox;
use crate::store::now_ms;
use crate::wire::topics;

/// Held replies expired per tick at most (the rest wait for the next tick).
const EXPIRE_PER_TICK: usize = 1000;

impl Outbox {
    /// `limits.max_store_bytes`: evicts the oldest finished records, counted and logged.
    async fn keep_budget(&self, now: i64) {
        match self.store.enforce_budget().await {
            Ok(Some(done)) if done.evicted > 0 => {
                self.metrics
                    .evicted_total
                    .fetch_add(done.evicted as u64, Relaxed);
                let window_s = done.newest_evicted_ms.map(|ms| (now - ms).max(0) / 1000);
                tracing::warn!(
                    evicted = done.evicted,
                    used_bytes = done.used,
                    dedupe_window_now_s = window_s,
                    "store over limits.max_store_bytes: evicted the oldest finished requests"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "cannot keep the store within its budget"),
        }
    }

    pub(super) async fn housekeeping(&mut self) {
        let now = now_ms();
        match self.store.expire_held(now, EXPIRE_PER_TICK).await {
            Ok(letters) => {
                let topic = topics::deadletter(&self.gateway_id);
                for letter in letters {
                    self.metrics.dead_total.fetch_add(1, Relaxed);
                    tracing::info!(request_id = ?letter.request_id, device_id = ?letter.device, "dead_lettered");
                    if let Some(device) = letter
                        .device
                        .as_deref()
                        .and_then(crate::wire::DeviceId::parse)
                    {
                        self.board.touch(&device);
                    }
                    self.replies
                        .announce(
                            topic.clone(),
                            crate::status::deadletter_json(&letter),
                            false,
                        )
                        .await;
                }
            }
            Err(error) => tracing::error!(%error, "cannot expire held replies"),
        }
        self.keep_budget(now).await;
        for device in self.presence.sweep(Instant::now()) {
            self.board.touch(&device);
        }
        self.metrics
            .devices_known
            .store(self.presence.known_count(), Relaxed);
        self.metrics
            .devices_awake
            .store(self.presence.awake_count(), Relaxed);
        self.publish_device_status().await;
    }
}
