//! A throwaway PostgreSQL cluster for tests: Debian's server, initialised and started as user
//! `postgres` (the server refuses to run as root) in a temp dir that user owns, listening on a
//! free loopback port; stopped and removed on drop. Each test makes its own database in it.
//!
//! [`PgCluster::start_behind_link`] runs the server in a network namespace of its own instead,
//! reached over a veth pair that the test can cut ([`PgCluster::cut`]): the server's host then
//! vanishes from the network without a word, as when it crashes or a cable is pulled.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A running cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port.
    pub port: u16,
    /// The address it listens on: 127.0.0.1, or its namespace's end of the link.
    host: String,
    /// Its network namespace and link, when it runs behind one.
    link: Option<Link>,
}

/// A network namespace of the test's own and the veth pair into it (deleted on drop).
struct Link {
    netns: String,
    /// The namespace's end of the pair.
    inside: String,
}

impl Link {
    /// A namespace with a /30 link from this one; names and addresses are derived from `port`
    /// (free on this machine, so unique among running tests).
    fn create(port: u16) -> (Link, String) {
        let netns = format!("roost-pg-{port}");
        let (outside, inside) = (format!("rpg{port}a"), format!("rpg{port}b"));
        let net = format!("10.{}.{}", 200 + (port >> 14), (port >> 6) & 0xff);
        let last = (port & 63) * 4;
        let (near, far) = (format!("{net}.{}", last + 1), format!("{net}.{}", last + 2));
        let link = Link { netns, inside };
        // Left over by a test run that was killed on this port: gone with its namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &link.netns])
            .output();
        link.ip(&["netns", "add", &link.netns]);
        link.ip(&[
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            &link.inside,
            "netns",
            &link.netns,
        ]);
        link.ip(&["addr", "add", &format!("{near}/30"), "dev", &outside]);
        link.ip(&["link", "set", &outside, "up"]);
        link.ip_inside(&["addr", "add", &format!("{far}/30"), "dev", &link.inside]);
        link.set_up(true);
        link.ip_inside(&["link", "set", "lo", "up"]);
        (link, far)
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    }

