//! Clients nobody here wrote, through the front door: Eclipse Paho (Python, MQTT 3.1.1 and 5,
//! Keep Alive 0) and Debian's `mosquitto_pub` / `mosquitto_sub` (installed by `tests/run.sh`).

use std::process::Command;

use roost_tests::Gateway;

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is installed (tests/run.sh installs it): {e}"))
}

#[test]
fn paho_v311_v5_and_keep_alive_zero() {
    let gateway = Gateway::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/frontdoor_paho.py");
    let out = run("python3", &[script, &gateway.mqtt.port().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clients: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    assert_eq!(clients.len(), 3, "{stdout}");
    for client in &clients {
        let id = client["client"].as_str().expect("id");
        assert_eq!(client["connack"], 0, "{client}");
        let denied = if id == "paho-v4" { 128 } else { 0x87 };
        assert_eq!(
            client["suback"],
            serde_json::json!([1, 1, denied]),
            "{client}"
        );
        assert_eq!(
            client["reply_topic"].as_str(),
            Some(format!("devices/{id}/reply").as_str()),
            "{client}"
        );
        if id != "paho-v4" {
            assert_eq!(client["denied_publish"], 0x87, "{client}");
        }
    }
}

#[test]
fn mosquitto_clients_get_the_anonymous_views() {
    let gateway = Gateway::start();
    let port = gateway.mqtt.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", port.as_str()];

    // A fresh install: mosquitto_sub (empty client id) reads the retained gateway status.
    let mut args = base.to_vec();
    args.extend(["-V", "mqttv5", "-t", "gateway/#", "-C", "1", "-W", "20"]);
    let out = run("mosquitto_sub", &args);
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["state"], "online");

    // But not everything: `#` is denied.
    let mut args = base.to_vec();
    args.extend(["-V", "mqttv5", "-t", "#", "-C", "1", "-W", "3"]);
    let out = run("mosquitto_sub", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("subscription requests were denied"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // mosquitto_pub as anonymous device mp-1: its own topics pass, another's are refused.
    let mut args = base.to_vec();
    args.extend([
        "-V",
        "mqttv5",
        "-i",
        "mp-1",
        "-q",
        "1",
        "-t",
        "devices/mp-1/telemetry",
    ]);
    args.extend(["-m", "x"]);
    let out = run("mosquitto_pub", &args);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    let mut args = base.to_vec();
    args.extend([
        "-V",
        "mqttv5",
        "-i",
        "mp-1",
        "-q",
        "1",
        "-t",
        "devices/other/req/stats",
    ]);
    args.extend(["-m", "x"]);
    let out = run("mosquitto_pub", &args);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not authorized"),
        "{out:?}"
    );
    let mut args = base.to_vec();
    args.extend([
        "-V",
        "mqttv311",
        "-i",
        "mp-1",
        "-q",
        "1",
        "-t",
        "devices/other/req/stats",
    ]);
    args.extend(["-m", "x"]);
    assert!(
        !run("mosquitto_pub", &args).status.success(),
        "3.1.1: closed"
    );
    let mut args = base.to_vec();
    args.extend(["-i", "site/dev1", "-t", "devices/mp-1/telemetry", "-m", "x"]);
    let out = run("mosquitto_pub", &args);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dentifier"),
        "{out:?}"
    );
}
