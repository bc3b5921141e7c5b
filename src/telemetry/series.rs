//! The per-thread cache of the metric series every request records (request, Pleo call, app
//! call): building a `metrics` key allocates its label list, and the recorder then hashes it
//! and takes a lock to find the series, on every request. Each worker thread resolves a series
//! once. Bounded by the label sets, which are fixed (see `metrics.rs`).

use std::cell::RefCell;

use foldhash::{HashMap, HashMapExt};

use metrics::{Counter, Histogram};

/// A series recorded on every request: its family and labels (the status kept as a number).
pub(super) type SeriesKey = (&'static str, &'static str, &'static str, u16);

thread_local! {
    static SERIES: RefCell<HashMap<SeriesKey, (Counter, Histogram)>> = RefCell::new(HashMap::new());
}

/// Records through the thread's cached handles of `key`, made by `make` the first time. Without
/// an installed recorder (`installed` false) nothing is cached: a no-op handle would stay one.
pub(super) fn record(
    installed: bool,
    key: SeriesKey,
    make: impl FnOnce() -> (Counter, Histogram),
    record: impl FnOnce(&Counter, &Histogram),
) {
    if !installed {
        let (counter, histogram) = make();
        record(&counter, &histogram);
        return;
    }
    SERIES.with_borrow_mut(|series| {
        let (counter, histogram) = series.entry(key).or_insert_with(make);
        record(counter, histogram);
    });
}
