//! The serial console: COM1 as a 16550A UART (vm-superio), its output appended to a
//! sink (the VM's console log, which `vmm console` follows). Input is not wired: the
//! test guest only prints.

use std::io::Write;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

/// The UART raises no interrupts: guests poll (there is no IDT in the test guest).
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Where the console's bytes go.
pub type ConsoleSink = Box<dyn Write + Send>;

/// COM1.
pub struct SerialConsole {
    uart: Serial<NoInterrupt, NoEvents, ConsoleSink>,
}

impl SerialConsole {
    /// A fresh UART writing to `sink`.
    pub fn new(sink: ConsoleSink) -> SerialConsole {
        SerialConsole {
            uart: Serial::new(NoInterrupt, sink),
        }
    }

    /// A UART in the state `state` (saved from another VM), writing to `sink`.
    pub fn from_state(state: &SerialState, sink: ConsoleSink) -> Result<SerialConsole, String> {
        Serial::from_state(state, NoInterrupt, NoEvents, sink)
            .map(|uart| SerialConsole { uart })
            .map_err(|e| format!("bad serial state: {e:?}"))
    }

    /// The UART's registers, for a save or a migration.
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// A guest's write of `value` to register `offset` (0 to 7).
    pub fn write(&mut self, offset: u8, value: u8) {
        // Writing the sink can fail (a closed log): the guest does not care.
        let _ = self.uart.write(offset, value);
        if offset == 0 {
            let _ = self.uart.writer_mut().flush();
        }
    }

    /// A guest's read of register `offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }
}
