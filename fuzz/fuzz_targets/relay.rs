#![no_main]
//! The relay's TURN server fed scripts of datagrams from clients and peers.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lanrage_fuzz::replay(data);
});
