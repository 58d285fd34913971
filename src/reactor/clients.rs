//! Connections per client address (`--max-connections-per-client`; Postfix's
//! `smtpd_client_connection_count_limit` is the model).
//!
//! Every open connection is counted against its address, refused ones too
//! while they close, so a client that keeps reconnecting stays refused. The
//! table only holds addresses with open connections, so its size is bounded
//! by the number of connections.

use std::collections::HashMap;
use std::net::IpAddr;

pub struct Clients {
    /// 0: no limit, nothing counted.
    limit: u32,
    open: HashMap<IpAddr, u32>,
}

impl Clients {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            open: HashMap::new(),
        }
    }

    /// A connection from `ip` opened; true if it is within the limit.
    pub fn arrive(&mut self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return true;
        }
        let n = self.open.entry(ip.to_canonical()).or_insert(0);
        *n += 1;
        *n <= self.limit
    }

    /// A connection from `ip` closed.
    pub fn leave(&mut self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let ip = ip.to_canonical();
        if let Some(n) = self.open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_forgets_closed_ones() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let mut c = Clients::new(2);
        assert!(c.arrive(a) && c.arrive(a));
        assert!(!c.arrive(a), "third from the same address");
        assert!(c.arrive(b), "another address");
        assert!(
            c.arrive("127.0.0.2".parse().unwrap()),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!c.arrive(b));
        c.leave(a);
        assert!(
            !c.arrive(a),
            "still 2 open: the refused one counts until it closes"
        );
        c.leave(a);
        c.leave(a);
        assert!(c.arrive(a));
        for ip in [a, a, b, b, b] {
            c.leave(ip);
        }
        c.leave("127.0.0.2".parse().unwrap());
        assert!(c.open.is_empty());
        let mut off = Clients::new(0);
        assert!((0..10_000).all(|_| off.arrive(a)));
        assert!(off.open.is_empty());
    }
}
