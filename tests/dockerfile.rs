//! The Dockerfile without a Docker engine: every COPY source exists and is not dockerignored,
//! and the build context it assembles is a workspace cargo can load with the same `--locked`.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use support::repo_path;

/// Instructions of the Dockerfile, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// `(sources, destination)` of each COPY from the build context (not `--from=`).
fn context_copies(instructions: &[String]) -> Vec<(Vec<String>, String)> {
    instructions
        .iter()
        .filter_map(|instruction| instruction.strip_prefix("COPY "))
        .filter(|arguments| !arguments.contains("--from="))
        .map(|arguments| {
            let mut parts: Vec<String> = arguments.split_whitespace().map(str::to_string).collect();
            let destination = parts.pop().expect("COPY destination");
            (parts, destination)
        })
        .collect()
}

fn is_ignored(relative: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('/');
        relative == pattern || relative.starts_with(&format!("{pattern}/"))
    })
}

fn copy_tree(source: &Path, destination: &Path) {
    if source.is_dir() {
        std::fs::create_dir_all(destination).expect("create directory");
        for entry in std::fs::read_dir(source).expect("read directory") {
            let entry = entry.expect("entry");
            copy_tree(&entry.path(), &destination.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::copy(source, destination).expect("copy file");
    }
}

#[test]
fn dockerfile_copies_what_exists_and_its_build_command_is_valid() {
    let text = std::fs::read_to_string(repo_path("Dockerfile")).expect("read Dockerfile");
    let instructions = instructions(&text);
    let ignore: Vec<String> = std::fs::read_to_string(repo_path(".dockerignore"))
        .expect("a .dockerignore keeps target/ and .git/ out of the build context")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(
        is_ignored("target", &ignore),
        ".dockerignore must exclude target/"
    );

    // Multi-stage, non-root, the binary as entrypoint.
    let froms = instructions
        .iter()
        .filter(|instruction| instruction.starts_with("FROM "))
        .count();
    assert!(froms >= 2, "multi-stage build expected");
    let user = instructions
        .iter()
        .rev()
        .find_map(|instruction| instruction.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runtime user must not be root: {user}"
    );
    assert!(
        instructions
            .iter()
            .any(|instruction| instruction == r#"ENTRYPOINT ["/usr/local/bin/adaptive-eds"]"#),
        "the binary is the entrypoint"
    );
    let build = "RUN cargo build --release --locked --bin adaptive-eds";
    assert!(
        instructions.iter().any(|instruction| instruction == build),
        "expected `{build}`"
    );

    // Assemble the build context as the COPYs do, then let cargo load it --locked.
    let context = tempfile::tempdir().expect("tempdir");
    for (sources, destination) in context_copies(&instructions) {
        for source in &sources {
            let path = repo_path(source);
            assert!(
                path.exists(),
                "Dockerfile: COPY {source}: no such file in the repository"
            );
            assert!(
                !is_ignored(source, &ignore),
                "Dockerfile: COPY {source}: excluded by .dockerignore"
            );
            let target: PathBuf = if destination.ends_with('/') || sources.len() > 1 {
                context
                    .path()
                    .join(&destination)
                    .join(Path::new(source).file_name().expect("name"))
            } else {
                context.path().join(&destination)
            };
            copy_tree(&path, &target);
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--locked", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(context.path().join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "the Docker build context is not a loadable, locked workspace:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let has_binary = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|package| {
            package["name"] == "adaptive-eds"
                && package["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|target| {
                        target["name"] == "adaptive-eds"
                            && target["kind"]
                                .as_array()
                                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
                    })
        });
    assert!(has_binary, "--bin adaptive-eds names no binary target");
    for file in ["build.rs", "proto", "src/main.rs"] {
        assert!(
            context.path().join(file).exists(),
            "the build needs {file} in the context"
        );
    }
}
