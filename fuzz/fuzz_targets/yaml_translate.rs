//! Arbitrary text as a config file: parsing must report errors, never
//! panic, and whatever parses must translate without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_control::{
    source::{yaml::parse_file, ConfigSnapshot},
    translate::{translate, MeshConfig},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut snapshot = ConfigSnapshot::default();
    for result in parse_file(std::path::Path::new("fuzz.yaml"), text) {
        match result {
            Ok(object) => {
                snapshot.objects.insert(object.key(), object);
            }
            Err(error) => snapshot.errors.push(error),
        }
    }
    let _ = translate(&snapshot, &MeshConfig::default());
});
