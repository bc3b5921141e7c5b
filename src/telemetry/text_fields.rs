//! How the text log formats a span's or event's fields: exactly as tracing-subscriber's
//! `DefaultFields` does, with a shortcut for the common field.
//!
//! Every request opens a span (`request_id`, `method`) and the text log formats its fields when
//! the span opens, whether or not a line is ever written inside it. `DefaultFields` does that
//! through `core::fmt` (`{:?}` of each value, plus the colour codes when colour is on): about
//! 6,000 instructions per proxied request under callgrind, 7% of the app path. A text field made
//! of printable ASCII needs none of that: its `Debug` form is the text between two quotes. Such
//! fields are written directly; every other field (the message, errors, numbers, text that
//! needs escaping, colour on) goes through `DefaultFields`' own visitor, so the output is the
//! same byte for byte (the tests compare the two).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::{RecordFields, VisitOutput},
    fmt::{
        FormatFields,
        format::{DefaultVisitor, Writer},
    },
};

/// The text log's field formatter (see the module's documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'a> {
    writer: Writer<'a>,
    /// Whether no field has been written yet (fields are separated by one space).
    is_empty: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    /// Hands one field to `DefaultFields`' visitor, which writes it after the separator.
    fn default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }
}

/// Whether `value`'s `Debug` form is `"value"`: printable ASCII without `"` and `\`.
pub(super) fn needs_no_escaping(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// `parts` joined in `buf`, if they fit: written in one piece instead of one per part, since a
/// span's text grows from empty and each write may reallocate it.
pub(super) fn joined<'b, 'p>(
    buf: &'b mut [u8],
    parts: impl IntoIterator<Item = &'p [u8]>,
) -> Option<&'b str> {
    let mut len = 0;
    for part in parts {
        let end = len + part.len();
        buf.get_mut(len..end)?.copy_from_slice(part);
        len = end;
    }
    std::str::from_utf8(buf.get(..len)?).ok()
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // `DefaultVisitor` skips the `log.*` metadata fields without a separator.
        if name.starts_with("log.") {
            return;
        }
        if name == "message"
            || name.starts_with("r#")
            || self.writer.has_ansi_escapes()
            || !needs_no_escaping(value)
        {
            return self.default(|v| v.record_str(field, value));
        }
        let separator = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        let parts = [separator, name, "=\"", value, "\""];
        let mut line = [0u8; 128];
        self.result = match joined(&mut line, parts.map(str::as_bytes)) {
            Some(text) => self.writer.write_str(text),
            None => parts
                .into_iter()
                .try_for_each(|part| self.writer.write_str(part)),
        };
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.default(|v| v.record_debug(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.default(|v| v.record_error(field, value));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tracing_subscriber::{fmt::format::DefaultFields, prelude::*};

    use super::*;
    use crate::test_support::LogSink;

    /// Formats the fields of one span and one event, inside it, with `fields` and ANSI `ansi`.
    fn log_with<F>(fields: F, ansi: bool, id: &str, method: &str, note: &str) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = LogSink::default();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(fields)
            .with_ansi(ansi)
            .without_time()
            .with_writer(out.writer());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = id, method, r#type = "x");
            let _entered = span.enter();
            let error = std::io::Error::other("boom");
            let error: &(dyn std::error::Error + 'static) = &error;
            tracing::warn!(
                session = note,
                count = 3,
                flag = true,
                error,
                "something {} happened",
                note
            );
        });
        out.text()
    }

    #[test]
    fn a_plain_span_reads_as_the_default_formatter_writes_it() {
        let ours = log_with(TextFields, false, "a1b2-c3", "GET", "n");
        assert_eq!(
            ours,
            log_with(DefaultFields::new(), false, "a1b2-c3", "GET", "n")
        );
        assert!(
            ours.contains(r#"request{request_id="a1b2-c3" method="GET" type="x"}"#),
            "{ours}"
        );
    }

    proptest! {
        /// Whatever the text (quotes, backslashes, control characters, escape sequences,
        /// non-ASCII) and with colour on or off, the line is the default formatter's.
        #[test]
        fn every_line_is_the_default_formatters(
            id in "\\PC{0,12}|[ -~]{0,12}|[a-z]{100,140}|[a-z\"\\\\\u{1b}\\[]{0,6}",
            method in "[A-Z]{0,7}|.{0,4}",
            note in ".{0,8}",
            ansi: bool,
        ) {
            prop_assert_eq!(
                log_with(TextFields, ansi, &id, &method, &note),
                log_with(DefaultFields::new(), ansi, &id, &method, &note)
            );
        }
    }
}
