//! The agent's logs: `tracing` events to stderr, as text lines or one JSON object per
//! event (`--log-format`), filtered by `--log-filter` (else `WEFT_LOG`, else `RUST_LOG`,
//! else `info`) in `EnvFilter` syntax, e.g. `info,weft::mesh=debug`.
//!
//! Targets: `weft::agent` (start, stop, the API), `weft::mesh` (connections, refused
//! peers), `weft::ipam` (readiness, reclaims, removals), `weft::dataplane` (routes, failed
//! applies), `weft::fastpath`. Events that matter to an operator carry their facts as
//! fields (`peer_addr`, `reason`, `node`, `error`, ...) beside the sentence.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, DEFAULT_LOG_FILTER};

/// Checks a filter directive; the error says what is wrong with it.
pub fn check_filter(filter: &str) -> Result<(), String> {
    EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The filter in force: the config's, else `WEFT_LOG`, else `RUST_LOG`, else the default.
fn filter_of(cfg: &LogConfig) -> EnvFilter {
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let text = cfg
        .filter
        .clone()
        .or_else(|| from_env("WEFT_LOG"))
        .or_else(|| from_env("RUST_LOG"))
        .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_string());
    EnvFilter::builder()
        .parse(&text)
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
}

/// Sends this process's `tracing` events (and the `log` records of libraries) to stderr
/// as `cfg` says. A second call does nothing.
pub fn init(cfg: &LogConfig) {
    let filter = filter_of(cfg);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = if cfg.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    // Already set (a test, or a library user with its own subscriber): theirs stays.
    let _ = result;
}
