//! iSCSI PDUs (RFC 7143): the 48-byte Basic Header Segment of every PDU, built for the
//! PDUs an initiator sends and decoded for the PDUs a target sends.
//!
//! Layout of the BHS (bytes, big-endian integers):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | bit 6: immediate; bits 0-5: opcode |
//! | 1 | flags (bit 7: Final) |
//! | 2-3 | opcode-specific |
//! | 4 | TotalAHSLength, in 4-byte words |
//! | 5-7 | DataSegmentLength |
//! | 8-15 | LUN or opcode-specific |
//! | 16-19 | Initiator Task Tag |
//! | 20-47 | opcode-specific: the target's PDUs carry StatSN at 24, ExpCmdSN at 28, MaxCmdSN at 32 |
//!
//! The data segment follows the header (and any AHS), padded to 4 bytes. Digests are
//! never negotiated, so none follow.

use std::fmt;

/// The size of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The task tag that means "none".
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes an initiator sends.
pub mod op {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_COMMAND: u8 = 0x01;
    /// SCSI Task Management Function Request.
    pub const TASK_MGMT: u8 = 0x02;
    /// Login Request.
    pub const LOGIN: u8 = 0x03;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT: u8 = 0x06;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESPONSE: u8 = 0x21;
    /// SCSI Task Management Function Response.
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RESPONSE: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RESPONSE: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// A malformed PDU from the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// Fewer than 48 bytes.
    #[error("PDU header is {0} bytes, not 48")]
    Short(usize),
    /// An opcode an initiator never receives.
    #[error("unexpected opcode {0:#04x} from the target")]
    Opcode(u8),
    /// A data segment longer than this side accepts.
    #[error("data segment of {len} bytes is longer than the {max} negotiated")]
    TooLong {
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A field that breaks the protocol.
    #[error("{0}")]
    Field(&'static str),
}

/// A decoded Basic Header Segment, as sent by a target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl fmt::Debug for Bhs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Bhs(op {:#04x}, flags {:#04x}, itt {:#x}, data {})",
            self.opcode(),
            self.flags(),
            self.itt(),
            self.data_len()
        )
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

impl Bhs {
    /// Checks a header the target sent: its opcode is one a target sends, and its data
    /// segment fits in `max_data` bytes.
    pub fn decode(bytes: &[u8], max_data: u32) -> Result<Bhs, PduError> {
        let arr: [u8; BHS_LEN] = bytes
            .get(..BHS_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(PduError::Short(bytes.len()))?;
        let bhs = Bhs(arr);
        match bhs.opcode() {
            op::NOP_IN
            | op::SCSI_RESPONSE
            | op::TASK_MGMT_RESPONSE
            | op::LOGIN_RESPONSE
            | op::TEXT_RESPONSE
            | op::DATA_IN
            | op::LOGOUT_RESPONSE
            | op::R2T
            | op::ASYNC
            | op::REJECT => {}
            other => return Err(PduError::Opcode(other)),
        }
        if bhs.data_len() > max_data {
            return Err(PduError::TooLong {
                len: bhs.data_len(),
                max: max_data,
            });
        }
        Ok(bhs)
    }

    /// Takes the first 48 bytes as a header of any opcode (the rejected header a
    /// Reject carries), or None when there are fewer.
    pub fn decode_any(bytes: &[u8]) -> Option<Bhs> {
        bytes
            .get(..BHS_LEN)
            .and_then(|s| s.try_into().ok())
            .map(Bhs)
    }

    /// A zeroed header with an opcode (and the immediate bit).
    pub fn new(opcode: u8, immediate: bool) -> Bhs {
        let mut b = [0u8; BHS_LEN];
        b[0] = opcode | if immediate { 0x40 } else { 0 };
        Bhs(b)
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }
    /// Byte 1: the flags.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    /// The Final bit.
    pub fn is_final(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    /// Bytes of additional header segments that follow the BHS.
    pub fn ahs_len(&self) -> usize {
        usize::from(self.0[4]) * 4
    }
    /// Length of the data segment, without padding.
    pub fn data_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }
    /// Length of the data segment with its padding to 4 bytes.
    pub fn padded_data_len(&self) -> usize {
        (self.data_len() as usize).div_ceil(4) * 4
    }
    /// The Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        be32(&self.0, 16)
    }
    /// Bytes 20-23: Target Transfer Tag (Data-In, R2T, NOP-In).
    pub fn ttt(&self) -> u32 {
        be32(&self.0, 20)
    }
    /// Bytes 24-27: StatSN.
    pub fn stat_sn(&self) -> u32 {
        be32(&self.0, 24)
    }
    /// Bytes 28-31: ExpCmdSN.
    pub fn exp_cmd_sn(&self) -> u32 {
        be32(&self.0, 28)
    }
    /// Bytes 32-35: MaxCmdSN.
    pub fn max_cmd_sn(&self) -> u32 {
        be32(&self.0, 32)
    }
    /// Bytes 36-39: DataSN / R2TSN / ExpDataSN / AsyncEvent (byte 36).
    pub fn word36(&self) -> u32 {
        be32(&self.0, 36)
    }
    /// Bytes 40-43: Buffer Offset (Data-In, R2T).
    pub fn buffer_offset(&self) -> u32 {
        be32(&self.0, 40)
    }
    /// Bytes 44-47: Residual Count / Desired Data Transfer Length (R2T).
    pub fn word44(&self) -> u32 {
        be32(&self.0, 44)
    }
    /// Byte 2 (the Response field of responses, the reject reason).
    pub fn byte2(&self) -> u8 {
        self.0[2]
    }
    /// Byte 3 (the Status of SCSI Response and Data-In with S).
    pub fn byte3(&self) -> u8 {
        self.0[3]
    }

