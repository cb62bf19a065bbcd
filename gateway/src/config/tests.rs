//! Config tests: defaults, the shipped files, and errors that name their key.
use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn empty_file_means_defaults() {
    let config = parse("").expect("defaults are valid");
    assert_eq!(config.gateway.id, "gw-1");
    assert!(matches!(config.broker, BrokerConfig::Embedded { listen } if listen.port() == 1883));
    assert_eq!(config.limits.max_payload_bytes, 262_144);
    assert_eq!(config.limits.reply_ttl, Duration::from_secs(604_800));
    assert_eq!(config.http, Some("127.0.0.1:8080".parse().expect("addr")));
}

#[test]
fn shipped_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let external =
        Config::load(&dir.join("external-broker.toml")).expect("external example is valid");
    assert!(
        matches!(external.broker, BrokerConfig::External { ref share_group, .. } if share_group == "roost")
    );
    // The TLS example names files that exist only on a real install: it must fail on exactly that.
    let err =
        Config::load(&dir.join("auth-tls.toml")).expect_err("certificate files are absent here");
    assert!(err.to_string().contains("broker.tls.cert"), "{err}");
}

#[test]
fn shipped_config_is_valid_and_matches_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let config = Config::load(&path).expect("config/gateway.toml is valid");
    let defaults = parse("").expect("defaults");
    assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
}

#[test]
fn unknown_key_is_named() {
    let err = parse("[limits]\nmax_paylod_bytes = 5\n").expect_err("typo");
    assert!(err.to_string().contains("max_paylod_bytes"), "{err}");
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        (
            "[limits]\nmax_payload_bytes = 0",
            "limits.max_payload_bytes",
        ),
        ("[broker]\nlisten = \"nope\"", "broker.listen"),
        ("[broker]\nmode = \"cloud\"", "broker.mode"),
        (
            "[broker]\nmode = \"external\"\nurl = \"http://x\"",
            "broker.url",
        ),
        ("[gateway]\nid = \"a/b\"", "gateway.id"),
        ("[http]\nlisten = \"8080\"", "http.listen"),
        ("[store]\nsynchronous = \"off\"", "store.synchronous"),
        (
            "[limits]\nmax_auth_failures = 0",
            "limits.max_auth_failures",
        ),
        ("[limits]\nauth_lockout_s = 0", "limits.auth_lockout_s"),
        ("[limits]\nauth_tracked_max = 0", "limits.auth_tracked_max"),
        (
            "[limits]\npassword_threads = 5000",
            "limits.password_threads",
        ),
        ("[limits]\nmax_store_bytes = 1000", "limits.max_store_bytes"),
        (
            "[limits]\nmax_store_bytes = 10000000\n\
             [store]\nengine = \"postgres\"\nurl = \"postgres://u@127.0.0.1:5432/db\"",
            "limits.max_store_bytes",
        ),
    ] {
        let err = parse(text).expect_err(text);
        assert!(err.to_string().contains(key), "{text}: {err}");
    }
}

#[test]
fn a_store_budget_reaches_the_store() {
    let config = parse("[limits]\nmax_store_bytes = 2097152").expect("valid");
    assert_eq!(config.store.max_store_bytes, Some(2_097_152));
    assert_eq!(parse("").expect("defaults").store.max_store_bytes, None);
}

#[test]
fn http_can_be_disabled_and_external_url_parsed() {
    let config =
        parse("[http]\nlisten = \"\"\n[broker]\nmode = \"external\"\nurl = \"mqtt://[::1]:1884\"")
            .expect("valid");
    assert!(config.http.is_none());
    assert!(
        matches!(config.broker, BrokerConfig::External { ref host, port: 1884, .. } if host == "::1")
    );
}

#[test]
fn anonymous_is_refused_on_a_non_loopback_listener_unless_remote() {
    let err = parse("[broker]\nlisten = \"0.0.0.0:1883\"").expect_err("anonymous remote");
    assert!(err.to_string().contains("auth.allow_anonymous"), "{err}");
    parse("[broker]\nlisten = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous = false")
        .expect("no anonymous");
    parse("[broker]\nlisten = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous_remote = true")
        .expect("explicitly allowed");
    parse("[broker]\nlisten = \"[::1]:1883\"").expect("loopback v6");
}

#[test]
fn tls_keys_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "x").expect("write");
    let err = parse("[broker.tls]\nkey = \"k.pem\"").expect_err("no cert");
    assert!(err.to_string().contains("broker.tls.cert"), "{err}");
    let text = format!("[broker.tls]\ncert = {cert:?}\nkey = \"/nonexistent/k.pem\"");
    let err = parse(&text).expect_err("missing key file");
    assert!(err.to_string().contains("broker.tls.key"), "{err}");
    let text = format!("[broker.tls]\ncert = {cert:?}\nkey = {cert:?}\nclient_ca = {cert:?}");
    let config = parse(&text).expect("files exist");
    assert!(config.tls.is_some_and(|tls| tls.client_ca.is_some()));
    let err = parse("[broker.tls]\nciphers = 1").expect_err("unknown key");
    assert!(err.to_string().contains("ciphers"), "{err}");
}

