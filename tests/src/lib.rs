//! The end-to-end harness: starts the real gateway process (the product's own CLI, built in this
//! package as `roost-gateway`) on free loopback ports with a temp data dir, and talks to it with
//! real MQTT 5 clients ([`device::TestDevice`]). Everything waits on events with timeouts, never
//! on sleeps.
//!
//! With `ROOST_TEST_ENGINE=postgres` in the environment, every gateway the harness starts keeps
//! its state in a throwaway PostgreSQL cluster of its own ([`postgres::PgCluster`]) instead of
//! SQLite: the same guarantee tests then run against the other engine (`tests/run.sh` does a
//! second pass of them that way).

pub mod browser;
pub mod certs;
pub mod device;
pub mod postgres;
pub mod proxy;
pub mod store_view;
pub mod tinyfs;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a gateway may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A gateway process under test.
pub struct Gateway {
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra_config: String,
    /// The device-facing MQTT address.
    pub mqtt: SocketAddr,
    /// The operator HTTP address, when enabled.
    pub http: Option<SocketAddr>,
    restarts: usize,
    /// The PostgreSQL cluster this gateway's store lives in, under `ROOST_TEST_ENGINE=postgres`.
    pub postgres: Option<postgres::PgCluster>,
    launch: Launch,
}

/// How a gateway process is started, past its config: what a test may not change in its own
/// process, which every test in the binary shares.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// `RLIMIT_NOFILE` (soft, hard) it starts with, set by util-linux's `prlimit`; `None`: this
    /// process's.
    pub open_files: Option<(u64, u64)>,
    /// Environment variables set for it.
    pub env: Vec<(String, String)>,
}

/// Whether the harness runs gateways on PostgreSQL (`ROOST_TEST_ENGINE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("ROOST_TEST_ENGINE").is_ok_and(|engine| engine == "postgres")
}

impl Gateway {
    /// Starts a gateway with the test defaults.
    pub fn start() -> Gateway {
        Gateway::start_with("")
    }

    /// Starts a gateway with extra TOML merged over the test config (a key given here wins).
    pub fn start_with(extra_config: &str) -> Gateway {
        Gateway::start_as(extra_config, Launch::default())
    }

    /// Starts a gateway as [`Gateway::start_with`] does, started as `launch` says.
    pub fn start_as(extra_config: &str, launch: Launch) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut gateway = Gateway {
            child: None,
            dir,
            extra_config: extra_config.to_owned(),
            mqtt: "127.0.0.1:0".parse().expect("addr"),
            http: None,
            restarts: 0,
            postgres: None,
            launch,
        };
        if on_postgres() {
            let cluster = postgres::PgCluster::start();
            cluster.create_database("roost");
            gateway.postgres = Some(cluster);
        }
        gateway.spawn().expect("gateway starts");
        gateway
    }

    /// The binary under test: `roost-gateway`, built by cargo next to the test executables
    /// (`target/<profile>/`, one level above `deps/`).
    pub fn binary() -> PathBuf {
        sibling_binary("roost-gateway")
    }

    /// The temp directory holding config, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file the gateway runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data").join("roost.db")
    }

    /// The file the current run logs to (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("gateway-{}.log", self.restarts))
    }

    /// Writes the config for the current port and starts the process; waits until it listens.
    fn spawn(&mut self) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let base = format!(
            "[gateway]\nid = \"gw-test\"\ndata_dir = {data:?}\nworkers = 2\n\
             [broker]\nlisten = \"{mqtt}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nsynchronous = \"normal\"\n",
            mqtt = self.mqtt,
        );
        let mut config: toml::Table = base.parse().expect("base config");
        if let Some(cluster) = &self.postgres {
            let engine = format!(
                "[store]\nengine = \"postgres\"\nurl = \"{}\"\n",
                cluster.url("roost")
            );
            merge(&mut config, engine.parse().expect("engine config"));
        }
        let extra: toml::Table = self.extra_config.parse().expect("extra config is TOML");
        merge(&mut config, extra);
        std::fs::write(self.config_path(), config.to_string()).expect("write config");
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let mut command = match self.launch.open_files {
            Some((soft, hard)) => {
                let mut prlimit = Command::new("prlimit");
                prlimit.arg(format!("--nofile={soft}:{hard}"));
                prlimit.arg(Gateway::binary());
                prlimit
            }
            None => Command::new(Gateway::binary()),
        };
        command.envs(self.launch.env.clone());
        let mut child = command
            .args(["run", "--config"])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // The outbox's debug lines (a device woke, a reply sent or redelivered) and how an
            // operator's relay ended too: they are what a failing test's printed log needs.
            .env(
                "RUST_LOG",
                format!(
                    "{},gateway::outbox=debug,gateway::frontdoor::operators=debug",
                    gateway::logging::DEFAULT_FILTER
                ),
            )
            .spawn()
            .expect("spawn gateway");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        loop {
            let line = line_rx
                .recv_timeout(START_TIMEOUT)
                .map_err(|_| format!("gateway did not start listening:\n{}", self.log()))?;
            if let Some(rest) = line.strip_prefix("roost gateway listening ") {
                for part in rest.split_whitespace() {
                    match part.split_once('=') {
                        Some(("mqtt", addr)) => self.mqtt = addr.parse().expect("mqtt addr"),
                        Some(("http", addr)) => self.http = Some(addr.parse().expect("http addr")),
                        _ => {}
                    }
                }
                // Keep draining stdout so the gateway never blocks on a full pipe.
                std::thread::spawn(move || while line_rx.recv().is_ok() {});
                return Ok(());
            }
        }
    }

    /// Adds operator `name` through the CLI (`gateway operator add`, the password on stdin).
    pub fn add_operator(&self, name: &str, password: &str) {
        use std::io::Write;
        let mut child = Command::new(Gateway::binary())
            .args(["operator", "add", name, "--config"])
            .arg(self.config_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("gateway operator add");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{password}").expect("password");
        drop(stdin);
        assert!(child.wait().expect("wait").success(), "operator added");
    }

    /// The gateway's log (stderr) of its current run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM, then waits for the exit status (bounded).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gateway did not exit after SIGTERM (killed)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gateway again on the same data dir and the same MQTT port.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop the gateway before restarting it"
        );
        self.restarts += 1;
        self.spawn().expect("gateway restarts");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A binary of this package, found next to the running test executable.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// Runs the gateway binary with arguments (operator subcommands) and returns its output.
