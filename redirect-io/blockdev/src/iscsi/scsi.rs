//! The SCSI commands the initiator sends (their CDBs, SBC-3 / SPC-4) and the decoders
//! of the data they return.

use crate::{PrHolder, PrKeys, PrOut, ReservationType};

/// A malformed answer to a SCSI command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScsiDataError {
    /// Too short for what it must hold.
    #[error("{what}: {len} bytes is too short")]
    Short {
        /// The answer.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A field with an impossible value.
    #[error("{0}")]
    Field(String),
}

fn short(what: &'static str, len: usize) -> ScsiDataError {
    ScsiDataError::Short { what, len }
}

/// The bytes READ CAPACITY(16) and INQUIRY are asked to return.
pub const CAPACITY_LEN: u32 = 32;
/// Allocation length of INQUIRY.
pub const INQUIRY_LEN: u32 = 96;
/// Allocation length of PERSISTENT RESERVE IN (room for 8,000 keys).
pub const PR_IN_LEN: u32 = 65528;

/// TEST UNIT READY.
pub fn test_unit_ready() -> [u8; 16] {
    [0; 16]
}

/// INQUIRY, standard data.
pub fn inquiry() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x12;
    c[3..5].copy_from_slice(&(INQUIRY_LEN as u16).to_be_bytes());
    c
}

/// READ CAPACITY(16).
pub fn read_capacity16() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&CAPACITY_LEN.to_be_bytes());
    c
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// READ(16).
pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x88, lba, blocks)
}

/// WRITE(16).
pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x8a, lba, blocks)
}

/// SYNCHRONIZE CACHE(16) of the whole LUN.
pub fn synchronize_cache16() -> [u8; 16] {
    rw16(0x91, 0, 0)
}

/// PERSISTENT RESERVE IN: READ KEYS (0) or READ RESERVATION (1).
pub fn pr_in(service_action: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x5e;
    c[1] = service_action;
    c[7..9].copy_from_slice(&(PR_IN_LEN as u16).to_be_bytes());
    c
}

/// PERSISTENT RESERVE OUT with its parameter list.
pub fn pr_out(action: &PrOut) -> ([u8; 16], Vec<u8>) {
    let params = pr_out_params(action);
    let mut c = [0u8; 16];
    c[0] = 0x5f;
    c[1] = action.service_action();
    c[2] = action.type_code(); // scope 0: the whole LUN
    c[5..9].copy_from_slice(&(params.len() as u32).to_be_bytes());
    (c, params)
}

fn pr_out_params(action: &PrOut) -> Vec<u8> {
    let (key, sa_key) = match action {
        PrOut::Register { key, new_key } => (*key, *new_key),
        PrOut::RegisterIgnoreExisting { new_key } => (0, *new_key),
        PrOut::Reserve { key, .. } | PrOut::Release { key, .. } | PrOut::Clear { key } => (*key, 0),
        PrOut::Preempt { key, victim, .. } => (*key, *victim),
        PrOut::RegisterAndMove {
            key,
            new_key,
            to_initiator,
            unregister,
        } => {
            return register_and_move_params(*key, *new_key, to_initiator, *unregister, false);
        }
    };
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

/// The REGISTER AND MOVE parameter list: keys, UNREG if `unregister` (the sender is
/// unregistered), relative target port 1, and the receiver's iSCSI TransportID.
///
/// `to` is an initiator name, or an initiator port name `NAME,i,0xISID` (12 hex digits).
/// A name alone gives format 00; a port name gives format 01, laid out as SPC-4 says
/// (`NAME,i,0xISID` in text) or, with `tgtd_layout`, as tgtd 1.0.85 compares it: the
/// name, its NUL, then `,i,0x` and the six ISID bytes themselves.
pub fn register_and_move_params(
    key: u64,
    new_key: u64,
    to: &str,
    unregister: bool,
    tgtd_layout: bool,
) -> Vec<u8> {
    let (name, isid) = split_port_name(to);
    let mut id = Vec::new();
    let format = match (isid, tgtd_layout) {
        (None, _) => {
            id.extend_from_slice(name.as_bytes());
            id.push(0);
            0x00
        }
        (Some(isid), false) => {
            id.extend_from_slice(format!("{name},i,0x{}", hex(&isid)).as_bytes());
            id.push(0);
            0x40
        }
        (Some(isid), true) => {
            id.extend_from_slice(name.as_bytes());
            id.push(0);
            id.extend_from_slice(b",i,0x");
            id.extend_from_slice(&isid);
            id.push(0);
            0x40
        }
    };
    while (4 + id.len()) % 4 != 0 || 4 + id.len() < 24 {
        id.push(0);
    }
    let mut tid = vec![format | 0x05, 0];
    tid.extend_from_slice(&(id.len() as u16).to_be_bytes());
    tid.extend_from_slice(&id);
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&new_key.to_be_bytes());
    if unregister {
        p[17] = 0x02; // UNREG
    }
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    p
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Splits `NAME,i,0xISID` into the name and the ISID; a plain name has no ISID.
pub fn split_port_name(s: &str) -> (&str, Option<[u8; 6]>) {
    let Some((name, isid)) = s.split_once(",i,0x") else {
        return (s, None);
    };
    if isid.len() != 12 {
        return (s, None);
    }
    let mut out = [0u8; 6];
    for (i, o) in out.iter_mut().enumerate() {
        match isid
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(v) => *o = v,
            None => return (s, None),
        }
    }
    (name, Some(out))
}