#[test]
fn store_engine_keys_are_checked_by_name() {
    let config = parse("").expect("defaults");
    assert_eq!(config.store.engine, StoreEngine::Sqlite);
    assert_eq!(config.store.lease, Duration::from_secs(10));
    let pg = parse(
        "[store]\nengine = \"postgres\"\nurl = \"postgres://roost@127.0.0.1:5432/roost\"\n\
         pool_size = 8\nlease_ms = 5000\n",
    )
    .expect("a postgres store");
    assert_eq!(
        pg.store.engine,
        StoreEngine::Postgres {
            url: "postgres://roost@127.0.0.1:5432/roost".into(),
            pool_size: 8
        }
    );
    assert_eq!(pg.store.lease, Duration::from_secs(5));
    for (text, key) in [
        ("[store]\nengine = \"mysql\"\n", "store.engine"),
        ("[store]\nengine = \"postgres\"\n", "store.url"),
        (
            "[store]\nengine = \"postgres\"\nurl = \"mysql://x\"\n",
            "store.url",
        ),
        (
            "[store]\nengine = \"postgres\"\nurl = \"postgres://h:notaport/db\"\n",
            "store.url",
        ),
        (
            "[store]\nengine = \"postgres\"\nurl = \"postgres://h/db\"\npool_size = 0\n",
            "store.pool_size",
        ),
        ("[store]\nlease_ms = 10\n", "store.lease_ms"),
    ] {
        let err = parse(text).expect_err(text);
        assert!(err.to_string().contains(key), "{text}: {err}");
    }
}

#[test]
fn store_url_tls_takes_libpqs_sslmode_and_sslrootcert() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = dir.path().join("my ca.pem");
    // A PEM block is all the config looks for (the store parses the certificate).
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let root = ca.display().to_string().replace(' ', "%20");
    let base = "postgres://roost@db:5432/roost";
    for (query, driver, mode) in [
        ("", "sslmode=prefer", SslMode::Prefer),
        ("?sslmode=disable", "sslmode=disable", SslMode::Disable),
        (
            "?application_name=a&sslmode=require",
            "application_name=a&sslmode=require",
            SslMode::Require,
        ),
        // As libpq: a root file makes `require` check the chain.
        (
            &format!("?sslmode=require&sslrootcert={root}"),
            "sslmode=require",
            SslMode::VerifyCa,
        ),
        (
            &format!("?sslrootcert={root}&sslmode=verify-full"),
            "sslmode=require",
            SslMode::VerifyFull,
        ),
    ] {
        let (url, tls) = postgres_tls(&format!("{base}{query}")).expect(query);
        assert_eq!(url, format!("{base}?{driver}"), "{query}");
        assert_eq!(tls.mode, mode, "{query}");
        let root = query
            .contains("sslrootcert")
            .then(|| Roots::File(ca.clone()));
        assert_eq!(tls.root, root, "{query}");
    }
    std::fs::write(dir.path().join("empty.pem"), "").expect("write");
    let empty = dir.path().join("empty.pem").display().to_string();
    for (query, says) in [
        ("sslmode=verify-full".to_owned(), "needs sslrootcert"),
        ("sslmode=verify-ca".to_owned(), "needs sslrootcert"),
        ("sslmode=allow".to_owned(), "sslmode=allow is not"),
        (
            "sslrootcert=/nonexistent.pem".to_owned(),
            "/nonexistent.pem",
        ),
        (format!("sslrootcert={empty}"), "no PEM certificate"),
        // As libpq: the system's CAs sign for anyone's hosts, so the name is checked too.
        (
            "sslrootcert=system&sslmode=require".to_owned(),
            "sslrootcert=system needs sslmode=verify-full",
        ),
        (
            "sslmode=verify-ca&sslrootcert=system".to_owned(),
            "sslrootcert=system needs sslmode=verify-full",
        ),
    ] {
        let text = format!("[store]\nengine = \"postgres\"\nurl = \"{base}?{query}\"\n");
        let err = parse(&text).expect_err(&query);
        let err = err.to_string();
        assert!(
            err.contains("store.url") && err.contains(says),
            "{query}: {err}"
        );
    }
}

#[test]
fn store_url_tls_takes_a_client_certificate_as_sslcert_and_sslkey() {
    let dir = tempfile::tempdir().expect("dir");
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("-----BEGIN {pem}-----\nAAAA\n-----END {pem}-----\n"),
        )
        .expect("write");
        path.display().to_string()
    };
    let (cert, key) = (file("c.pem", "CERTIFICATE"), file("k.pem", "PRIVATE KEY"));
    let base = "postgres://roost@db:5432/roost";
    let (url, tls) = postgres_tls(&format!("{base}?sslcert={cert}&sslkey={key}")).expect("parse");
    assert_eq!(
        url,
        format!("{base}?sslmode=prefer"),
        "the driver sees neither"
    );
    assert_eq!(tls.client, Some((cert.clone().into(), key.clone().into())));
    assert_eq!(postgres_tls(base).expect("parse").1.client, None);
    for (query, says) in [
        (format!("sslcert={cert}"), "sslcert needs sslkey"),
        (format!("sslkey={key}"), "sslkey needs sslcert"),
        (
            format!("sslmode=disable&sslcert={cert}&sslkey={key}"),
            "sslmode=disable",
        ),
        // Each file must hold what its key names.
        (format!("sslcert={key}&sslkey={key}"), "no PEM certificate"),
        (
            format!("sslcert={cert}&sslkey={cert}"),
            "no PEM private key",
        ),
        (format!("sslcert=/none.pem&sslkey={key}"), "/none.pem"),
    ] {
        let text = format!("[store]\nengine = \"postgres\"\nurl = \"{base}?{query}\"\n");
        let err = parse(&text).expect_err(&query).to_string();
        assert!(
            err.contains("store.url") && err.contains(says),
            "{query}: {err}"
        );
    }
}
