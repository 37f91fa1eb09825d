//! LANrage's sans-IO state machines: the WireGuard mesh node, the packet demultiplexer and
//! device authentication. Nothing here touches a socket, a clock or an OS random source.

pub mod auth;
pub mod demux;
pub mod games;
pub mod lan;
pub mod lifetime;
pub mod packet;
pub mod party;
pub mod portmap;
pub mod quality;
pub mod series;
pub mod stun;
pub mod turn;
pub mod wg;

pub use demux::{PacketClass, classify};
pub use wg::{Counters, Node, PeerStats, Route, Transmit};
