//! The operators' typed operations on SQLite: what the outbox records of each device, and the
//! views the HTTP API ([`SqliteStore`], read-only connections off the runtime) and the CLI
//! ([`SqliteConsole`]) show. The queries are in [`super::views`], [`super::devices`] and
//! [`super::deadletters`].

use rusqlite::TransactionBehavior;

use super::api::SqliteConsole;
use super::{deadletters, devices, requests, views, SqliteStore};
use crate::store::deadletters::DeadLetterRow;
use crate::store::devices::{DeviceDetail, DeviceNow, DeviceRow, Filter, Seen};
use crate::store::requests::{Backlog, CancelReply, OperatorCancel, RequestDetail};
use crate::store::StoreError;

impl SqliteStore {
    /// See [`crate::store::Store::devices_seen`].
    /// One gateway writes a SQLite store: its view is the device's.
    pub async fn devices_seen(
        &self,
        seen: Vec<Seen>,
    ) -> Result<Vec<Option<DeviceNow>>, StoreError> {
        let now_ms = crate::store::now_ms();
        self.call(move |txn| {
            seen.iter()
                .map(|row| {
                    devices::upsert(txn, row, now_ms)?;
                    let held = requests::held_counts(txn, Some(&row.id))?;
                    Ok(Some(row.alone(now_ms, held)))
                })
                .collect()
        })
        .await
    }

    /// See [`crate::store::Store::devices_page`].
    pub async fn devices_page(
        &self,
        filter: Filter,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeviceRow>), StoreError> {
        self.read(move |conn| devices::page(conn, &filter, offset, limit))
            .await
    }

    /// See [`crate::store::Store::device`].
    pub async fn device(
        &self,
        id: String,
        recent: usize,
    ) -> Result<Option<DeviceDetail>, StoreError> {
        self.read(move |conn| views::device(conn, &id, recent))
            .await
    }

    /// See [`crate::store::Store::request`].
    pub async fn request(&self, id: String) -> Result<Option<RequestDetail>, StoreError> {
        self.read(move |conn| views::request(conn, &id)).await
    }

    /// See [`crate::store::Store::dead_letters_page`].
    pub async fn dead_letters_page(
        &self,
        device: Option<String>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetterRow>), StoreError> {
        self.read(move |conn| deadletters::page(conn, device.as_deref(), offset, limit))
            .await
    }

    /// See [`crate::store::Store::backlog`].
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.read(views::backlog).await
    }
}

impl SqliteConsole {
    /// See [`crate::store::Console::devices_page`].
    pub fn devices_page(
        &self,
        filter: &Filter,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeviceRow>), StoreError> {
        Ok(devices::page(&self.conn, filter, offset, limit)?)
    }

    /// See [`crate::store::Console::device`].
    pub fn device(&self, id: &str, recent: usize) -> Result<Option<DeviceDetail>, StoreError> {
        Ok(views::device(&self.conn, id, recent)?)
    }

    /// See [`crate::store::Console::request`].
    pub fn request(&self, id: &str) -> Result<Option<RequestDetail>, StoreError> {
        Ok(views::request(&self.conn, id)?)
    }

    /// See [`crate::store::Console::dead_letters_page`].
    pub fn dead_letters_page(
        &self,
        device: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetterRow>), StoreError> {
        Ok(deadletters::page(&self.conn, device, offset, limit)?)
    }

    /// See [`crate::store::Console::backlog`].
    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        Ok(views::backlog(&self.conn)?)
    }

    /// See [`crate::store::Console::cancel_request`].
    pub fn cancel_request(
        &mut self,
        id: &str,
        now_ms: i64,
        expires_ms: i64,
        make_reply: CancelReply,
    ) -> Result<OperatorCancel, StoreError> {
        // IMMEDIATE: take the write lock first (waiting on busy_timeout), so the read inside
        // cannot be overtaken by the gateway's own commits and fail to upgrade ('database is
        // locked', seen with a deferred transaction).
        let txn = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcome = views::cancel_by_id(&txn, id, now_ms, expires_ms, make_reply)?;
        txn.commit()?;
        Ok(outcome)
    }
}
