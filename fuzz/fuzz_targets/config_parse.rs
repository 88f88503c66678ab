//! `cluster.toml` as an operator (or a tool) might write it: parsing and validation must
//! refuse, never panic; a configuration that validates appends nothing to itself.
#![no_main]

use dtx_node::config::{ClusterConfig, ClusterFile};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<ClusterFile>(text) else {
        return;
    };
    let Ok(config) = ClusterConfig::from_file(file, Path::new("/nonexistent")) else {
        return;
    };
    match config.appended_in(&config) {
        Ok(added) => assert!(added.is_empty(), "a configuration appends to itself"),
        Err(error) => panic!("a configuration is not a valid reload of itself: {error}"),
    }
});