    /// True when this PDU carries a StatSN that advances the connection's StatSN.
    pub fn advances_stat_sn(&self) -> bool {
        match self.opcode() {
            op::SCSI_RESPONSE
            | op::TASK_MGMT_RESPONSE
            | op::LOGOUT_RESPONSE
            | op::TEXT_RESPONSE
            | op::ASYNC
            | op::REJECT => true,
            op::DATA_IN => self.flags() & 0x01 != 0,
            op::NOP_IN => self.itt() != RESERVED_TAG,
            _ => false,
        }
    }

    /// True when bytes 28-35 hold ExpCmdSN and MaxCmdSN.
    pub fn carries_cmd_window(&self) -> bool {
        self.opcode() != op::LOGIN_RESPONSE || self.0[36] == 0
    }

    fn set_data_len(&mut self, len: u32) {
        self.0[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    }
}

/// A SCSI Command PDU.
pub struct ScsiCommand {
    /// The LUN, as its 8-byte encoding.
    pub lun: [u8; 8],
    /// Initiator Task Tag.
    pub itt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Bytes expected to move (read or write).
    pub expected_len: u32,
    /// True for a command that reads data.
    pub read: bool,
    /// True for a command that writes data.
    pub write: bool,
    /// True when no unsolicited Data-Out follows this PDU.
    pub final_: bool,
    /// The CDB, padded to 16 bytes.
    pub cdb: [u8; 16],
    /// Immediate data carried in this PDU.
    pub immediate_len: u32,
}

impl ScsiCommand {
    /// The header.
    pub fn bhs(&self) -> Bhs {
        let mut b = Bhs::new(op::SCSI_COMMAND, false);
        b.0[1] = (if self.final_ { 0x80 } else { 0 })
            | (if self.read { 0x40 } else { 0 })
            | (if self.write { 0x20 } else { 0 })
            | 0x01; // task attribute: SIMPLE
        b.set_data_len(self.immediate_len);
        b.0[8..16].copy_from_slice(&self.lun);
        put32(&mut b.0, 16, self.itt);
        put32(&mut b.0, 20, self.expected_len);
        put32(&mut b.0, 24, self.cmd_sn);
        put32(&mut b.0, 28, self.exp_stat_sn);
        b.0[32..48].copy_from_slice(&self.cdb);
        b
    }
}

/// A SCSI Data-Out PDU header.
pub struct DataOut {
    /// The LUN.
    pub lun: [u8; 8],
    /// The command's task tag.
    pub itt: u32,
    /// The R2T's transfer tag, or [`RESERVED_TAG`] for unsolicited data.
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN within the sequence.
    pub data_sn: u32,
    /// Offset of this data in the command's buffer.
    pub offset: u32,
    /// Length of the data segment.
    pub len: u32,
    /// Last PDU of the sequence.
    pub final_: bool,
}

impl DataOut {
    /// The header.
    pub fn bhs(&self) -> Bhs {
        let mut b = Bhs::new(op::DATA_OUT, false);
        b.0[1] = if self.final_ { 0x80 } else { 0 };
        b.set_data_len(self.len);
        b.0[8..16].copy_from_slice(&self.lun);
        put32(&mut b.0, 16, self.itt);
        put32(&mut b.0, 20, self.ttt);
        put32(&mut b.0, 28, self.exp_stat_sn);
        put32(&mut b.0, 36, self.data_sn);
        put32(&mut b.0, 40, self.offset);
        b
    }
}

/// A NOP-Out: a ping of ours (`itt` set, `ttt` reserved) or the answer to the
/// target's NOP-In (`itt` reserved, `ttt` copied).
pub fn nop_out(itt: u32, ttt: u32, cmd_sn: u32, exp_stat_sn: u32, lun: [u8; 8]) -> Bhs {
    let mut b = Bhs::new(op::NOP_OUT, true);
    b.0[1] = 0x80;
    b.0[8..16].copy_from_slice(&lun);
    put32(&mut b.0, 16, itt);
    put32(&mut b.0, 20, ttt);
    put32(&mut b.0, 24, cmd_sn);
    put32(&mut b.0, 28, exp_stat_sn);
    b
}

/// ABORT TASK of the task `ref_itt`, sent immediately.
pub fn abort_task(
    itt: u32,
    ref_itt: u32,
    cmd_sn: u32,
    ref_cmd_sn: u32,
    exp_stat_sn: u32,
    lun: [u8; 8],
) -> Bhs {
    let mut b = Bhs::new(op::TASK_MGMT, true);
    b.0[1] = 0x80 | 0x01; // function 1: ABORT TASK
    b.0[8..16].copy_from_slice(&lun);
    put32(&mut b.0, 16, itt);
    put32(&mut b.0, 20, ref_itt);
    put32(&mut b.0, 24, cmd_sn);
    put32(&mut b.0, 28, exp_stat_sn);
    put32(&mut b.0, 32, ref_cmd_sn);
    b
}

/// A Logout Request closing the session.
pub fn logout(itt: u32, cmd_sn: u32, exp_stat_sn: u32) -> Bhs {
    let mut b = Bhs::new(op::LOGOUT, true);
    b.0[1] = 0x80; // reason 0: close the session
    put32(&mut b.0, 16, itt);
    put32(&mut b.0, 24, cmd_sn);
    put32(&mut b.0, 28, exp_stat_sn);
    b
}

/// Login stages (CSG / NSG).
pub mod stage {
    /// Security negotiation.
    pub const SECURITY: u8 = 0;
    /// Login operational negotiation.
    pub const OPERATIONAL: u8 = 1;
    /// Full feature phase.
    pub const FULL_FEATURE: u8 = 3;
}

/// A Login Request header.
pub struct LoginRequest {
    /// Transit to `nsg`.
    pub transit: bool,
    /// Current stage.
    pub csg: u8,
    /// Next stage.
    pub nsg: u8,
    /// The initiator's session id.
    pub isid: [u8; 6],
    /// Task tag.
    pub itt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Length of the text data.
    pub data_len: u32,
}

impl LoginRequest {
    /// The header.
    pub fn bhs(&self) -> Bhs {
        let mut b = Bhs::new(op::LOGIN, true);
        b.0[1] = (if self.transit { 0x80 } else { 0 }) | ((self.csg & 3) << 2) | (self.nsg & 3);
        b.set_data_len(self.data_len);
        b.0[8..14].copy_from_slice(&self.isid);
        put32(&mut b.0, 16, self.itt);
        put32(&mut b.0, 24, self.cmd_sn);
        put32(&mut b.0, 28, self.exp_stat_sn);
        b
    }
}

/// The fields of a Login Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginResponse {
    /// The target agrees to move to `nsg`.
    pub transit: bool,
    /// More text follows in the next response.
    pub continue_: bool,
    /// Current stage.
    pub csg: u8,
    /// Next stage.
    pub nsg: u8,
    /// The session handle the target assigned.
    pub tsih: u16,
    /// Status-Class (0 success, 1 redirect, 2 initiator error, 3 target error).
    pub status_class: u8,
    /// Status-Detail.
    pub status_detail: u8,
}

impl LoginResponse {
    /// Reads a Login Response out of a header.
    pub fn decode(b: &Bhs) -> Result<LoginResponse, PduError> {
        if b.opcode() != op::LOGIN_RESPONSE {
            return Err(PduError::Opcode(b.opcode()));
        }
        let f = b.flags();
        let r = LoginResponse {
            transit: f & 0x80 != 0,
            continue_: f & 0x40 != 0,
            csg: (f >> 2) & 3,
            nsg: f & 3,
            tsih: u16::from_be_bytes([b.0[14], b.0[15]]),
            status_class: b.0[36],
            status_detail: b.0[37],
        };
        if r.transit && r.continue_ {
            return Err(PduError::Field(
                "login response with both Transit and Continue",
            ));
        }
        Ok(r)
    }

