//! `WriteSequence`: the client half of exactly-once writes.
//!
//! The client draws a random id and numbers its writes 1, 2, 3...; every attempt of one write
//! carries the same number, so the cluster applies it once however often it is retried (see
//! raftkv-store's `sessions`). Each attempt also carries `acked_below`: the lowest number still
//! in flight — every write below it has its answer — so the cluster can forget those answers.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub(crate) struct WriteSequence {
    pub client_id: u64,
    next: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

/// A write's number, held while the write is in flight.
pub(crate) struct SeqTicket {
    pub seq: u64,
    owner: Arc<WriteSequence>,
}

impl WriteSequence {
    pub fn new(client_id: u64) -> Arc<Self> {
        Arc::new(Self {
            client_id,
            next: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn begin(self: &Arc<Self>) -> SeqTicket {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        in_flight.insert(seq);
        SeqTicket {
            seq,
            owner: self.clone(),
        }
    }

    /// Every write numbered below this has finished (answered, failed or given up on).
    pub fn acked_below(&self) -> u64 {
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight
            .first()
            .copied()
            .unwrap_or_else(|| self.next.load(Ordering::SeqCst))
    }
}

impl Drop for SeqTicket {
    fn drop(&mut self) {
        self.owner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_below_is_the_oldest_write_in_flight() {
        let seq = WriteSequence::new(5);
        assert_eq!(seq.acked_below(), 1);
        let a = seq.begin();
        let b = seq.begin();
        let c = seq.begin();
        assert_eq!((a.seq, b.seq, c.seq), (1, 2, 3));
        assert_eq!(seq.acked_below(), 1);
        drop(b);
        assert_eq!(seq.acked_below(), 1, "1 is still in flight");
        drop(a);
        assert_eq!(seq.acked_below(), 3);
        drop(c);
        assert_eq!(seq.acked_below(), 4);
    }
}