    fn ip_inside(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.netns, "ip"];
        all.extend_from_slice(args);
        self.ip(&all);
    }

    /// Brings the namespace's end up or down: down, whatever is sent over the link is lost,
    /// and nothing comes back (no reset, no ICMP error).
    fn set_up(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ip_inside(&["link", "set", &self.inside, state]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
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

impl PgCluster {
    /// Initialises and starts a cluster; panics with the server's log if it cannot.
    pub fn start() -> PgCluster {
        PgCluster::init(false)
    }

    /// Like [`PgCluster::start`], with the server in a network namespace of its own, reached over
    /// a link the test can cut ([`PgCluster::cut`]). Needs root (`ip netns`).
    pub fn start_behind_link() -> PgCluster {
        PgCluster::init(true)
    }

    /// Cuts the link to the server: its host vanishes from the network.
    pub fn cut(&self) {
        self.link
            .as_ref()
            .expect("a cluster behind a link")
            .set_up(false);
    }

    /// Mends the link cut by [`PgCluster::cut`].
    pub fn mend(&self) {
        self.link
            .as_ref()
            .expect("a cluster behind a link")
            .set_up(true);
    }

    /// Freezes the server (SIGSTOP to it and every process it started): its host stays up and
    /// its kernel goes on accepting and acknowledging what is sent, but nothing is answered.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Sends `signal` to the postmaster and its children (processes this cluster started).
    fn signal(&self, signal: &str) {
        let Ok(pid_file) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return;
        };
        let postmaster = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the comm may hold spaces, so read after its ')'.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            if after.split_whitespace().nth(1) == Some(postmaster.as_str()) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        // A backend may end meanwhile; the rest are signalled whatever `kill` says of it.
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .output();
    }

    /// A standby of this server (a base backup streaming its WAL, on a port of its own),
    /// started and made this server's synchronous standby: a commit here is answered once the
    /// standby has it, so a failover to it ([`PgCluster::promote`]) loses nothing committed.
    pub fn start_standby(&self) -> PgCluster {
        assert!(self.link.is_none(), "a standby of a server on loopback");
        let standby = PgCluster {
            bin: self.bin.clone(),
            port: crate::free_port(),
            dir: cluster_dir(),
            host: "127.0.0.1".to_owned(),
            link: None,
        };
        let (data, port) = (standby.data_dir(), self.port.to_string());
        // `-c fast`: the backup's checkpoint at once, not spread over minutes.
        let out = standby.as_postgres(
            "pg_basebackup",
            &[
                "-h",
                &self.host,
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path(&data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        assert!(out.status.success(), "pg_basebackup: {}", text(&out));
        standby.start_server();
        self.set_and_reload(&[("synchronous_standby_names", "*")]);
        let sync = "SELECT COUNT(*) FROM pg_stat_replication WHERE sync_state = 'sync'";
        within_30s("the standby never became synchronous", || {
            self.query("postgres", sync) == "1"
        });
        standby
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waited for).
    pub fn promote(&self) {
        let data = self.data_dir();
        let out = self.as_postgres("pg_ctl", &["-D", path(&data), "-w", "promote"]);
        assert!(out.status.success(), "pg_ctl promote: {}", text(&out));
    }

    fn init(behind_link: bool) -> PgCluster {
        let dir = cluster_dir();
        let port = crate::free_port();
        let (link, host) = match behind_link {
            true => {
                let (link, host) = Link::create(port);
                (Some(link), host)
            }
            false => (None, "127.0.0.1".to_owned()),
        };
        let cluster = PgCluster {
            bin: newest_bin_dir(),
            port,
            dir,
            host,
            link,
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
        if cluster.link.is_some() {
            // initdb trusts loopback only; the link's far end is another host.
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .expect("pg_hba.conf");
            writeln!(hba, "host all all {}/24 trust", cluster.host).expect("pg_hba.conf");
        }
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
            let mut command = match &self.link {
                Some(link) => {
                    let mut command = Command::new("ip");
                    command.args(["netns", "exec", &link.netns, "runuser"]);
                    command
                }
                None => Command::new("runuser"),
            };
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
            "-p {} -c listen_addresses={} -c unix_socket_directories={} \
             -c max_connections=200",
            self.port,
            self.host,
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

    /// Makes the server take TCP connections over TLS only, with the certificate and key
    /// given (PEM); waits until a new connection without TLS is refused.
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) {
        let cert = self.write_owned("server.crt", cert_pem);
        let key = self.write_owned("server.key", key_pem);
        self.rewrite_hba(|line| match line.strip_prefix("host ") {
            Some(rest) => format!("hostssl {rest}"),
            None => line.to_owned(),
        });
        self.set_and_reload(&[
            ("ssl_cert_file", path(&cert)),
            ("ssl_key_file", path(&key)),
            ("ssl", "on"),
        ]);
        self.wait_refused("disable", "the server still takes connections without TLS");
    }

    /// After [`PgCluster::require_tls`]: makes the server log roles in by a client
    /// certificate that `ca_pem` signed, whose CN is the role (`pg_hba.conf`'s `cert`), and
    /// nothing else over TCP; waits until a TLS connection without one is refused.
    pub fn require_client_certificates(&self, ca_pem: &str) {
        let ca = self.write_owned("client-ca.crt", ca_pem);
        self.rewrite_hba(|line| match line.strip_prefix("hostssl ") {
            Some(rest) => {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let kept = &fields[..fields.len() - 1];
                format!("hostssl {} cert", kept.join(" "))
            }
            None => line.to_owned(),
        });
        self.set_and_reload(&[("ssl_ca_file", path(&ca))]);
        self.wait_refused(
            "require",
            "the server still takes connections without a client certificate",
        );
    }

    /// Writes `text` to `name` in the cluster's directory, private to the server's user.
    fn write_owned(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let file = self.dir.path().join(name);
        std::fs::write(&file, text).expect("write a TLS file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            .expect("TLS file permissions");
        give_to_postgres(&file);
        file
    }

    /// `pg_hba.conf` with each line passed through `rule`.
    fn rewrite_hba(&self, rule: impl Fn(&str) -> String) {
        let hba = self.data_dir().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        let rules: String = rules.lines().map(|line| rule(line) + "\n").collect();
        std::fs::write(&hba, rules).expect("pg_hba.conf");
    }

    /// `ALTER SYSTEM SET` each setting, then a reload.
    fn set_and_reload(&self, settings: &[(&str, &str)]) {
        // One statement each: ALTER SYSTEM runs outside a transaction block only.
        for (name, value) in settings {
            self.query("postgres", &format!("ALTER SYSTEM SET {name} = '{value}'"));
        }
        self.query("postgres", "SELECT pg_reload_conf()");
    }

    /// Waits until psql over TCP with `PGSSLMODE=sslmode` (and no client certificate) is
    /// refused: the reload is the postmaster's, a moment after it is asked for. Panics with
    /// `still` past 30 s.
    fn wait_refused(&self, sslmode: &str, still: &str) {
        let port = self.port.to_string();
        within_30s(still, || {
            let plain = Command::new(self.bin.join("psql"))
                .args([
                    "-h", &self.host, "-p", &port, "-U", "postgres", "-d", "postgres",
                ])
                .args(["-At", "-c", "SELECT 1"])
                .env("PGSSLMODE", sslmode)
                .output()
                .expect("psql");
            !plain.status.success()
        });
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
                "-h", &self.host, "-p", &port, "-U", "postgres", "-d", "postgres",
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
        self.url_as("postgres", name)
    }

    /// The URL of database `name` for role `role` (the cluster trusts loopback logins).
    pub fn url_as(&self, role: &str, name: &str) -> String {
        format!("postgres://{role}@{}:{}/{name}", self.host, self.port)
    }

    /// Runs one SQL statement in database `db` and returns psql's unaligned output. psql goes
    /// through the server's Unix socket, so a test's own checks pass whatever TCP asks of the
    /// gateways (TLS, a client certificate, a cut link).
    pub fn query(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let socket = path(self.dir.path());
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", socket, "-p", &port, "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Makes every commit of a new request in database `db` sleep `seconds` (a deferred trigger
    /// runs at `COMMIT`): a test that sees a commit sleep ([`PgCluster::commits_sleeping`])
    /// knows its `COMMIT` was sent and is being carried out.
    pub fn slow_commits(&self, db: &str, seconds: u32) {
        self.slow_commits_of(db, "INSERT ON requests", seconds);
    }

    /// As [`PgCluster::slow_commits`], for the commits of `event` (say, `UPDATE ON dead_letters`).
    pub fn slow_commits_of(&self, db: &str, event: &str, seconds: u32) {
        self.query(
            db,
            &format!(
                "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$; \
                 CREATE CONSTRAINT TRIGGER slow_commit AFTER {event} \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
            ),
        );
    }

    /// How many commits sleep in [`PgCluster::slow_commits`]' trigger now.
    pub fn commits_sleeping(&self, db: &str) -> String {
        self.query(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
        )
    }

    /// Waits (at most 30 s) until a commit sleeps in [`PgCluster::slow_commits`]' trigger in
    /// database `db`: its `COMMIT` was sent and is being carried out.
    pub async fn until_a_commit_sleeps(&self, db: &str) {
        let started = std::time::Instant::now();
        while self.commits_sleeping(db) != "1" {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "no commit reached the slow-commit trigger in {db}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Runs `sql` (say, a `SELECT ... FOR UPDATE`) in an open transaction in database `db`,
    /// which holds its locks until the returned [`Open`] is committed or dropped.
    pub fn hold(&self, db: &str, sql: &str) -> Open {
        let port = self.port.to_string();
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-h", &self.host, "-p", &port, "-U", "postgres", "-d", db])
            // Quiet: no command tags, which would meet a closed pipe once it is held.
            .args(["-v", "ON_ERROR_STOP=1", "-Atq"])
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

    /// Runs `sql` in it, then commits; whether both succeeded.
    pub fn commit_after(mut self, sql: &str) -> bool {
        let Some(mut stdin) = self.stdin.take() else {
            return false;
        };
        let _ = writeln!(stdin, "{sql};\nCOMMIT;");
        drop(stdin);
        self.child.wait().is_ok_and(|status| status.success())
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
        self.thaw();
        let data = self.data_dir();
        let _ = self.as_postgres(
            "pg_ctl",
            &["-D", path(&data), "-m", "immediate", "-w", "stop"],
        );
    }
}

/// A temp dir for a cluster's files, the server's user's own.
fn cluster_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("roost-pg-")
        .tempdir()
        .expect("temp dir");
    give_to_postgres(dir.path());
    dir
}

/// Makes `path` the server's user's own, when this runs as root (the server refuses root).
fn give_to_postgres(path: &Path) {
    if is_root() {
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown {} to postgres", path.display());
    }
}

/// Polls `done` every 50 ms until it holds; panics with `still` past 30 s.
fn within_30s(still: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{still}");
        std::thread::sleep(std::time::Duration::from_millis(50));
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
