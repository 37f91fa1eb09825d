#![no_main]
//! Every parser that sees bytes from the network before anything is authenticated:
//! the demultiplexer, STUN Binding, TURN messages (client and relay views), ChannelData.

use libfuzzer_sys::fuzz_target;
use lanrage_core::{classify, stun, turn};

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    let _ = stun::parse(data);
    let _ = stun::parse_request(data);
    if let Some(msg) = turn::decode(data) {
        // Whatever decodes must encode again.
        let _ = turn::encode(msg);
    }
    let _ = turn::decode_request(data);
    let _ = turn::channel_number(data);
    let _ = turn::parse_channel_data(data);
    let _ = stun::raw_attribute(data, 0x0003);
});
