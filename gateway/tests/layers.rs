//! The dependency rules of ARCHITECTURE.md ("Layers"), checked by reading the `crate::` paths
//! of every non-test source file, so they cannot rot silently. A new edge between two stages
//! fails here until the rule (and the doc) is changed on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and the modules it may use. `cli` and `app` sit on top and may use
/// anything; everything else is listed.
const ALLOWED: &[(&str, &[&str])] = &[
    ("metrics", &[]),
    ("logging", &[]),
    ("config", &["wire"]),
    ("flow", &["wire"]),
    ("store", &["wire", "metrics", "logging", "config"]),
    ("analytics", &["wire", "metrics", "store"]),
    ("link", &["wire", "flow"]),
    ("broker", &["wire", "config"]),
    ("frontdoor", &["wire", "config", "flow", "broker", "store"]),
    ("models", &["wire", "config", "analytics"]),
    ("status", &["wire", "flow", "metrics", "store", "analytics"]),
    (
        "intake",
        &[
            "wire",
            "config",
            "flow",
            "metrics",
            "logging",
            "store",
            "analytics",
            "status",
        ],
    ),
    (
        "outbox",
        &[
            "wire",
            "config",
            "flow",
            "metrics",
            "logging",
            "store",
            "analytics",
            "status",
        ],
    ),
    (
        "recovery",
        &["wire", "config", "flow", "store", "analytics"],
    ),
    (
        "cluster",
        &["wire", "config", "flow", "store", "analytics", "recovery"],
    ),
];

/// External crates a module must never use: the store knows nothing of MQTT; metrics and flow
/// neither do I/O nor SQL; only the front door and the service link speak MQTT to rumqttd.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("store", &["rumqttc", "rumqttd"]),
    ("metrics", &["rumqttc", "rumqttd", "rusqlite"]),
    ("flow", &["rumqttd", "rusqlite"]),
    ("intake", &["rumqttd"]),
    ("outbox", &["rumqttd"]),
    ("analytics", &["rumqttc", "rumqttd"]),
    ("models", &["rumqttc", "rumqttd", "rusqlite"]),
];

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without its `#[cfg(test)] mod tests { ... }` tail and without comments.
fn production_code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `module -> {modules it names as crate::X}` and `module -> {external crates it names}`.
fn edges(
    src: &Path,
) -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeSet<String>>,
) {
    let mut files = Vec::new();
    source_files(src, &mut files);
    let mut internal: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut external: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|name| name.trim_end_matches(".rs").to_owned())
            .expect("a top-level name");
        let code = production_code(&std::fs::read_to_string(&file).expect("readable"));
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                internal.entry(top.clone()).or_default().insert(name);
            }
        }
        for krate in ["rumqttc", "rumqttd", "rusqlite"] {
            if code.contains(&format!("{krate}::")) {
                external
                    .entry(top.clone())
                    .or_default()
                    .insert(krate.into());
            }
        }
    }
    (internal, external)
}

#[test]
fn stages_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (internal, external) = edges(&src);
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut broken = Vec::new();
    for (module, uses) in &internal {
        if module == "cli" || module == "app" || module == "lib" || module == "main" {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            broken.push(format!("{module} is not in the layer table"));
            continue;
        };
        for used in uses {
            if !may.contains(&used.as_str()) {
                broken.push(format!("{module} uses {used}"));
            }
        }
    }
    for (module, crates) in FORBIDDEN_CRATES {
        for krate in *crates {
            if external
                .get(*module)
                .is_some_and(|used| used.contains(*krate))
            {
                broken.push(format!("{module} uses the crate {krate}"));
            }
        }
    }
    // SQL belongs to the store alone: no other module names rusqlite.
    for (module, crates) in &external {
        if module != "store" && crates.contains("rusqlite") {
            broken.push(format!("{module} uses SQL outside the store"));
        }
    }
    assert!(broken.is_empty(), "layer rules broken: {broken:?}");
}

#[test]
fn the_layer_table_has_no_cycle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Every module's allowed modules must be listed before it: the table is in layer order.
    for (position, (module, may)) in ALLOWED.iter().enumerate() {
        for used in *may {
            if *used == "wire" {
                continue;
            }
            let before = ALLOWED[..position].iter().any(|(name, _)| name == used);
            assert!(before, "{module} may use {used}, which is not below it");
            assert!(allowed.contains_key(used));
        }
    }
}

#[test]
fn wire_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("wire/src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    for file in files {
        let code = production_code(&std::fs::read_to_string(&file).expect("readable"));
        for io in ["tokio", "std::net", "std::fs", "rusqlite", "rumqttd"] {
            assert!(!code.contains(io), "{} uses {io}", file.display());
        }
    }
}
