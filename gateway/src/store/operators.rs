//! The store's operator side, on both engines: the device rows the outbox writes with each
//! device's status, and the views the HTTP API and dashboard show (a device list with filters in
//! natural order, one device in full, one request, dead letters, the backlog behind the stall
//! gauges). Reads only, but for [`Store::devices_seen`].

use super::deadletters::DeadLetterRow;
use super::devices::{DeviceDetail, DeviceNow, DeviceRow, Filter, Seen};
use super::requests::{Backlog, RequestDetail};
use super::{Engine, Store, StoreError};

impl Store {
    /// Writes these devices' rows (what this gateway saw of each: its wake, last seen, last
    /// error) and returns each one's status to publish as the store now has it (merged with
    /// other gateways' on a shared store; held replies and, where it can, pending requests
    /// counted), in `seen`'s order, in one round trip. `None` for a device whose status another
    /// gateway published within the last second (shared store only): publish it later.
    pub async fn devices_seen(
        &self,
        seen: Vec<Seen>,
    ) -> Result<Vec<Option<DeviceNow>>, StoreError> {
        dispatch!(self.devices_seen(seen).await)
    }

    /// A page of the devices that pass `filter`, in natural id order, and how many pass.
    pub async fn devices_page(
        &self,
        filter: Filter,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeviceRow>), StoreError> {
        dispatch!(self.devices_page(filter, offset, limit).await)
    }

    /// One device, if known: its row and at most `recent` of its newest requests, held replies
    /// and newest dead letters.
    pub async fn device(
        &self,
        id: String,
        recent: usize,
    ) -> Result<Option<DeviceDetail>, StoreError> {
        dispatch!(self.device(id, recent).await)
    }

    /// One request in full (id as UUID text), if stored.
    pub async fn request(&self, id: String) -> Result<Option<RequestDetail>, StoreError> {
        dispatch!(self.request(id).await)
    }

    /// A page of dead letters (of one device, or all), newest first, and how many there are.
    pub async fn dead_letters_page(
        &self,
        device: Option<String>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetterRow>), StoreError> {
        dispatch!(self.dead_letters_page(device, offset, limit).await)
    }

    /// Queued and held counts and the two stall ages (oldest queued, oldest held).
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        dispatch!(self.backlog().await)
    }
}
