//! The operators' typed operations on PostgreSQL: what the outbox records of each device, and
//! the views the HTTP API ([`PgStore`], a pooled connection) and the CLI ([`PgConsole`], its own
//! runtime) show. The statements are in [`super::views`] and [`super::devices`].

use super::console::PgConsole;
use super::pool::Conn;
use super::{devices, views, PgStore};
use crate::store::deadletters::DeadLetterRow;
use crate::store::devices::{DeviceDetail, DeviceNow, DeviceRow, Filter, Seen};
use crate::store::requests::{Backlog, CancelReply, OperatorCancel, RequestDetail};
use crate::store::StoreError;

impl PgStore {
    /// See [`crate::store::Store::devices_seen`].
    pub async fn devices_seen(
        &self,
        seen: Vec<Seen>,
    ) -> Result<Vec<Option<DeviceNow>>, StoreError> {
        let shared = self.shared.load(std::sync::atomic::Ordering::Relaxed);
        self.pool
            .run(async |conn| devices::upsert(conn, &self.me, &seen, shared).await)
            .await
    }

    /// See [`crate::store::Store::devices_page`].
    pub async fn devices_page(
        &self,
        filter: Filter,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeviceRow>), StoreError> {
        self.pool
            .run(async |conn| devices::page(conn, &filter, offset, limit).await)
            .await
    }

    /// See [`crate::store::Store::device`].
    pub async fn device(
        &self,
        id: String,
        recent: usize,
    ) -> Result<Option<DeviceDetail>, StoreError> {
        self.pool
            .run(async |conn| views::device(conn, &id, recent).await)
            .await
    }

    /// See [`crate::store::Store::request`].
    pub async fn request(&self, id: String) -> Result<Option<RequestDetail>, StoreError> {
        self.pool
            .run(async |conn| views::request(conn, &id).await)
            .await
    }

    /// See [`crate::store::Store::dead_letters_page`].
    pub async fn dead_letters_page(
        &self,
        device: Option<String>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetterRow>), StoreError> {
        self.pool
            .run(async |conn| {
                views::dead_letters_page(conn, device.as_deref(), offset, limit).await
            })
            .await
    }

    /// See [`crate::store::Store::backlog`].
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.pool.run(async |conn| views::backlog(conn).await).await
    }
}

impl PgConsole {
    /// `query` on the console's connection, bounded as the gateway's own work on the pool is
    /// ([`super::pool::Pool::run`]): a command against a server that stopped answering fails
    /// instead of hanging.
    pub(super) fn read<T>(
        &self,
        query: impl AsyncFnOnce(&Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.runtime.block_on(self.pool.run(query))
    }

    /// See [`crate::store::Console::devices_page`].
    pub fn devices_page(
        &self,
        filter: &Filter,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeviceRow>), StoreError> {
        self.read(async |conn| devices::page(conn, filter, offset, limit).await)
    }

    /// See [`crate::store::Console::device`].
    pub fn device(&self, id: &str, recent: usize) -> Result<Option<DeviceDetail>, StoreError> {
        self.read(async |conn| views::device(conn, id, recent).await)
    }

    /// See [`crate::store::Console::request`].
    pub fn request(&self, id: &str) -> Result<Option<RequestDetail>, StoreError> {
        self.read(async |conn| views::request(conn, id).await)
    }

    /// See [`crate::store::Console::dead_letters_page`].
    pub fn dead_letters_page(
        &self,
        device: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetterRow>), StoreError> {
        self.read(async |conn| views::dead_letters_page(conn, device, offset, limit).await)
    }

    /// See [`crate::store::Console::backlog`].
    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        self.read(async |conn| views::backlog(conn).await)
    }

    /// See [`crate::store::Console::cancel_request`].
    pub fn cancel_request(
        &mut self,
        id: &str,
        now_ms: i64,
        expires_ms: i64,
        make_reply: CancelReply,
    ) -> Result<OperatorCancel, StoreError> {
        self.read(async |conn| {
            conn.client.batch_execute("BEGIN").await?;
            match views::cancel_by_id(conn, id, now_ms, expires_ms, make_reply).await {
                Ok(outcome) => {
                    conn.client.batch_execute("COMMIT").await?;
                    Ok(outcome)
                }
                Err(error) => {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                    Err(error)
                }
            }
        })
    }
}
