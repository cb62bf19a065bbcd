//! The disk reserve: `data_dir/roost.reserve`, [`RESERVE_BYTES`] of zeros written (not a sparse
//! file) when the store opens, so a full disk still has room for accepted work to finish.
//!
//! Released (deleted) by [`crate::store::health`] when the store first reports the disk full:
//! new requests are refused (`503`) from then on, and the space goes to what was already
//! accepted (final replies, acks, dead letters). Re-created by the probe before the store
//! counts as writable again, with [`MARGIN_BYTES`] free beyond it: recovery needs the reserve
//! back plus a margin, so the gateway does not flap between serving and degraded.

use std::io::Write;
use std::path::Path;

/// The reserve's file name in `data_dir`.
pub const RESERVE_FILE: &str = "roost.reserve";
/// How much is reserved.
pub const RESERVE_BYTES: u64 = 8 << 20;
/// Free space beyond the reserve that recovery asks for.
pub const MARGIN_BYTES: u64 = 1 << 20;

const CHUNK: usize = 64 << 10;

/// Writes `bytes` of zeros to `path` and syncs them; removes the file again if the disk cannot
/// hold it.
fn write_zeros(path: &Path, bytes: u64) -> std::io::Result<()> {
    let written = (|| {
        let mut file = std::fs::File::create(path)?;
        let chunk = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Whether the whole reserve is in place.
pub fn present(data_dir: &Path) -> bool {
    std::fs::metadata(data_dir.join(RESERVE_FILE)).is_ok_and(|m| m.len() >= RESERVE_BYTES)
}

/// Makes sure the reserve is in place in `data_dir` (no-op when it already is).
pub fn ensure(data_dir: &Path) -> std::io::Result<()> {
    if present(data_dir) {
        return Ok(());
    }
    write_zeros(&data_dir.join(RESERVE_FILE), RESERVE_BYTES)
}

/// Checks that [`MARGIN_BYTES`] more can be written beside the reserve (then frees them).
pub fn margin(data_dir: &Path) -> std::io::Result<()> {
    let path = data_dir.join("roost.margin");
    let written = write_zeros(&path, MARGIN_BYTES);
    let _ = std::fs::remove_file(&path);
    written
}

/// Deletes the reserve; `true` when there was one.
pub fn release(data_dir: &Path) -> bool {
    std::fs::remove_file(data_dir.join(RESERVE_FILE)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_released_and_written_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        ensure(dir.path()).expect("reserve");
        let path = dir.path().join(RESERVE_FILE);
        assert_eq!(
            std::fs::metadata(&path).expect("reserve").len(),
            RESERVE_BYTES
        );
        margin(dir.path()).expect("room for the margin");
        assert!(!dir.path().join("roost.margin").exists());
        assert!(release(dir.path()));
        assert!(!release(dir.path()), "released once");
        ensure(dir.path()).expect("reserve again");
        assert!(path.exists());
    }
}
