//! A NAT as RFC 4787 describes it: a mapping behaviour (which outgoing flows share a public
//! port), a filtering behaviour (who may send in through a mapping), port preservation or
//! random ports, and a mapping lifetime refreshed by traffic either way.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// RFC 4787 §4.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// RFC 4787 §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// One NAT's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatModel {
    pub name: &'static str,
    pub mapping: Mapping,
    pub filtering: Filtering,
    /// Keep the internal port when it is free (Linux MASQUERADE); otherwise a random one
    /// (`--random-fully`).
    pub preserve_port: bool,
    /// A mapping unused this long is gone (Linux: 30 s for an unanswered UDP flow, 120 s
    /// once answered; one figure here).
    pub lifetime: Duration,
}

impl NatModel {
    /// Linux MASQUERADE behind a stateful firewall: "port-restricted cone".
    pub const CONE: Self = Self::new(
        "cone",
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        true,
    );
    /// Any sender may use a mapping: "full cone".
    pub const FULL_CONE: Self = Self::new(
        "fullcone",
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
        true,
    );
    /// Any port of an IP the mapping sent to: "restricted cone".
    pub const RESTRICTED: Self = Self::new(
        "restricted",
        Mapping::EndpointIndependent,
        Filtering::AddressDependent,
        true,
    );
    /// MASQUERADE --random-fully: a new random port per destination, "symmetric".
    pub const SYMMETRIC: Self = Self::new(
        "symmetric",
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
        false,
    );

    const fn new(
        name: &'static str,
        mapping: Mapping,
        filtering: Filtering,
        preserve_port: bool,
    ) -> Self {
        Self {
            name,
            mapping,
            filtering,
            preserve_port,
            lifetime: Duration::from_secs(60),
        }
    }

    /// Endpoint-dependent mapping: what LANrage calls a hard NAT.
    pub fn hard(&self) -> bool {
        self.mapping != Mapping::EndpointIndependent
    }
}

/// Which outgoing flows share a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Any,
    Ip(IpAddr),
    Addr(SocketAddr),
}

#[derive(Debug)]
struct Binding {
    internal: SocketAddr,
    key: Key,
    last_used: Instant,
    /// Remote addresses this mapping has sent to (for filtering).
    sent_to: Vec<SocketAddr>,
}

/// The port range a Linux NAT picks random ports from.
const PORT_MIN: u16 = 1024;

/// One NAT box: its model, public IP and live mappings.
#[derive(Debug)]
pub struct Nat {
    pub model: NatModel,
    pub public_ip: Ipv4Addr,
    by_port: HashMap<u16, Binding>,
    by_flow: HashMap<(SocketAddr, Key), u16>,
    rng: StdRng,
}