/// An initiator port name: `NAME,i,0xISID`.
pub fn port_name(initiator: &str, isid: [u8; 6]) -> String {
    format!("{initiator},i,0x{}", hex(&isid))
}

/// What READ CAPACITY(16) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Number of logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
}

impl Capacity {
    /// Decodes READ CAPACITY(16) data.
    pub fn decode(d: &[u8]) -> Result<Capacity, ScsiDataError> {
        if d.len() < 12 {
            return Err(short("READ CAPACITY(16) data", d.len()));
        }
        let last = u64::from_be_bytes(d[0..8].try_into().expect("8 bytes"));
        let block_size = u32::from_be_bytes(d[8..12].try_into().expect("4 bytes"));
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(ScsiDataError::Field(format!(
                "logical block size {block_size} is not a power of two from 512 to 65536"
            )));
        }
        let blocks = last
            .checked_add(1)
            .filter(|b| b.checked_mul(u64::from(block_size)).is_some())
            .ok_or_else(|| ScsiDataError::Field(format!("capacity of {last} blocks overflows")))?;
        Ok(Capacity { blocks, block_size })
    }
}

/// What standard INQUIRY data says that csvfs prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    /// Peripheral device type (0: direct-access block device).
    pub device_type: u8,
    /// Vendor, product and revision, trimmed.
    pub product: String,
}

impl Inquiry {
    /// Decodes standard INQUIRY data.
    pub fn decode(d: &[u8]) -> Result<Inquiry, ScsiDataError> {
        if d.len() < 36 {
            return Err(short("INQUIRY data", d.len()));
        }
        let text = |r: std::ops::Range<usize>| {
            String::from_utf8_lossy(&d[r])
                .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string()
        };
        Ok(Inquiry {
            device_type: d[0] & 0x1f,
            product: format!("{} {} {}", text(8..16), text(16..32), text(32..36)),
        })
    }
}

