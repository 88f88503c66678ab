//! A frame from a peer: `decode` must not panic on any bytes, and every frame that decodes
//! must encode again and decode to the same messages (what a node relays or answers with
//! is what it understood).
#![no_main]

use dtx_protocol::{decode, encode, EncodeError};
use libfuzzer_sys::{fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = decode(data) else {
        return;
    };
    let frame = match encode(&messages) {
        Ok(frame) => frame,
        // A frame written compactly (indefinite lengths are not shorter, but the encoder
        // may choose longer forms) can exceed the limit when re-encoded: refused, not a bug.
        Err(EncodeError::TooLarge { .. }) => return,
        Err(error) => panic!("a decoded frame does not encode again: {error}"),
    };
    match decode(&frame) {
        Ok(again) => assert_eq!(again, messages, "the round trip changed the messages"),
        Err(error) => panic!("a frame encoded from decoded messages does not decode: {error}"),
    }
});

// Structure-aware: most mutants stay valid CBOR of the same shape (see `mutate_cbor`).
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    dtx_fuzz::mutate_cbor(data, size, max_size, seed)
});
