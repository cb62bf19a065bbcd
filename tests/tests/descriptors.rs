//! Open files: the gateway raises its soft `RLIMIT_NOFILE` to the hard limit at start, and warns
//! (naming `limits.max_connections`) when even the hard limit is below what the configured
//! connections need. The limits are real: the gateway starts under util-linux's `prlimit`.

use roost_tests::device::{values, TestDevice};
use roost_tests::{Gateway, Launch};

/// (soft, hard) "Max open files" of a process, from `/proc/PID/limits`.
fn open_files(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().expect("soft").to_owned(),
        fields.next().expect("hard").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_and_a_low_hard_limit_is_named() {
    // Soft 256, hard 4096 for the gateway (prlimit sets them, then runs it in its place).
    let low = Launch {
        open_files: Some((256, 4096)),
        ..Launch::default()
    };
    let gateway = Gateway::start_as("[limits]\nmax_connections = 10000\n", low.clone());
    assert_eq!(
        open_files(gateway.pid()),
        ("4096".to_owned(), "4096".to_owned()),
        "soft raised to hard"
    );
    let log = gateway.log();
    assert!(
        log.contains("limits.max_connections = 10000"),
        "a warning names the key: {log}"
    );
    // And it serves.
    let mut device = TestDevice::connect(gateway.mqtt, "fd-1").await;
    device
        .request("stats", &values(&[1.0, 2.0]), b"fd", None)
        .await;
    device.reply_for(b"fd").await;

    // Within the limit: no warning.
    let fits = Gateway::start_as("[limits]\nmax_connections = 1000\n", low);
    assert!(
        !fits.log().contains("limits.max_connections"),
        "{}",
        fits.log()
    );
}
