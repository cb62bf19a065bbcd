//! A config mistake is a one-line message naming the key (or address) and exit code 2.

use std::process::{Command, Stdio};

use roost_tests::Gateway;

fn run_with(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(Gateway::binary())
        .args(["run", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run gateway");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_key_and_bad_values_exit_2_naming_the_key() {
    for (config, needle) in [
        ("[limits]\nmax_paylod_bytes = 5\n", "max_paylod_bytes"),
        ("[limits]\nop_timeout_ms = 0\n", "limits.op_timeout_ms"),
        ("[broker]\nlisten = \"localhost\"\n", "broker.listen"),
        ("[broker]\nmode = \"cloud\"\n", "broker.mode"),
        ("[limits]\nreply_ttl_s = \"a week\"\n", "reply_ttl_s"),
        ("[nonsense]\n", "nonsense"),
    ] {
        let (code, stderr) = run_with(config);
        assert_eq!(code, Some(2), "{config}: {stderr}");
        assert!(stderr.contains(needle), "{config}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn missing_config_file_exits_2() {
    let out = Command::new(Gateway::binary())
        .args(["run", "--config", "/nonexistent/roost.toml"])
        .output()
        .expect("run gateway");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/roost.toml"));
}

#[test]
fn taken_port_exits_2_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let (code, stderr) = run_with(&format!(
        "[broker]\nlisten = \"{addr}\"\n[http]\nlisten = \"\"\n"
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("broker.listen"),
        "{stderr}"
    );
}
