//! Log set-up: human-readable text or JSON lines, filtered by `RUST_LOG` or `log.level`.
//! Text is coloured only when stderr is a terminal and `NO_COLOR` is unset or empty: a
//! container's log is a file or a pipe, where colour codes would break `grep`.
//!
//! Beside the log itself, a layer the caller hands in may watch a dependency's own log
//! lines, whatever the log level (a source may hand one in: see `main.rs`).

use std::io::IsTerminal;

use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// lapin logs every connection failure itself, at error level, in its own words (and
/// about its own recovery, which ricochet does not use); ricochet logs each with its cause
/// and what it does next. Unless the filter names lapin, lapin is silent.
const LAPIN_QUIET: &str = "lapin=off";

/// Installs the log, with `watch`: a layer that watches a dependency's own log lines
/// (handed in by a source that needs one).
pub fn init<W>(config: &LogConfig, watch: W)
where
    W: Layer<Registry> + Send + Sync + 'static,
{
    let text = (std::env::var("RUST_LOG").ok())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| config.level.clone());
    let mut filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    if !text.contains("lapin") {
        filter = filter.add_directive(LAPIN_QUIET.parse().expect("a valid directive"));
    }
    let registry = tracing_subscriber::registry().with(watch);
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let log = (tracing_subscriber::fmt::layer())
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init (tests calling it twice) is harmless: the first subscriber stays.
    let _ = match config.format {
        LogFormat::Text => registry.with(log.with_filter(filter)).try_init(),
        LogFormat::Json => registry.with(log.json().with_filter(filter)).try_init(),
    };
}

/// Whether text logs are coloured: only on a terminal, and never with `NO_COLOR` set to
/// anything but the empty string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }
}