impl Nat {
    pub fn new(model: NatModel, public_ip: Ipv4Addr, seed: u64) -> Self {
        Self {
            model,
            public_ip,
            by_port: HashMap::new(),
            by_flow: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Mappings alive now.
    pub fn mappings(&self) -> usize {
        self.by_port.len()
    }

    fn expire(&mut self, port: u16, now: Instant) {
        let lifetime = self.model.lifetime;
        if let Some(b) = self.by_port.get(&port)
            && now.saturating_duration_since(b.last_used) > lifetime
        {
            self.by_flow.remove(&(b.internal, b.key));
            self.by_port.remove(&port);
        }
    }

    /// An outgoing datagram from `internal` to `remote`: the public source it leaves with.
    pub fn outbound(
        &mut self,
        internal: SocketAddr,
        remote: SocketAddr,
        now: Instant,
    ) -> SocketAddr {
        let key = match self.model.mapping {
            Mapping::EndpointIndependent => Key::Any,
            Mapping::AddressDependent => Key::Ip(remote.ip()),
            Mapping::AddressAndPortDependent => Key::Addr(remote),
        };
        if let Some(&port) = self.by_flow.get(&(internal, key)) {
            self.expire(port, now);
        }
        let port = match self.by_flow.get(&(internal, key)) {
            Some(&port) => port,
            None => {
                let port = self.free_port(internal.port());
                self.by_port.insert(
                    port,
                    Binding {
                        internal,
                        key,
                        last_used: now,
                        sent_to: Vec::new(),
                    },
                );
                self.by_flow.insert((internal, key), port);
                port
            }
        };
        if let Some(b) = self.by_port.get_mut(&port) {
            b.last_used = now;
            if !b.sent_to.contains(&remote) {
                b.sent_to.push(remote);
            }
        }
        SocketAddr::new(IpAddr::V4(self.public_ip), port)
    }

    fn free_port(&mut self, wanted: u16) -> u16 {
        if self.model.preserve_port && !self.by_port.contains_key(&wanted) {
            return wanted;
        }
        loop {
            let port = self.rng.random_range(PORT_MIN..=u16::MAX);
            if !self.by_port.contains_key(&port) {
                return port;
            }
        }
    }

    /// An incoming datagram from `remote` to public port `port`: the internal address it
    /// goes to, or `None` when no mapping lets it in.
    pub fn inbound(&mut self, remote: SocketAddr, port: u16, now: Instant) -> Option<SocketAddr> {
        self.expire(port, now);
        let filtering = self.model.filtering;
        let b = self.by_port.get_mut(&port)?;
        let allowed = match filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => b.sent_to.iter().any(|a| a.ip() == remote.ip()),
            Filtering::AddressAndPortDependent => b.sent_to.contains(&remote),
        };
        if !allowed {
            return None;
        }
        b.last_used = now;
        Some(b.internal)
    }
}

/// The one real instant a simulation starts from; everything after is virtual
/// (`Instant::now` is banned elsewhere in this crate).
#[allow(clippy::disallowed_methods)]
pub(crate) fn epoch() -> Instant {
    Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn models_map_and_filter_as_rfc_4787_says() {
        let t0 = epoch();
        let inside = addr("192.168.1.2:51820");
        let (s1, s2, s3) = (
            addr("203.0.113.10:3478"),
            addr("203.0.113.11:3478"),
            addr("203.0.113.10:3479"),
        );
        let ip = Ipv4Addr::new(198, 51, 100, 2);

        let mut cone = Nat::new(NatModel::CONE, ip, 1);
        let m = cone.outbound(inside, s1, t0);
        assert_eq!(m, addr("198.51.100.2:51820"), "port preserved");
        assert_eq!(
            cone.outbound(inside, s2, t0),
            m,
            "endpoint-independent mapping"
        );
        assert_eq!(cone.inbound(s1, 51820, t0), Some(inside));
        assert_eq!(
            cone.inbound(s3, 51820, t0),
            None,
            "port-dependent filtering"
        );

        let mut restricted = Nat::new(NatModel::RESTRICTED, ip, 1);
        restricted.outbound(inside, s1, t0);
        assert_eq!(
            restricted.inbound(s3, 51820, t0),
            Some(inside),
            "same IP, any port"
        );
        assert_eq!(restricted.inbound(s2, 51820, t0), None);

        let mut full = Nat::new(NatModel::FULL_CONE, ip, 1);
        full.outbound(inside, s1, t0);
        assert_eq!(full.inbound(addr("192.0.2.9:1"), 51820, t0), Some(inside));

        let mut sym = Nat::new(NatModel::SYMMETRIC, ip, 1);
        let a = sym.outbound(inside, s1, t0);
        let b = sym.outbound(inside, s3, t0);
        assert_ne!(a, b, "a new mapping per destination address and port");
        assert_eq!(
            sym.outbound(inside, s1, t0),
            a,
            "reused for the same destination"
        );
        assert_eq!(
            sym.inbound(s1, b.port(), t0),
            None,
            "only its own destination answers"
        );
        assert_eq!(sym.inbound(s3, b.port(), t0), Some(inside));

        // Lifetime: gone after a minute of silence.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(cone.inbound(s1, 51820, later), None);
        assert_eq!(cone.mappings(), 0);
    }
}
