//! Any configuration text, with environment variables after a NUL byte
//! (`NAME=value` lines): loading answers a configuration or a list of
//! problems, never a panic.
//!
//! Shared by the fuzz target of the same name and by the replay of the
//! committed corpora in the test suite (`tests/it/fuzzing.rs`).

use fishjam_bridge::config::Config;

/// Panics when the property fails for `data`.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let names: Vec<String> = vars.iter().map(|(name, _)| name.clone()).collect();
    let lookup = |name: &str| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.clone())
    };
    let no_files = |_: &std::path::Path| Err(std::io::Error::other("no files while fuzzing"));
    if let Ok(config) = Config::load(toml, &lookup, &names, &no_files) {
        let _ = config.describe();
    }
}
