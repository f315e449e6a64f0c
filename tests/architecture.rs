//! Keeps the direction of docs/ARCHITECTURE.md: reads every `crate::` path and `use` line under
//! `src/` and checks which rooms import which, and that the server never uses the test harness.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Sources of endpoints and load.
const SOURCES: &[&str] = &["discovery", "metrics", "lrs"];
/// Serving: reads snapshots only.
const SERVING: &[&str] = &["xds", "inspect", "admin"];
/// Shared by sources and serving, so neither has to import the other: the xDS port under xDS
/// and LRS (`transport`), and the sink every load source writes (`samples`).
const SHARED: &[&str] = &["transport", "samples"];
/// Wiring: nobody else may import these.
const WIRING: &[&str] = &["server", "engine", "main"];

/// Known departures from the map, each with the reason and the issue that removes it. The test
/// fails when one of these no longer happens, so the list can only shrink.
const KNOWN: &[(&str, &str, &str)] = &[];

/// Words that mean I/O or a clock; weighting must use none of them.
const IO_WORDS: &[&str] = &[
    "tokio",
    "tonic",
    "reqwest",
    "axum",
    "hyper",
    "std::fs",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "SystemTime",
    "Instant",
    "std::env",
];

fn rust_files(directory: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The room of a file: its first component under `src/`, without `.rs`.
fn room(source: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(source).unwrap_or(file);
    let first = relative
        .components()
        .next()
        .map(|component| component.as_os_str().to_string_lossy().to_string())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without `//` comments (doc comments name other rooms freely).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(position) if !line[..position].contains('"') => &line[..position],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rooms a file's code names as `crate::ROOM` (also inside `use crate::{a, b}` groups).
fn imports(code: &str) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    for (position, _) in code.match_indices("crate::") {
        let rest = &code[position + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    rooms.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                rooms.insert(name);
            }
        }
    }
    rooms
}

/// Room -> (imported room -> a file that imports it), and room -> its code.
fn graph() -> (
    BTreeMap<String, BTreeMap<String, String>>,
    BTreeMap<String, String>,
) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&source, &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let room = room(&source, &file);
        let text = fs::read_to_string(&file).unwrap_or_else(|error| panic!("{file:?}: {error}"));
        let code = code(&text);
        let entry = edges.entry(room.clone()).or_default();
        for imported in imports(&code) {
            if imported != room {
                entry
                    .entry(imported)
                    .or_insert_with(|| file.display().to_string());
            }
        }
        texts.entry(room).or_default().push_str(&code);
    }
    (edges, texts)
}

fn known(from: &str, to: &str) -> bool {
    KNOWN
        .iter()
        .any(|(known_from, known_to, _)| *known_from == from && *known_to == to)
}

#[test]
fn weighting_imports_only_the_vocabulary_and_no_io() {
    let (edges, texts) = graph();
    let imported: Vec<&String> = edges["weighting"].keys().collect();
    assert!(
        imported.iter().all(|room| *room == "model"),
        "weighting imports {imported:?}"
    );
    let code = &texts["weighting"];
    for word in IO_WORDS {
        assert!(!code.contains(word), "weighting uses {word}");
    }
}

