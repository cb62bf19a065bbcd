//! Devices as the store knows them: every device with requests or telemetry, for the operator
//! HTTP API and CLI (the retained `devices/+/status` view cannot list a whole fleet).

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::devices::DeviceRow;

const DEVICE_ROWS: &str = "
    WITH ids AS (SELECT DISTINCT device FROM requests UNION SELECT DISTINCT device FROM telemetry)
    SELECT ids.device,
           (SELECT COUNT(*) FROM requests r WHERE r.device = ids.device AND r.state = 'queued'),
           (SELECT COUNT(*) FROM requests r WHERE r.device = ids.device AND r.delivery = 'held'),
           (SELECT COUNT(*) FROM requests r WHERE r.device = ids.device),
           (SELECT MAX(received_ms) FROM requests r WHERE r.device = ids.device)
    FROM ids";

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        id: row.get(0)?,
        queued: row.get(1)?,
        held: row.get(2)?,
        requests: row.get(3)?,
        last_request_ms: row.get(4)?,
    })
}

/// A page of devices in id order.
pub fn list(conn: &Connection, offset: usize, limit: usize) -> rusqlite::Result<Vec<DeviceRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{DEVICE_ROWS} ORDER BY ids.device LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = stmt.query_map(params![limit as i64, offset as i64], row)?;
    rows.collect()
}

/// How many devices there are.
pub fn count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COUNT(*) FROM (SELECT device FROM requests UNION SELECT device FROM telemetry)",
        [],
        |row| row.get(0),
    )
}

/// One device, if the store knows it.
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<DeviceRow>> {
    conn.prepare_cached(&format!("{DEVICE_ROWS} WHERE ids.device = ?1"))?
        .query_row(params![id], row)
        .optional()
}
