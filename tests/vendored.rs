//! The patched h2 in `vendor/h2` is the h2 everything builds with: a `cargo update` that moves
//! h2 past the vendored version would drop the patch with only a warning (and the idle-connection
//! memory would double), so the lock file is checked here.

mod support;

use support::repo_path;

/// `(version, source)` of every `[[package]]` named `name` in a Cargo.lock.
fn locked(lock: &str, name: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    for package in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            package.lines().find_map(|line| {
                let value = line.strip_prefix(key)?.trim().strip_prefix('=')?.trim();
                Some(value.trim_matches('"').to_owned())
            })
        };
        if field("name ").as_deref() == Some(name) {
            found.push((field("version ").unwrap_or_default(), field("source ")));
        }
    }
    found
}

#[test]
fn the_lock_file_builds_the_vendored_h2() {
    let lock = std::fs::read_to_string(repo_path("Cargo.lock")).expect("Cargo.lock is committed");
    let manifest =
        std::fs::read_to_string(repo_path("vendor/h2/Cargo.toml")).expect("vendor/h2 is committed");
    let vendored = manifest
        .lines()
        .find_map(|line| line.strip_prefix("version = "))
        .map(|value| value.trim_matches('"').to_owned())
        .expect("vendor/h2/Cargo.toml names its version");
    assert_eq!(
        locked(&lock, "h2"),
        vec![(vendored.clone(), None)],
        "Cargo.lock must hold one h2, the path dependency vendor/h2 ({vendored}), not a registry one"
    );
    assert!(
        !lock.contains("[[patch.unused]]"),
        "a [patch.crates-io] entry is unused: cargo builds the registry crate instead"
    );
}

#[test]
fn the_lock_parser_sees_registry_packages() {
    // The check above wants no `source` for h2; this one shows the parser reads a `source` where
    // there is one, so a registry h2 could not pass it by a parsing miss.
    let lock = std::fs::read_to_string(repo_path("Cargo.lock")).expect("Cargo.lock is committed");
    let tokio = locked(&lock, "tokio");
    assert_eq!(tokio.len(), 1, "{tokio:?}");
    assert!(tokio[0]
        .1
        .as_deref()
        .is_some_and(|source| source.starts_with("registry+")));
}
