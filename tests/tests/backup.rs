//! `gateway backup FILE` while the gateway serves under load: the copy is whole (the CLI's own
//! `PRAGMA integrity_check` passes, and the copy opens), and a gateway started on it serves the
//! held replies it contains, byte for byte.

use gateway::wire::Status;
use roost_tests::device::{values, Received, TestDevice};
use roost_tests::{gateway_cmd, Gateway};

const HELD: usize = 5;

async fn finals(device: &mut TestDevice, corrs: &[Vec<u8>]) -> Vec<Received> {
    let mut found: Vec<Option<Received>> = vec![None; corrs.len()];
    while found.iter().any(Option::is_none) {
        let received = device.next().await;
        if received.reply.status == Status::Accepted {
            continue;
        }
        if let Some(i) = corrs
            .iter()
            .position(|c| received.corr.as_deref() == Some(c.as_slice()))
        {
            found[i] = Some(received);
        }
    }
    found.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_is_whole_and_a_gateway_started_on_it_serves_its_held_replies() {
    let mut gateway = Gateway::start_with("[limits]\nmax_pending_per_device = 1000\n");
    let mut device = TestDevice::connect(gateway.mqtt, "bk-1").await;
    let corrs: Vec<Vec<u8>> = (0..HELD)
        .map(|i| format!("held-{i}").into_bytes())
        .collect();
    for (i, corr) in corrs.iter().enumerate() {
        device
            .request("stats", &values(&[i as f64, 1.0, 2.0]), corr, None)
            .await;
    }
    let originals = finals(&mut device, &corrs).await;
    device.disconnect().await;

    // Load from another device while the backup runs (bounded: 400 requests).
    let mut loader = TestDevice::connect(gateway.mqtt, "bk-load").await;
    let load = tokio::spawn(async move {
        let series = values(&(0..500).map(f64::from).collect::<Vec<_>>());
        let corrs: Vec<Vec<u8>> = (0..400).map(|i| format!("l-{i}").into_bytes()).collect();
        for corr in &corrs {
            loader.request("stats", &series, corr, None).await;
        }
        finals(&mut loader, &corrs).await.len()
    });
    let file = gateway.dir().join("backup.db");
    let config = gateway.config_path();
    let args = [
        "backup".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
        file.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        gateway_cmd(&args)
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "backup failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("integrity_check ok"), "{stdout}");
    assert_eq!(
        load.await.expect("load"),
        400,
        "the load was served meanwhile"
    );
    gateway.kill();

    // Restore: the copy as the database of a fresh data dir.
    let restored = tempfile::tempdir().expect("temp dir");
    let data = restored.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::copy(&file, data.join("roost.db")).expect("restore");
    let second = Gateway::start_with(&format!("[gateway]\ndata_dir = {data:?}\n"));
    let mut device = TestDevice::connect(second.mqtt, "bk-1").await;
    let redelivered = finals(&mut device, &corrs).await;
    for (original, again) in originals.iter().zip(&redelivered) {
        assert_eq!(original.payload, again.payload, "the same final reply");
    }
    device.disconnect().await;
}
