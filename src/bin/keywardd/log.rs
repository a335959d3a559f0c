//! The agent's log: one line per event, always.
//!
//! Log lines carry text callers control (a key file's name, a caller's
//! executable path, a reported service name). Every event is rendered
//! first and its control characters escaped (`\n`, `\r`, `\x1b`…), so
//! nothing in a field can start a line of its own and pass for the agent's
//! (a forged `ERROR` under journald, say). Colours are never written, not
//! even on a terminal: they would be control characters too.

use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the subscriber: `KEYWARD_LOG` filters (default `info`); under
/// journald (`JOURNAL_STREAM`) lines get `<N>` priorities and no time or
/// level, which journald adds itself.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let format = tracing_subscriber::fmt::format().with_ansi(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .event_format(OneLine {
                inner: format.without_time().with_level(false),
                syslog_priority: true,
            })
            .init();
    } else {
        builder
            .event_format(OneLine {
                inner: format,
                syslog_priority: false,
            })
            .init();
    }
}

/// Renders an event with `inner`, escapes its control characters and
/// writes it as one line, prefixed with its sd-daemon priority (`<N>`)
/// when `syslog_priority`.
pub struct OneLine<T> {
    inner: Format<Full, T>,
    syslog_priority: bool,
}

impl<S, N, T> FormatEvent<S, N> for OneLine<T>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    Format<Full, T>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.syslog_priority {
            let priority = match *event.metadata().level() {
                tracing::Level::ERROR => 3,
                tracing::Level::WARN => 4,
                tracing::Level::INFO => 6,
                _ => 7,
            };
            write!(writer, "<{priority}>")?;
        }
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        for c in body.chars() {
            match c {
                '\n' => writer.write_str("\\n")?,
                '\r' => writer.write_str("\\r")?,
                '\t' => writer.write_char('\t')?,
                c if c.is_control() => write!(writer, "\\u{{{:x}}}", u32::from(c))?,
                c => writer.write_char(c)?,
            }
        }
        writer.write_char('\n')
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;

    /// Everything the subscriber writes, for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(syslog_priority: bool, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(DefaultFields::default())
            .with_writer(move || sink.clone())
            .event_format(OneLine {
                inner: tracing_subscriber::fmt::format().with_ansi(false).without_time(),
                syslog_priority,
            })
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_field_with_newlines_and_escapes_stays_on_one_line() {
        let exe = "/tmp/x\nERROR keywardd: forged\r\x1b[31m";
        let text = logged(
            false,
            || tracing::warn!(caller = %exe, "auth failure {}", "reported\nagain"),
        );
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(text.ends_with('\n'));
        assert!(text.contains("WARN"), "{text:?}");
        assert!(text.contains(r"/tmp/x\nERROR keywardd: forged\r"), "{text:?}");
        assert!(text.contains(r"reported\nagain"), "{text:?}");
        assert!(!text.contains('\x1b'), "{text:?}");
    }

    #[test]
    fn journald_lines_start_with_the_priority() {
        let text = logged(true, || {
            tracing::error!("one\ntwo");
            tracing::info!("three");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert!(
            lines[0].starts_with("<3>") && lines[0].ends_with(r"one\ntwo"),
            "{text:?}"
        );
        assert!(lines[1].starts_with("<6>"), "{text:?}");
    }
}
