//! The last header value a worker thread made of a given kind, kept for the next request that
//! needs the same one.
//!
//! Every request to the app carries headers made from data that rarely changes between one
//! request and the next on the same thread: the client's address (twice), the session's
//! subject and scopes. Making a `HeaderValue` checks and copies the text into a new allocation;
//! a kept one is shared by a reference count. The key is compared in full, so a request never
//! gets another's value; a different key simply makes (and keeps) a new one.

use std::{borrow::Borrow, cell::RefCell, thread::LocalKey};

use axum::http::HeaderValue;

/// A thread's last value of one kind, with the key it was made from.
pub type Last<K> = RefCell<Option<(K, HeaderValue)>>;

/// The value for `key`: the one kept in `last` when it was made from an equal key, else
/// `make(key)`, which is then kept in its place. `None` when `make` has no value for `key`
/// (text that cannot be a header value); nothing is kept then.
pub fn remembered<K>(
    last: &'static LocalKey<Last<K::Owned>>,
    key: &K,
    make: impl FnOnce(&K) -> Option<HeaderValue>,
) -> Option<HeaderValue>
where
    K: ToOwned + PartialEq + ?Sized,
{
    let kept = last
        .try_with(|last| match &*last.borrow() {
            Some((seen, value)) if seen.borrow() == key => Some(value.clone()),
            _ => None,
        })
        .ok()
        .flatten();
    if kept.is_some() {
        return kept;
    }
    let value = make(key)?;
    // During the thread's teardown there is nowhere to keep it; the value is still right.
    let _ = last.try_with(|last| *last.borrow_mut() = Some((key.to_owned(), value.clone())));
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static LAST_TEXT: Last<String> = const { RefCell::new(None) };
    }

    fn value(text: &str, made: &mut u32) -> Option<HeaderValue> {
        remembered(&LAST_TEXT, text, |text| {
            *made += 1;
            HeaderValue::from_str(text).ok()
        })
    }

    #[test]
    fn an_equal_key_reuses_the_value_and_any_other_makes_its_own() {
        let mut made = 0;
        assert_eq!(value("a", &mut made).unwrap(), "a");
        assert_eq!(value("a", &mut made).unwrap(), "a");
        assert_eq!(made, 1);
        assert_eq!(value("b", &mut made).unwrap(), "b");
        assert_eq!(value("a", &mut made).unwrap(), "a");
        assert_eq!(made, 3);
        // Text that cannot be a header value has none, and the kept value stays.
        assert_eq!(value("bad\n", &mut made), None);
        assert_eq!(value("a", &mut made).unwrap(), "a");
        assert_eq!(made, 4);
    }
}