#[test]
fn sources_and_serving_never_import_each_other() {
    let (edges, _) = graph();
    let mut found = Vec::new();
    for (from, tos) in &edges {
        for (to, file) in tos {
            let crosses = (SOURCES.contains(&from.as_str()) && SERVING.contains(&to.as_str()))
                || (SERVING.contains(&from.as_str()) && SOURCES.contains(&to.as_str()))
                || (SOURCES.contains(&from.as_str()) && SOURCES.contains(&to.as_str()));
            if crosses && !known(from, to) {
                found.push(format!("{from} -> {to} ({file})"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
    for (from, to, why) in KNOWN {
        assert!(
            edges.get(*from).is_some_and(|tos| tos.contains_key(*to)),
            "{from} -> {to} is gone: remove it from KNOWN ({why})"
        );
    }
}

#[test]
fn the_shared_rooms_import_no_source_and_no_serving() {
    let (edges, _) = graph();
    for shared in SHARED {
        let imported = edges
            .get(*shared)
            .unwrap_or_else(|| panic!("no room {shared} under src/"));
        for (to, file) in imported {
            assert!(
                !SOURCES.contains(&to.as_str()) && !SERVING.contains(&to.as_str()),
                "{shared} imports {to} ({file})"
            );
        }
    }
}

#[test]
fn snapshot_imports_no_source_and_no_one_imports_the_wiring() {
    let (edges, _) = graph();
    for source in SOURCES {
        assert!(
            !edges["snapshot"].contains_key(*source),
            "snapshot imports {source}"
        );
    }
    for (from, tos) in &edges {
        if from == "server" || from == "main" || from == "lib" {
            continue;
        }
        for wiring in WIRING {
            assert!(
                !tos.contains_key(*wiring) || from == wiring,
                "{from} imports {wiring} ({})",
                tos[*wiring]
            );
        }
    }
}

#[test]
fn config_imports_no_source_and_only_its_reload_publishes_settings() {
    let (edges, _) = graph();
    for source in SOURCES.iter().chain(&["lrs", "xds", "snapshot", "engine"]) {
        assert!(
            !edges["config"].contains_key(*source),
            "config imports {source} ({})",
            edges["config"][*source]
        );
    }
    // The settings channel has one sender, beside the one reader of the file: an endpoint
    // source that published settings would tie reloads to one source of endpoints.
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&source, &mut files);
    let publisher = source.join("config").join("reload.rs");
    let mut senders = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap_or_else(|error| panic!("{file:?}: {error}"));
        if code(&text).contains("Sender<Arc<AdaptiveConfig>>") {
            senders.push(file);
        }
    }
    assert_eq!(senders, [publisher], "settings senders");
}

#[test]
fn no_import_circle_between_rooms() {
    let (edges, _) = graph();
    // Depth-first search for a back edge, reporting the circle.
    fn visit(
        room: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == room) {
            let mut circle = path[start..].to_vec();
            circle.push(room.to_string());
            return Some(circle);
        }
        if done.contains(room) {
            return None;
        }
        path.push(room.to_string());
        for next in edges.get(room).into_iter().flat_map(|tos| tos.keys()) {
            if edges.contains_key(next) {
                if let Some(circle) = visit(next, edges, path, done) {
                    return Some(circle);
                }
            }
        }
        path.pop();
        done.insert(room.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for room in edges.keys() {
        if room == "lib" {
            continue;
        }
        let circle = visit(room, &edges, &mut Vec::new(), &mut done);
        assert!(circle.is_none(), "import circle: {circle:?}");
    }
}

#[test]
fn the_server_never_uses_the_process_harness() {
    let (_, texts) = graph();
    for (room, code) in &texts {
        let named = code.match_indices("harness::").any(|(position, _)| {
            !code[..position]
                .chars()
                .next_back()
                .is_some_and(|before| before.is_alphanumeric() || before == '_')
        });
        assert!(
            !named,
            "src/{room} names the harness crate, which only tests and lab use"
        );
    }
    // Only as a dev-dependency can src/ not import it at all.
    let manifest = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("read Cargo.toml");
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if line.starts_with("harness = {") || line.starts_with("harness.") {
            assert_eq!(
                section, "[dev-dependencies]",
                "harness is a dev-dependency only"
            );
        }
    }
}

#[test]
fn the_reader_sees_grouped_and_nested_paths() {
    let code = code("use crate::{model::Endpoint, weighting};\nlet x = crate::snapshot::Snapshot; // crate::xds");
    let rooms: Vec<String> = imports(&code).into_iter().collect();
    assert_eq!(rooms, ["model", "snapshot", "weighting"]);
}
