//! How the JSON log keeps a span's fields: exactly as tracing-subscriber's `JsonFields` does
//! (one JSON object, names in sorted order), with a shortcut for spans of plain text fields.
//!
//! Every request opens a span (`request_id`, `method`), and the JSON log serialises its fields
//! when it opens: `JsonFields` copies each value into a `serde_json::Value` in a map, then
//! serialises the map, about 4,500 instructions per request more than the text log's shortcut
//! (`text_fields.rs`). When every field is text that JSON writes as it is (printable ASCII
//! without `"` and `\`), the object is written directly; anything else goes to `JsonFields`, and
//! fields recorded later are merged as `JsonFields` merges them, so the text is the same (the
//! tests compare whole lines).

use std::{collections::BTreeMap, fmt};

use tracing::{
    field::{Field, Visit},
    span::Record,
};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{
        FormatFields, FormattedFields,
        format::{JsonFields, Writer},
    },
};

use super::text_fields::{joined, needs_no_escaping};

/// The JSON log's span field formatter (see the module's documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut plain = PlainFields::default();
        fields.record(&mut plain);
        match plain.object() {
            Some(object) => writer.write_str(object),
            None => JsonFields::new().format_fields(writer, fields),
        }
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // As `JsonFields` does: parse what is there, add the new fields, write the whole again.
        let mut merged: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&current.fields).map_err(|_| fmt::Error)?;
        let mut added = String::new();
        JsonFields::new().format_fields(Writer::new(&mut added), fields)?;
        let added: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&added).map_err(|_| fmt::Error)?;
        merged.extend(added);
        current.fields = serde_json::to_string(&merged).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// The most fields the shortcut takes, and the most bytes of their object.
const MAX_FIELDS: usize = 4;
const MAX_OBJECT: usize = 256;

/// Collects plain text fields; gives up (`fits` false) at anything else.
struct PlainFields {
    names: [&'static str; MAX_FIELDS],
    /// Where each field's value sits in `values`.
    spans: [(usize, usize); MAX_FIELDS],
    count: usize,
    values: [u8; MAX_OBJECT],
    used: usize,
    fits: bool,
    object: [u8; MAX_OBJECT],
}

impl Default for PlainFields {
    fn default() -> Self {
        Self {
            names: [""; MAX_FIELDS],
            spans: [(0, 0); MAX_FIELDS],
            count: 0,
            values: [0; MAX_OBJECT],
            used: 0,
            fits: true,
            object: [0; MAX_OBJECT],
        }
    }
}

impl PlainFields {
    /// The fields as `JsonFields` writes them, if every one was plain and they fit.
    fn object(&mut self) -> Option<&str> {
        if !self.fits {
            return None;
        }
        let mut order = [0, 1, 2, 3];
        let order = &mut order[..self.count];
        order.sort_unstable_by_key(|&i| self.names[i]);
        // A name recorded twice keeps its last value in `JsonFields`' map: not taken here.
        if order
            .windows(2)
            .any(|pair| self.names[pair[0]] == self.names[pair[1]])
        {
            return None;
        }
        let fields = order.iter().enumerate().flat_map(|(n, &i)| {
            let (start, end) = self.spans[i];
            let open: &[u8] = if n == 0 { b"\"" } else { b",\"" };
            [
                open,
                self.names[i].as_bytes(),
                b"\":\"",
                &self.values[start..end],
                b"\"",
            ]
        });
        let object = std::iter::once(&b"{"[..])
            .chain(fields)
            .chain(std::iter::once(&b"}"[..]));
        joined(&mut self.object, object)
    }
}

impl Visit for PlainFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        let end = self.used + value.len();
        if !self.fits
            || self.count == MAX_FIELDS
            || !needs_no_escaping(name)
            || !needs_no_escaping(value)
        {
            self.fits = false;
            return;
        }
        let Some(slot) = self.values.get_mut(self.used..end) else {
            self.fits = false;
            return;
        };
        slot.copy_from_slice(value.as_bytes());
        self.names[self.count] = name;
        self.spans[self.count] = (self.used, end);
        self.count += 1;
        self.used = end;
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {
        self.fits = false;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tracing_subscriber::prelude::*;

    use super::*;
    use crate::test_support::LogSink;

    /// The JSON lines of one span, a field recorded on it later and an event inside it.
    fn log_with<F>(fields: F, id: &str, method: &str, later: &str) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = LogSink::default();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .fmt_fields(fields)
            .without_time()
            .with_writer(out.writer());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = id,
                method,
                later = tracing::field::Empty
            );
            span.in_scope(|| tracing::warn!(n = 1, "before"));
            if !later.is_empty() {
                span.record("later", later);
            }
            span.in_scope(|| tracing::warn!(note = later, "after"));
            let numbers = tracing::info_span!("numbers", count = 3, flag = true, id);
            numbers.in_scope(|| tracing::warn!("inside"));
        });
        out.text()
    }

    #[test]
    fn a_plain_span_reads_as_json_fields_writes_it() {
        let ours = log_with(JsonSpanFields, "a1b2-c3", "GET", "server");
        assert_eq!(
            ours,
            log_with(JsonFields::new(), "a1b2-c3", "GET", "server")
        );
        assert!(
            ours.contains(r#""spans":[{"method":"GET","request_id":"a1b2-c3","name":"request"}]"#),
            "{ours}"
        );
    }

    #[test]
    fn plain_text_fields_take_the_shortcut_and_others_do_not() {
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::info_span!("x", request_id = "r-1", method = "GET", n = 1);
        let fields = span.metadata().expect("an enabled span").fields();
        let field = |name| fields.field(name).unwrap();
        let mut plain = PlainFields::default();
        plain.record_str(&field("request_id"), "r-1");
        plain.record_str(&field("method"), "GET");
        assert_eq!(
            plain.object(),
            Some(r#"{"method":"GET","request_id":"r-1"}"#)
        );
        plain.record_debug(&field("n"), &1);
        assert_eq!(plain.object(), None, "a number goes to JsonFields");
        let mut quoted = PlainFields::default();
        quoted.record_str(&field("method"), "G\"T");
        assert_eq!(quoted.object(), None, "a quote needs escaping");
    }

    proptest! {
        /// Whatever the text (quotes, backslashes, control characters, non-ASCII, long), and
        /// with a field recorded later, the lines are `JsonFields`' lines.
        #[test]
        fn every_line_is_json_fields_line(
            id in "\\PC{0,12}|[ -~]{0,12}|[a-z]{200,300}|[a-z\"\\\\\u{1}\u{7f}]{0,6}",
            method in "[A-Z]{0,7}|.{0,4}",
            later in "|[a-z]{1,8}|\\PC{0,4}",
        ) {
            prop_assert_eq!(
                log_with(JsonSpanFields, &id, &method, &later),
                log_with(JsonFields::new(), &id, &method, &later)
            );
        }
    }
}
