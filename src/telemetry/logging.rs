//! Log set-up: human-readable text or JSON lines, filtered by `RUST_LOG` or `log.level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// lapin logs every connection failure itself, at error level, in its own words (and
/// about its own recovery, which ricochet does not use); ricochet logs each with its cause
/// and what it does next. Unless the filter names lapin, lapin is silent.
const LAPIN_QUIET: &str = "lapin=off";

pub fn init(config: &LogConfig) {
    let text = (std::env::var("RUST_LOG").ok())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| config.level.clone());
    let mut filter = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new("info"));
    if !text.contains("lapin") {
        filter = filter.add_directive(LAPIN_QUIET.parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests calling it twice) is harmless: the first subscriber stays.
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
