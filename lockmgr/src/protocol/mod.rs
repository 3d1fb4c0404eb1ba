//! The lock manager's protocol with no I/O (as quinn-proto is to quinn): state machines
//! that take the time and events and return actions. The QUIC and LUN shells drive
//! them in production; `tests/simulation.rs` drives them with simulated time, a
//! simulated network and a simulated target, and checks the safety rules at every step.

pub mod lockspace;
pub mod node;
pub mod range_locks;
pub mod types;

pub use node::Node;
pub use types::*;
