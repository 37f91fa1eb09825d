//! Live connections: pushes membership changes and relays signalling to connected devices.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lanrage_proto::DeviceKey;
use lanrage_proto::api::ServerMessage;
use tokio::sync::mpsc;

/// Messages queued per connection before it counts as stuck and is dropped; a dropped client
/// reconnects and receives a fresh full view.
pub const CONNECTION_QUEUE: usize = 128;

/// Open connections of one device: (connection id, its queue).
type Conns = HashMap<DeviceKey, Vec<(u64, mpsc::Sender<ServerMessage>)>>;

/// Every open WebSocket, by device.
#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    conns: Mutex<Conns>,
}

impl Hub {
    /// Registers a connection; the receiver ends when the hub drops it. A device holds at
    /// most `cap` connections: past it the oldest is told why and closed, so a client that
    /// reconnects before its old socket is noticed dead always gets in.
    pub fn register(&self, key: DeviceKey, cap: usize) -> (u64, mpsc::Receiver<ServerMessage>) {
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.lock();
        let list = conns.entry(key).or_default();
        list.push((id, tx));
        while list.len() > cap.max(1) {
            let (_, oldest) = list.remove(0);
            let _ = oldest.try_send(ServerMessage::Error {
                error: format!(
                    "too_many_connections: this device has more than {cap} open; closing the oldest"
                ),
            });
            tracing::debug!("WebSocket cap reached; closing this device's oldest");
        }
        drop(conns);
        (id, rx)
    }

    /// Forgets a connection.
    pub fn unregister(&self, key: &DeviceKey, id: u64) {
        let mut conns = self.lock();
        if let Some(list) = conns.get_mut(key) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                conns.remove(key);
            }
        }
    }

    /// Sends to every connection of `key`; a connection whose queue is full is dropped.
    pub fn send(&self, key: &DeviceKey, msg: &ServerMessage) -> bool {
        let mut conns = self.lock();
        let Some(list) = conns.get_mut(key) else {
            return false;
        };
        list.retain(|(_, tx)| tx.try_send(msg.clone()).is_ok());
        let any = !list.is_empty();
        if !any {
            conns.remove(key);
        }
        any
    }

    /// Open connections, over all devices (for metrics).
    pub fn connections(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        // A poisoned lock only means another thread panicked mid-update of a map that stays
        // consistent (each operation is a single insert/retain); keep serving.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}
