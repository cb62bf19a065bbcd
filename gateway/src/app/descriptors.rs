//! Open files at start: the soft `RLIMIT_NOFILE` is raised to the hard limit (many systems start
//! services at a soft 1024, far below `limits.max_connections`), and a hard limit below what the
//! configured connections need is a warning naming `limits.max_connections`.
//!
//! Fed by `app::run` once, before anything binds. An exhausted limit at run time stays handled
//! where it happens: the front door logs the accept error and retries, and devices beyond it
//! wait.

use rustix::process::{getrlimit, setrlimit, Resource};

/// Descriptors the gateway holds besides device connections: database files, listeners,
/// rumqttd's internal links, the service link, the HTTP API, log files.
pub const BASELINE: u64 = 64;

/// What the limit became, and what the config needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now (`None`: unlimited).
    pub soft: Option<u64>,
    /// What `limits.max_connections` needs.
    pub needed: u64,
}

impl OpenFiles {
    /// Whether the limit is below what the configured connections need.
    pub fn too_low(&self) -> bool {
        self.soft.is_some_and(|soft| soft < self.needed)
    }
}

/// Raises the soft open-files limit to the hard one and warns when it is still too low for
/// `max_connections` (one descriptor per device connection, plus [`BASELINE`]).
pub fn raise(max_connections: usize) -> OpenFiles {
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                soft = limit.maximum;
                tracing::info!(from = ?limit.current, to = ?limit.maximum, "raised the open-files limit");
            }
            Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
        }
    }
    let files = OpenFiles {
        soft,
        needed: max_connections as u64 + BASELINE,
    };
    if files.too_low() {
        tracing::warn!(
            open_files = ?files.soft,
            needed = files.needed,
            "the open-files limit (RLIMIT_NOFILE, hard) is below what limits.max_connections = {max_connections} needs: \
             devices beyond it wait at accept; raise LimitNOFILE= in the systemd unit or lower limits.max_connections"
        );
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let files = raise(10);
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
        assert_eq!(files.soft, limit.maximum);
        assert_eq!(files.needed, 10 + BASELINE);
    }

    #[test]
    fn too_low_only_below_the_need() {
        let files = |soft| OpenFiles { soft, needed: 100 };
        assert!(files(Some(99)).too_low());
        assert!(!files(Some(100)).too_low());
        assert!(!files(None).too_low());
    }
}