    /// A readable account of a failed login's status.
    pub fn status_text(&self) -> String {
        let what = match (self.status_class, self.status_detail) {
            (1, _) => "the target redirects elsewhere (not supported)",
            (2, 0x01) => "authentication failed",
            (2, 0x02) => "authorisation failed: this initiator may not use the target",
            (2, 0x03) => "the target does not exist",
            (2, 0x04) => "the target was removed",
            (2, 0x07) => "too many connections",
            (2, 0x0a) => "cannot include this connection in the session",
            (2, _) => "the target refused the login request",
            (3, 0x01) => "the target is out of resources",
            (3, _) => "the target failed",
            _ => "unknown status",
        };
        format!(
            "{what} (status class {:#04x}, detail {:#04x})",
            self.status_class, self.status_detail
        )
    }
}

/// The status fields of a SCSI Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiResponse {
    /// 0 when the target completed the command.
    pub response: u8,
    /// The SCSI status byte.
    pub status: u8,
    /// Residual overflow.
    pub overflow: bool,
    /// Residual underflow.
    pub underflow: bool,
    /// The residual count.
    pub residual: u32,
}

impl ScsiResponse {
    /// Reads the status out of a SCSI Response or a Data-In with the S bit.
    pub fn decode(b: &Bhs) -> Result<ScsiResponse, PduError> {
        let (o, u) = match b.opcode() {
            op::SCSI_RESPONSE => (0x04, 0x02),
            op::DATA_IN if b.flags() & 0x01 != 0 => (0x04, 0x02),
            other => return Err(PduError::Opcode(other)),
        };
        let r = ScsiResponse {
            response: if b.opcode() == op::SCSI_RESPONSE {
                b.byte2()
            } else {
                0
            },
            status: b.byte3(),
            overflow: b.flags() & o != 0,
            underflow: b.flags() & u != 0,
            residual: b.word44(),
        };
        if r.overflow && r.underflow {
            return Err(PduError::Field(
                "response with both residual overflow and underflow",
            ));
        }
        Ok(r)
    }
}

