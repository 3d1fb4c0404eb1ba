//! Auto-converge: when pre-copy rounds do not shrink the dirty set (the guest dirties
//! memory faster than the link carries it), the source slows the guest down by
//! pausing its vCPU for a share of every period, raising the share until the rounds
//! converge. The share is in the progress reports and the outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use crate::machine::Machine;

/// The throttle's period: the vCPU runs for (100 - share)% of it.
const PERIOD: Duration = Duration::from_millis(50);

/// A running throttle of one VM's vCPU.
pub struct Throttle<'scope> {
    share: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Throttle<'scope> {
    /// A throttle of `machine`, at 0% until [`Throttle::set`] raises it.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        machine: &'env Machine,
    ) -> Throttle<'scope> {
        let share = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (share.clone(), stop.clone());
        let thread = scope.spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let p = s.load(Ordering::Relaxed).min(99);
                if p == 0 {
                    std::thread::sleep(PERIOD);
                    continue;
                }
                let paused = PERIOD * p / 100;
                std::thread::sleep(PERIOD - paused);
                if machine.pause().is_err() {
                    continue;
                }
                std::thread::sleep(paused);
                let _ = machine.resume();
            }
        });
        Throttle {
            share,
            stop,
            thread: Some(thread),
        }
    }

    /// Pauses the vCPU for `percent`% of every period from now on.
    pub fn set(&self, percent: u32) {
        self.share.store(percent.min(99), Ordering::Relaxed);
    }

    /// The share now, in percent.
    pub fn share(&self) -> u32 {
        self.share.load(Ordering::Relaxed)
    }

    /// Stops throttling and waits until the vCPU runs freely again.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Throttle<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}
