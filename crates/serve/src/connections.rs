//! Client connections: how many are open, in all and per client address, so that one client
//! (or many) cannot take every descriptor the server has.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The open connections of a server.
#[derive(Debug)]
pub(crate) struct Connections {
    max_total: usize,
    max_per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it closes its slot.
#[derive(Debug)]
pub(crate) struct Admitted {
    connections: Arc<Connections>,
    client: IpAddr,
}

impl Connections {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Connections {
            max_total,
            max_per_client,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a new connection from `client`, or `None` when the server or that client
    /// is at its limit.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap();
        let (total, per_client) = &mut *open;
        let of_client = per_client.entry(client).or_insert(0);
        if *total >= self.max_total || *of_client >= self.max_per_client {
            if *of_client == 0 {
                per_client.remove(&client);
            }
            return None;
        }
        *total += 1;
        *of_client += 1;
        Some(Admitted {
            connections: self.clone(),
            client,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.lock().unwrap().0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap();
        let (total, per_client) = &mut *open;
        *total -= 1;
        if let Some(count) = per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_in_all_and_per_client_and_slots_come_back() {
        let connections = Connections::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = connections.admit(a).unwrap();
        let _a2 = connections.admit(a).unwrap();
        assert!(connections.admit(a).is_none(), "per client");
        let _b1 = connections.admit(b).unwrap();
        assert!(connections.admit(b).is_none(), "in all");
        assert_eq!(connections.open(), 3);
        drop(a1);
        assert_eq!(connections.open(), 2);
        let _b2 = connections.admit(b).unwrap();
        assert!(connections.admit(b).is_none());
        assert_eq!(connections.open.lock().unwrap().1.len(), 2);
    }
}
