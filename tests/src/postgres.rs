//! A throwaway PostgreSQL cluster for tests: Debian's server, initialised and started as user
//! `postgres` (the server refuses to run as root) in a temp dir that user owns, listening on a
//! free loopback port; stopped and removed on drop. Each test makes its own database in it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A running cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its loopback port.
    pub port: u16,
}

fn newest_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (tests/run.sh installs Debian's postgresql)")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with initdb")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl PgCluster {
    /// Initialises and starts a cluster; panics with the server's log if it cannot.
    pub fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("roost-pg-")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success(), "chown the cluster dir to postgres");
        }
        let cluster = PgCluster {
            bin: newest_bin_dir(),
            port: free_port(),
            dir,
        };
        let data = cluster.data_dir();
        let out = cluster.as_postgres(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {}", text(&out));
        cluster.start_server();
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// How many times the server has logged `deadlock detected` (written as it happens, unlike
    /// `pg_stat_database.deadlocks`, which a backend reports up to seconds later).
    pub fn deadlocks_logged(&self) -> usize {
        std::fs::read_to_string(self.log_file())
            .unwrap_or_default()
            .matches("deadlock detected")
            .count()
    }

    fn as_postgres(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run a PostgreSQL tool")
    }

    /// Starts the server (again, after [`PgCluster::stop`]); waits until it accepts.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=200",
            self.port,
            path(self.dir.path())
        );
        let (data, log) = (self.data_dir(), self.log_file());
        let out = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            text(&out),
            std::fs::read_to_string(self.log_file()).unwrap_or_default()
        );
    }

    /// Stops the server at once (`-m immediate`: like a crash, no checkpoint).
    pub fn stop(&self) {
        let data = self.data_dir();
        let out = self.as_postgres(
            "pg_ctl",
            &["-D", path(&data), "-m", "immediate", "-w", "stop"],
        );
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out));
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("CREATE DATABASE \"{name}\""),
            ])
            .output()
            .expect("psql");
        assert!(out.status.success(), "create database: {}", text(&out));
        self.url(name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs one SQL statement in database `db` and returns psql's unaligned output.
    pub fn query(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `sql` (say, a `SELECT ... FOR UPDATE`) in an open transaction in database `db`,
    /// which holds its locks until the returned [`Open`] is committed or dropped.
    pub fn hold(&self, db: &str, sql: &str) -> Open {
        let port = self.port.to_string();
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("psql");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "BEGIN;\n{sql};\n\\echo held").expect("to psql");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line == "held" => break,
                Some(Ok(_)) => {}
                other => panic!("psql ended before holding {sql}: {other:?}"),
            }
        }
        Open {
            child,
            stdin: Some(stdin),
        }
    }
}

/// A transaction left open by [`PgCluster::hold`].
pub struct Open {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Open {
    /// Commits it, releasing its locks.
    pub fn commit(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "COMMIT;");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.end();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.as_postgres(
            "pg_ctl",
            &["-D", path(&data), "-m", "immediate", "-w", "stop"],
        );
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
