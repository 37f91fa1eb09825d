//! Writes the seed corpus: real exchanges between LANrage's TURN client and the relay
//! (Allocate with its 401 round, permissions, channel binding, Send and ChannelData, peer
//! data, refresh), so the fuzzer starts from messages that pass authentication.
//!
//! `cargo run --bin seeds -- corpus` (from `fuzz/`).

use std::time::{Duration, Instant};

use lanrage_core::turn::{self, TurnClient};
use lanrage_fuzz::{SECRET, UNIX, listen, server, source, step};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let relay_dir = format!("{dir}/relay");
    let codec_dir = format!("{dir}/stun_codec");
    std::fs::create_dir_all(&relay_dir).expect("corpus dir");
    std::fs::create_dir_all(&codec_dir).expect("corpus dir");
    let mut s = server();
    let now = Instant::now();
    let creds = turn::rest_credentials(SECRET, "fuzz", UNIX + 3600);
    let mut client = TurnClient::new(listen(), creds, 1, now);
    let mut script = Vec::new();
    let mut messages = Vec::new();
    let pump = |client: &mut TurnClient, s: &mut lanrage_relay::turn::Server, script: &mut Vec<u8>, messages: &mut Vec<Vec<u8>>| {
        while let Some(bytes) = client.poll_transmit() {
            script.extend(step(0, 0, &bytes));
            messages.push(bytes.clone());
            if let Some(out) = s.handle_client(listen(), source(0), &bytes, now, UNIX) {
                messages.push(out.payload.clone());
                client.handle_datagram(&out.payload, now);
            }
        }
    };
    pump(&mut client, &mut s, &mut script, &mut messages);
    let relayed = client.relayed().expect("allocated");
    client.set_peers([source(2).ip()], now);
    pump(&mut client, &mut s, &mut script, &mut messages);
    let send = client.send(source(2), b"lobby announcement", now).expect("send");
    script.extend(step(0, 0, &send));
    messages.push(send);
    pump(&mut client, &mut s, &mut script, &mut messages);
    let data = client.send(source(2), b"channel data", now).expect("send");
    script.extend(step(0, 0, &data));
    messages.push(data);
    script.extend(step(1, 2 + 4 * u8::try_from(relayed.port() - 50_000).unwrap_or(0), b"reply"));
    script.extend(step(2, 0, &[0; 5]));
    client.handle_timeout(now + Duration::from_secs(5));
    pump(&mut client, &mut s, &mut script, &mut messages);
    std::fs::write(format!("{relay_dir}/exchange"), &script).expect("write");
    for (i, m) in messages.iter().enumerate() {
        std::fs::write(format!("{codec_dir}/msg{i:02}"), m).expect("write");
        std::fs::write(format!("{relay_dir}/single{i:02}"), step(0, 0, m)).expect("write");
    }
    println!("{} messages, script of {} bytes", messages.len(), script.len());
}
