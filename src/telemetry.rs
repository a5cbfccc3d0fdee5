//! Builds the tracing subscriber: filter from `RUST_LOG` (default `info`), JSON lines in
//! production, readable lines on a terminal. Logs go to stderr so stdout stays for results.

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the global subscriber; a second call is a no-op (tests call it repeatedly).
/// `quiet_amqp` leaves lapin's own logs out unless `RUST_LOG` asks for them: a one-shot command
/// reports its broker errors itself, and lapin logs every expected refusal (a passive
/// declaration of a queue that does not exist) as an ERROR.
pub fn init(format: LogFormat, quiet_amqp: bool) {
    let default = if quiet_amqp { "info,lapin=off" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: never into pipes and log files, nor with NO_COLOR.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