fn pr_in_header(d: &[u8], what: &'static str) -> Result<(u32, usize), ScsiDataError> {
    if d.len() < 8 {
        return Err(short(what, d.len()));
    }
    let generation = u32::from_be_bytes(d[0..4].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(d[4..8].try_into().expect("4 bytes")) as usize;
    Ok((generation, len))
}

/// Decodes READ KEYS data. A list longer than what was returned is cut to what came.
pub fn decode_read_keys(d: &[u8]) -> Result<PrKeys, ScsiDataError> {
    let (generation, len) = pr_in_header(d, "READ KEYS data")?;
    if len % 8 != 0 {
        return Err(ScsiDataError::Field(format!(
            "READ KEYS list of {len} bytes is not a multiple of 8"
        )));
    }
    let avail = (d.len() - 8).min(len) / 8 * 8;
    let keys = d[8..8 + avail]
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Ok(PrKeys { generation, keys })
}

/// Decodes READ RESERVATION data.
pub fn decode_read_reservation(d: &[u8]) -> Result<Option<PrHolder>, ScsiDataError> {
    let (generation, len) = pr_in_header(d, "READ RESERVATION data")?;
    if len == 0 {
        return Ok(None);
    }
    if len != 16 || d.len() < 24 {
        return Err(ScsiDataError::Field(format!(
            "READ RESERVATION data of length {len} ({} bytes came)",
            d.len()
        )));
    }
    let key = u64::from_be_bytes(d[8..16].try_into().expect("8 bytes"));
    let code = d[21] & 0x0f;
    // Type 0: tgtd moves a reservation so (REGISTER AND MOVE); the holder sets one by
    // PREEMPTing its own key.
    let kind = match code {
        0 => None,
        c => Some(ReservationType::from_code(c).ok_or_else(|| {
            ScsiDataError::Field(format!("READ RESERVATION names unknown type {c}"))
        })?),
    };
    Ok(Some(PrHolder {
        generation,
        key,
        kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_decodes_and_refuses_nonsense() {
        let mut d = [0u8; 32];
        d[7] = 0xff;
        d[10] = 0x02;
        let c = Capacity::decode(&d).unwrap();
        assert_eq!((c.blocks, c.block_size), (256, 512));
        d[10] = 0x03;
        assert!(Capacity::decode(&d).is_err());
        let mut big = [0xffu8; 12];
        big[8..12].copy_from_slice(&512u32.to_be_bytes());
        assert!(Capacity::decode(&big).is_err());
        assert!(Capacity::decode(&d[..5]).is_err());
    }

    #[test]
    fn read_keys_and_reservation() {
        let mut d = vec![0, 0, 0, 3, 0, 0, 0, 16];
        d.extend_from_slice(&7u64.to_be_bytes());
        d.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            decode_read_keys(&d).unwrap(),
            PrKeys {
                generation: 3,
                keys: vec![7, 9]
            }
        );
        assert!(decode_read_keys(&[0, 0, 0, 1, 0, 0, 0, 5]).is_err());
        assert_eq!(
            decode_read_reservation(&[0, 0, 0, 1, 0, 0, 0, 0]).unwrap(),
            None
        );
        let mut r = vec![0, 0, 0, 4, 0, 0, 0, 16];
        r.extend_from_slice(&5u64.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 5, 0, 0]);
        let h = decode_read_reservation(&r).unwrap().unwrap();
        assert_eq!(h.key, 5);
        assert_eq!(h.kind, Some(ReservationType::WriteExclusiveRegistrantsOnly));
        r[21] = 2;
        assert!(decode_read_reservation(&r).is_err());
        // tgtd after REGISTER AND MOVE: a holder without a type.
        r[21] = 0;
        let h = decode_read_reservation(&r).unwrap().unwrap();
        assert_eq!((h.key, h.kind), (5, None));
    }

    #[test]
    fn pr_out_cdb_and_parameters() {
        let (cdb, p) = pr_out(&PrOut::Preempt {
            key: 1,
            victim: 2,
            kind: ReservationType::WriteExclusiveRegistrantsOnly,
            abort: false,
        });
        assert_eq!((cdb[0], cdb[1], cdb[2], cdb[8]), (0x5f, 4, 5, 24));
        assert_eq!(p[7], 1);
        assert_eq!(p[15], 2);
        let (cdb, p) = pr_out(&PrOut::RegisterAndMove {
            key: 1,
            new_key: 2,
            to_initiator: "iqn.2026-11.io.csvfs:n2".into(),
            unregister: true,
        });
        assert_eq!(cdb[1], 7);
        assert_eq!(p[17], 0x02, "UNREG");
        assert_eq!(p.len() % 4, 0);
        assert_eq!(p[24], 0x05);
        assert_eq!(&p[28..51], b"iqn.2026-11.io.csvfs:n2");
        let port = port_name("iqn.x:n2", [0x80, 1, 2, 3, 4, 5]);
        assert_eq!(port, "iqn.x:n2,i,0x800102030405");
        assert_eq!(
            split_port_name(&port),
            ("iqn.x:n2", Some([0x80, 1, 2, 3, 4, 5]))
        );
        assert_eq!(
            split_port_name("iqn.x:n2,i,0x80"),
            ("iqn.x:n2,i,0x80", None)
        );
        let std = register_and_move_params(1, 2, &port, false, false);
        assert_eq!(std[17], 0, "no UNREG");
        assert_eq!(std[24], 0x45);
        assert_eq!(&std[28..53], b"iqn.x:n2,i,0x800102030405");
        let tgtd = register_and_move_params(1, 2, &port, false, true);
        assert_eq!(&tgtd[28..37], b"iqn.x:n2\0");
        assert_eq!(
            &tgtd[37..48],
            &[b',', b'i', b',', b'0', b'x', 0x80, 1, 2, 3, 4, 5]
        );
        assert_eq!((tgtd.len() - 24) % 4, 0);
    }
}
