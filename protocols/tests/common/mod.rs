//! Helpers shared by the tests: feed chunks with a clock.
#![allow(dead_code)]

use pmoas_protocols::{Chunk, Connection, Direction, Exchange, Limits, LossReason, Losses, Role};

/// A connection fed with chunks 10 ns apart (each call lasts 5 ns).
pub struct Feeder {
    pub conn: Connection,
    pub out: Vec<Exchange>,
    pub losses: Losses,
    pub now: u64,
}

impl Feeder {
    pub fn new(role: Role) -> Feeder {
        Feeder::with_limits(role, Limits::default())
    }

    pub fn with_limits(role: Role, limits: Limits) -> Feeder {
        Feeder { conn: Connection::with_limits(role, limits), out: Vec::new(), losses: Losses::new(), now: 1000 }
    }

    /// One call that moved all of `bytes`.
    pub fn feed(&mut self, direction: Direction, bytes: &[u8]) -> &mut Feeder {
        self.feed_prefix(direction, bytes, bytes.len())
    }

    /// One call that moved `bytes`, of which only the first `captured`.
    pub fn feed_prefix(&mut self, direction: Direction, bytes: &[u8], captured: usize) -> &mut Feeder {
        self.now += 10;
        let chunk = Chunk {
            direction,
            captured: &bytes[..captured.min(bytes.len())],
            total_len: bytes.len(),
            start_ns: self.now,
            end_ns: self.now + 5,
        };
        self.conn.feed(&chunk, &mut self.out, &mut self.losses);
        self
    }

    pub fn close(&mut self) -> &mut Feeder {
        self.now += 10;
        self.conn.close(self.now, &mut self.out, &mut self.losses);
        self
    }

    pub fn lost(&self, reason: LossReason) -> u64 {
        self.losses.get(reason)
    }

    /// The losses that are not zero, for assertion messages.
    pub fn losses(&self) -> Vec<(&'static str, u64)> {
        self.losses.iter().filter(|(_, n)| *n > 0).collect()
    }
}

pub const IN: Direction = Direction::Ingress;
pub const OUT: Direction = Direction::Egress;
