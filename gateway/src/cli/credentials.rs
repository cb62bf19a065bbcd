//! The credential subcommands: `gateway device add|remove|list`, `gateway operator add|remove|list`.
//!
//! Fed by the CLI and the config's `gateway.data_dir`; writes the `credentials` table of
//! `data_dir/roost.db` from this separate process (WAL mode: a running gateway sees the change
//! on the device's next CONNECT). A device secret is printed once and stored only hashed.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use crate::cli::{DeviceAction, OperatorAction};
use crate::config::Config;
use crate::frontdoor::secrets;
use crate::store::credentials::{CredentialWriter, Kind};
use crate::store::StoreError;
use crate::store::DB_FILE;
use crate::wire::ids::is_valid_id;

/// Runs a `gateway device` subcommand.
pub fn device(config: &Config, action: DeviceAction) -> ExitCode {
    let conn = match open(config) {
        Ok(conn) => conn,
        Err(code) => return code,
    };
    let outcome = match action {
        DeviceAction::Add { id } => {
            if !is_valid_id(&id) {
                return fail(&format!(
                    "{id:?} is not a device id: use 1 to 64 of [A-Za-z0-9._-]"
                ));
            }
            let secret = secrets::generate_device_secret();
            let hash = secrets::hash_device_secret(&secret);
            conn.insert(&id, Kind::Device, &hash, now_ms())
                .map(|added| {
                    if added {
                        println!("{secret}");
                        eprintln!("device {id} added: user name {id}, password above (shown once)");
                    }
                    added.then_some(()).ok_or(format!("{id} already exists"))
                })
        }
        DeviceAction::Remove { id } => conn
            .remove(&id, Kind::Device)
            .map(|removed| removed.then_some(()).ok_or(format!("no device {id}"))),
        DeviceAction::List => list(&conn, Kind::Device),
    };
    finish(outcome)
}

/// Runs a `gateway operator` subcommand.
pub fn operator(config: &Config, action: OperatorAction) -> ExitCode {
    let conn = match open(config) {
        Ok(conn) => conn,
        Err(code) => return code,
    };
    let outcome = match action {
        OperatorAction::Add { name } => {
            if !is_valid_id(&name) {
                return fail(&format!(
                    "{name:?} is not a valid name: use 1 to 64 of [A-Za-z0-9._-]"
                ));
            }
            let password = match read_password(&name) {
                Ok(password) if !password.is_empty() => password,
                Ok(_) => return fail("the password must not be empty"),
                Err(error) => return fail(&format!("cannot read the password: {error}")),
            };
            let hash = match secrets::hash_operator_password(&password) {
                Ok(hash) => hash,
                Err(error) => return fail(&error.to_string()),
            };
            conn.insert(&name, Kind::Operator, &hash, now_ms())
                .map(|added| {
                    if added {
                        eprintln!("operator {name} added");
                    }
                    added.then_some(()).ok_or(format!("{name} already exists"))
                })
        }
        OperatorAction::Remove { name } => conn
            .remove(&name, Kind::Operator)
            .map(|removed| removed.then_some(()).ok_or(format!("no operator {name}"))),
        OperatorAction::List => list(&conn, Kind::Operator),
    };
    finish(outcome)
}

fn open(config: &Config) -> Result<CredentialWriter, ExitCode> {
    let dir = &config.gateway.data_dir;
    if let Err(error) = std::fs::create_dir_all(dir) {
        eprintln!("gateway: cannot create data_dir {}: {error}", dir.display());
        return Err(ExitCode::from(crate::config::EXIT_CONFIG));
    }
    CredentialWriter::open(&dir.join(DB_FILE)).map_err(|error| {
        eprintln!("gateway: cannot open the store: {error}");
        ExitCode::FAILURE
    })
}

fn list(conn: &CredentialWriter, kind: Kind) -> Result<Result<(), String>, StoreError> {
    for entry in conn.list(kind)? {
        println!(
            "{}\t{}",
            entry.name,
            crate::status::rfc3339_ms(entry.created_ms)
        );
    }
    Ok(Ok(()))
}

fn finish(outcome: Result<Result<(), String>, StoreError>) -> ExitCode {
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(message)) => fail(&message),
        Err(error) => fail(&format!("store: {error}")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("gateway: {message}");
    ExitCode::FAILURE
}

/// The first line of standard input; on a terminal, prompted for (it is echoed: pipe it in
/// from a password manager to keep it off the screen).
fn read_password(name: &str) -> std::io::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for operator {name}: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
