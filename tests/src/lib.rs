//! Black-box tests of real `dtx` processes on 127.0.0.1 live in `tests/`; this package also
//! builds the `dtx` CLI as `dtx-under-test` so that they can start it.
#![forbid(unsafe_code)]
