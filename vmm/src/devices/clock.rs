//! The paravirtual clock: a 32-bit read of its port gives the milliseconds the guest
//! has run. It stands still while the VM is paused, and its value travels with the
//! VM's state, so a guest sees no jump across a save, restore or migration.

use std::time::Instant;

/// Milliseconds of guest run time.
#[derive(Debug)]
pub struct GuestClock {
    /// The value when it last started running.
    base_ms: u64,
    /// When it last started running; `None` while stopped.
    running_since: Option<Instant>,
}

impl GuestClock {
    /// A stopped clock reading `ms`.
    pub fn new(ms: u64) -> GuestClock {
        GuestClock {
            base_ms: ms,
            running_since: None,
        }
    }

    /// The clock's value now.
    pub fn now_ms(&self) -> u64 {
        self.base_ms
            + self
                .running_since
                .map_or(0, |t| t.elapsed().as_millis() as u64)
    }

    /// What a guest's read of the port returns.
    pub fn read_port(&self) -> u32 {
        self.now_ms() as u32
    }

    /// Starts the clock (when the vCPU starts or resumes).
    pub fn run(&mut self) {
        if self.running_since.is_none() {
            self.running_since = Some(Instant::now());
        }
    }

    /// Stops the clock (when the vCPU pauses).
    pub fn stop(&mut self) {
        self.base_ms = self.now_ms();
        self.running_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stands_still_while_stopped() {
        let mut c = GuestClock::new(1000);
        assert_eq!(c.now_ms(), 1000);
        c.run();
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.stop();
        let t = c.now_ms();
        assert!(t >= 1020, "{t}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(c.now_ms(), t);
    }
}
