//! Production assertions as findings: a panic inside a protocol call becomes an error
//! value the model records as a violation, and the panic hook stays quiet about it.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

/// Longest violation detail kept in a state (keeps states small and traces readable).
const VIOLATION_DETAIL_BYTES_MAX: usize = 300;

thread_local! {
    /// Set while a protocol call runs under `catch_unwind`: its panic is reported as a
    /// violation with a trace, so the panic hook stays quiet.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic (a failed production assertion) into `Err(message)`.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_panic_hook();
    let outer = GUARDED.with(|guarded| guarded.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|guarded| guarded.set(outer));
    result.map_err(|payload| {
        if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_string()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "panic with a non-text payload".to_string()
        }
    })
}

/// Installs, once per process, a panic hook that is silent inside [`guarded`] calls and
/// defers to the previous hook everywhere else.
fn install_quiet_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Bounds a violation detail.
pub fn clip(mut text: String) -> String {
    if text.len() > VIOLATION_DETAIL_BYTES_MAX {
        let mut end = VIOLATION_DETAIL_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