pub fn gateway_cmd(args: &[&str]) -> std::process::Output {
    Command::new(Gateway::binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gateway")
}

/// A minimal HTTP/1.1 GET for the operator API: returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP API");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Waits until the gateway log at `log` (read even while the gateway is being stopped elsewhere)
/// has `text`, at most `within`.
pub async fn until_logged(log: &Path, text: &str, within: Duration) {
    let started = std::time::Instant::now();
    loop {
        let now = std::fs::read_to_string(log).unwrap_or_default();
        if now.contains(text) {
            return;
        }
        assert!(started.elapsed() < within, "never logged {text:?}:\n{now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port for a server a test starts (PostgreSQL, Mosquitto, chromedriver) and
/// names to it by number.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`), so that no outgoing
/// connection of a concurrent test (each takes its local port from that range) can take it
/// between this check and the server's bind: a port from `bind(0)` lies inside that range, and
/// in CI a PostgreSQL once failed to start with "Address already in use" on one.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u16, low.saturating_sub(10_000).max(1));
    for _ in 0..1_000 {
        let port = first + (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {first} and {low}");
}

/// A Mosquitto broker (Debian's `mosquitto`, which `tests/run.sh` installs) on a free loopback
/// port, for external-broker mode. Killed on drop.
pub struct Mosquitto {
    child: Child,
    _dir: tempfile::TempDir,
    /// Its address.
    pub addr: SocketAddr,
}

impl Mosquitto {
    /// Starts it and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        // Nagle off, as the scale-out recipe sets it: a small publish to a gateway that has not
        // yet acknowledged the last one otherwise waits for its delayed TCP ACK (tens of ms).
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 set_tcp_nodelay true\n"
            ),
        )
        .expect("write mosquitto.conf");
        let binary = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto; tests/run.sh does)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            _dir: dir,
            addr,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `device-sim run` (the product's simulator, built here as `roost-device-sim`) against the
/// gateway and returns its JSON report; panics with the report if it exits non-zero.
pub fn device_sim(gateway: &Gateway, args: &[&str]) -> serde_json::Value {
    let report = gateway.dir().join(format!(
        "report-{}.json",
        args.join("_").replace(['/', ' '], "")
    ));
    let out = Command::new(sibling_binary("roost-device-sim"))
        .arg("run")
        .args(["--broker", &gateway.mqtt.to_string(), "--quiet", "--json"])
        .arg(&report)
        .args(args)
        .output()
        .expect("device-sim runs");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written"))
            .expect("JSON report");
    assert!(
        out.status.success(),
        "device-sim failed: {json}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    json
}
