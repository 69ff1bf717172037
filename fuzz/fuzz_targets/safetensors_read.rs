//! The safetensors reader on arbitrary bytes: an error or a file whose every tensor's bytes
//! lie within the input and hold exactly dtype × shape; never a panic.
#![no_main]

use std::path::Path;

use ferrolm_formats::hf::safetensors::SafetensorsFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = SafetensorsFile::from_bytes(Path::new("fuzz.safetensors"), data.to_vec()) else {
        return;
    };
    let names: Vec<String> = f.names().map(str::to_string).collect();
    for name in &names {
        assert!(f.info(name).is_some());
        if let Ok(t) = f.tensor(name) {
            let n: usize = t.shape.iter().product();
            assert_eq!(t.bytes.len(), n * t.dtype.size_in_bytes(), "{name}");
        }
    }
});
