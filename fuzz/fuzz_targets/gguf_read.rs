//! Arbitrary bytes as a GGUF file: an error or a header, never a panic, and no allocation
//! larger than the file's bytes justify. A file that parses also has its tensors' bytes read,
//! its metadata read through every accessor and a tokenizer built from its vocabulary.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrolm_formats::gguf::GgufFile;
use ferrolm_formats::tokenizer::{IncrementalDecoder, Tokenizer};
use libfuzzer_sys::fuzz_target;

/// The system allocator, remembering the largest single request since the last reset.
struct Tracking;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// What a file of `len` bytes may make the reader allocate at once: a metadata value takes
/// 32 bytes for each byte it has in the file (an array of u8), the map of keys a few times
/// its entries' bytes.
fn justified(len: usize) -> usize {
    64 * len + 4096
}

fuzz_target!(|data: &[u8]| {
    let bytes = data.to_vec();
    LARGEST.store(0, Ordering::Relaxed);
    let parsed = GgufFile::from_bytes(bytes);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= justified(data.len()),
        "a {}-byte file made the reader allocate {largest} bytes at once",
        data.len()
    );
    let Ok(file) = parsed else { return };
    for name in &file.tensor_order {
        if let Ok(bytes) = file.tensor_bytes(name) {
            assert!(bytes.len() <= data.len());
        }
    }
    for key in file.metadata.keys() {
        let _ = (file.meta_str(key), file.meta_u64(key), file.meta_f32(key));
        let _ = file.meta_array(key);
    }
    let Ok(tok) = Tokenizer::from_gguf(&file) else {
        return;
    };
    if let Ok(ids) = tok.encode("Hello <|im_start|> wörld 123", true) {
        let mut decoder = IncrementalDecoder::new(true);
        for id in ids {
            decoder.push(&tok, id);
        }
        decoder.finish();
    }
});
