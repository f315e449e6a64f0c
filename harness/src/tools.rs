//! Finds the external tools the tests and the bench drive, with the command that installs each.

use anyhow::bail;
use std::path::PathBuf;

/// The path of `name` on `PATH`, or an error carrying `install`, the command that installs it.
pub fn require_tool(name: &str, install: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    match std::env::split_paths(&path)
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
    {
        Some(found) => Ok(found),
        None => bail!("{name} is not on PATH; install it with `{install}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_names_the_install_command_otherwise() {
        assert!(require_tool("sh", "apt-get install dash").is_ok());
        let error = require_tool("harness-no-such-tool", "apt-get install it").unwrap_err();
        assert_eq!(
            error.to_string(),
            "harness-no-such-tool is not on PATH; install it with `apt-get install it`"
        );
    }
}
