//! Logging of the long-running processes, configured by Ballista's own flags.

use std::io;

use ballista_core::config::LogRotationPolicy;
use tracing_appender::rolling;
use tracing_subscriber::EnvFilter;

/// Where and how a scheduler or executor logs.
#[derive(Debug, Clone)]
pub struct LogSettings<'a> {
    /// `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    pub filter: &'a str,
    /// Log to files in this folder instead of stdout.
    pub dir: Option<&'a str>,
    pub file_prefix: String,
    pub rotation: LogRotationPolicy,
    pub thread_info: bool,
}

/// Installs the global subscriber; also routes `log` records (ours, DataFusion's) into it.
pub fn init(settings: &LogSettings) {
    let filter = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_else(|_| settings.filter.to_owned());
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_thread_names(settings.thread_info)
        .with_thread_ids(settings.thread_info)
        .with_env_filter(EnvFilter::new(filter));
    match settings.dir {
        Some(dir) => {
            let prefix = settings.file_prefix.as_str();
            let writer = match settings.rotation {
                LogRotationPolicy::Minutely => rolling::minutely(dir, prefix),
                LogRotationPolicy::Hourly => rolling::hourly(dir, prefix),
                LogRotationPolicy::Daily => rolling::daily(dir, prefix),
                LogRotationPolicy::Never => rolling::never(dir, prefix),
            };
            builder.with_writer(writer).init();
        }
        None => builder.with_writer(io::stdout).init(),
    }
}