/// The sense data a SCSI Response's data segment carries (after its 2-byte length).
pub fn response_sense(data: &[u8]) -> Result<&[u8], PduError> {
    if data.is_empty() {
        return Ok(&[]);
    }
    if data.len() < 2 {
        return Err(PduError::Field(
            "SCSI response data shorter than its sense length",
        ));
    }
    let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
    data.get(2..2 + n)
        .ok_or(PduError::Field("sense length runs past the data segment"))
}

/// Serial-number comparison of 32-bit sequence numbers (RFC 1982): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// The 8-byte LUN field for a LUN number (flat / peripheral addressing).
pub fn lun_field(lun: u16) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        let v = 0x4000 | (lun & 0x3fff);
        l[..2].copy_from_slice(&v.to_be_bytes());
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_header_round_trips_its_fields() {
        let c = ScsiCommand {
            lun: lun_field(1),
            itt: 7,
            cmd_sn: 9,
            exp_stat_sn: 3,
            expected_len: 4096,
            read: true,
            write: false,
            final_: true,
            cdb: [0x88; 16],
            immediate_len: 0,
        };
        let b = c.bhs();
        assert_eq!(b.opcode(), op::SCSI_COMMAND);
        assert_eq!(b.itt(), 7);
        assert_eq!(b.0[1], 0x80 | 0x40 | 1);
        assert_eq!(b.0[9], 1);
    }

    #[test]
    fn decode_refuses_initiator_opcodes_and_long_data() {
        let b = nop_out(1, RESERVED_TAG, 0, 0, [0; 8]);
        assert_eq!(Bhs::decode(&b.0, 8192), Err(PduError::Opcode(0)));
        let mut r = Bhs::new(op::NOP_IN, false);
        r.set_data_len(9000);
        assert!(matches!(
            Bhs::decode(&r.0, 8192),
            Err(PduError::TooLong { .. })
        ));
        assert_eq!(Bhs::decode(&r.0[..10], 8192), Err(PduError::Short(10)));
    }

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(!sn_lt(4, 4));
    }

    #[test]
    fn sense_length_is_checked() {
        assert_eq!(response_sense(&[0, 2, 0x70, 0]).unwrap(), &[0x70, 0]);
        assert!(response_sense(&[0, 9, 1]).is_err());
        assert!(response_sense(&[0]).is_err());
    }
}
