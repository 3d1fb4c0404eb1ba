//! SCSI status and sense data (SPC-4 4.5): what a CHECK CONDITION says went wrong.
//!
//! Fixed format (response code 0x70 / 0x71): sense key in byte 2 (low nibble), ASC in
//! byte 12, ASCQ in byte 13. Descriptor format (0x72 / 0x73): sense key in byte 1,
//! ASC in byte 2, ASCQ in byte 3.

use std::fmt;

/// SCSI status GOOD.
pub const GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION: sense data says why.
pub const CHECK_CONDITION: u8 = 0x02;
/// SCSI status BUSY.
pub const BUSY: u8 = 0x08;
/// SCSI status RESERVATION CONFLICT.
pub const RESERVATION_CONFLICT: u8 = 0x18;
/// SCSI status TASK SET FULL.
pub const TASK_SET_FULL: u8 = 0x28;

/// Sense key UNIT ATTENTION.
pub const UNIT_ATTENTION: u8 = 0x6;
/// Sense key NOT READY.
pub const NOT_READY: u8 = 0x2;
/// Sense key ILLEGAL REQUEST.
pub const ILLEGAL_REQUEST: u8 = 0x5;

/// Malformed sense data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenseError {
    /// Too short for its format.
    #[error("sense data of {0} bytes is too short")]
    Short(usize),
    /// A response code that is neither fixed nor descriptor format.
    #[error("sense data with unknown response code {0:#04x}")]
    ResponseCode(u8),
}

/// The decoded essentials of sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// The sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// Decodes sense data in either format.
    pub fn decode(data: &[u8]) -> Result<Sense, SenseError> {
        let code = *data.first().ok_or(SenseError::Short(0))? & 0x7f;
        match code {
            0x70 | 0x71 => {
                if data.len() < 14 {
                    return Err(SenseError::Short(data.len()));
                }
                Ok(Sense {
                    key: data[2] & 0x0f,
                    asc: data[12],
                    ascq: data[13],
                })
            }
            0x72 | 0x73 => {
                if data.len() < 4 {
                    return Err(SenseError::Short(data.len()));
                }
                Ok(Sense {
                    key: data[1] & 0x0f,
                    asc: data[2],
                    ascq: data[3],
                })
            }
            other => Err(SenseError::ResponseCode(other)),
        }
    }

    /// A UNIT ATTENTION after which a registration may be gone: a power on or reset
    /// (ASC 0x29), or reservations or registrations preempted or released (0x2A/03-05).
    pub fn may_have_lost_registration(&self) -> bool {
        self.key == UNIT_ATTENTION
            && (self.asc == 0x29 || (self.asc == 0x2a && (3..=5).contains(&self.ascq)))
    }

    fn key_name(&self) -> &'static str {
        match self.key {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0x8 => "BLANK CHECK",
            0xb => "ABORTED COMMAND",
            0xd => "VOLUME OVERFLOW",
            0xe => "MISCOMPARE",
            _ => "sense key",
        }
    }

    fn asc_name(&self) -> Option<&'static str> {
        Some(match (self.asc, self.ascq) {
            (0x04, _) => "logical unit not ready",
            (0x20, 0x00) => "invalid command operation code",
            (0x21, 0x00) => "logical block address out of range",
            (0x24, 0x00) => "invalid field in CDB",
            (0x25, 0x00) => "logical unit not supported",
            (0x26, _) => "invalid field in parameter list",
            (0x27, _) => "write protected",
            (0x29, _) => "power on, reset, or bus device reset occurred",
            (0x2a, 0x01) => "mode parameters changed",
            (0x2a, 0x03) => "reservations preempted",
            (0x2a, 0x04) => "reservations released",
            (0x2a, 0x05) => "registrations preempted",
            (0x2a, 0x09) => "capacity data has changed",
            (0x3f, 0x0e) => "reported LUNs data has changed",
            _ => return None,
        })
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key_name())?;
        if let Some(what) = self.asc_name() {
            write!(f, ": {what}")?;
        }
        write!(
            f,
            " (key {:#x}, ASC {:#04x}, ASCQ {:#04x})",
            self.key, self.asc, self.ascq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_formats() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x06;
        fixed[12] = 0x29;
        let s = Sense::decode(&fixed).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (6, 0x29, 0));
        assert!(s.may_have_lost_registration());
        assert!(s.to_string().contains("UNIT ATTENTION"), "{s}");
        let d = Sense::decode(&[0x72, 0x05, 0x24, 0x00]).unwrap();
        assert_eq!(d.key, ILLEGAL_REQUEST);
        assert!(d.to_string().contains("invalid field in CDB"));
        assert!(!d.may_have_lost_registration());
    }

    #[test]
    fn refuses_short_and_unknown() {
        assert_eq!(Sense::decode(&[]), Err(SenseError::Short(0)));
        assert_eq!(Sense::decode(&[0x70, 0, 6]), Err(SenseError::Short(3)));
        assert_eq!(
            Sense::decode(&[0x10; 20]),
            Err(SenseError::ResponseCode(0x10))
        );
    }
}
