//! A tiny filesystem for tests of a full disk: a tmpfs of a few MiB mounted on a temp dir
//! (the tests run as root, as CI does; mounting needs CAP_SYS_ADMIN), filled with a filler file
//! until the kernel says `ENOSPC`, emptied again by deleting it. Unmounted on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs.
pub struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    /// Mounts a tmpfs of `bytes`; panics saying why when it cannot (not root).
    pub fn mount(bytes: u64) -> TinyFs {
        let dir = tempfile::Builder::new()
            .prefix("roost-tinyfs-")
            .tempdir()
            .expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a {bytes}-byte tmpfs to fill a disk for real, which needs root \
             (CAP_SYS_ADMIN), as CI runs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyFs { dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem, then gives `slack` bytes back (so the disk fills under load,
    /// while requests are being accepted and run); returns the filler's path.
    pub fn fill_leaving(&self, slack: u64) -> PathBuf {
        let path = self.fill();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open filler");
        let len = file.metadata().expect("filler size").len();
        file.set_len(len.saturating_sub(slack))
            .expect("shrink filler");
        path
    }

    /// Writes a filler file until the filesystem is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0x5a_u8; 4096];
        // Bounded: a tmpfs of a few MiB fills long before this.
        for _ in 0..(1 << 20) {
            if file
                .write_all(&chunk)
                .and_then(|()| file.sync_data())
                .is_err()
            {
                return path;
            }
        }
        panic!("the tiny filesystem did not fill");
    }

    /// Marks `file` immutable (`chattr +i`): even root's writes through open descriptors fail.
    /// Panics unless the filesystem enforces it (ext4 and xfs do; tmpfs ignores the flag).
    pub fn freeze(file: &Path) {
        let status = Command::new("chattr")
            .arg("+i")
            .arg(file)
            .status()
            .expect("run chattr");
        assert!(status.success(), "chattr +i {}", file.display());
        let writable = std::fs::OpenOptions::new().append(true).open(file).is_ok();
        assert!(
            !writable,
            "{} stays writable after chattr +i: its filesystem ignores the immutable flag",
            file.display()
        );
    }

    /// Undoes [`TinyFs::freeze`].
    pub fn thaw(file: &Path) {
        let status = Command::new("chattr")
            .arg("-i")
            .arg(file)
            .status()
            .expect("run chattr");
        assert!(status.success(), "chattr -i {}", file.display());
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        // Lazy: a gateway killed a moment ago may still hold files open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
