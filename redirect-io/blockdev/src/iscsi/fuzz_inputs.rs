//! What the fuzz targets feed the iSCSI decoders, one function per target, shared with
//! the corpus replay of `cargo test` so that both read an input the same way. Each
//! returns whether the main decoder accepted the input; none may panic.

use super::{login, pdu, scsi, sense, text};

/// A target's PDU header (and the sense data of a SCSI Response after it).
pub fn pdu(data: &[u8]) -> bool {
    let Ok(bhs) = pdu::Bhs::decode(data, 262_144) else {
        return false;
    };
    let _ = (bhs.ahs_len(), bhs.padded_data_len(), bhs.advances_stat_sn());
    let _ = (
        bhs.carries_cmd_window(),
        bhs.ttt(),
        bhs.word36(),
        bhs.buffer_offset(),
    );
    if let Ok(r) = pdu::LoginResponse::decode(&bhs) {
        let _ = r.status_text();
    }
    let _ = pdu::ScsiResponse::decode(&bhs);
    if let Ok(s) = pdu::response_sense(&data[pdu::BHS_LEN..]) {
        let _ = sense::Sense::decode(s).map(|s| s.to_string());
    }
    true
}

/// A login response's text, applied to the session parameters and answered with CHAP.
pub fn text(data: &[u8]) -> bool {
    let Ok(pairs) = text::parse(data) else {
        return false;
    };
    let mut p = text::Params::defaults(login::INITIATOR_MAX_RECV);
    for (k, v) in &pairs {
        let _ = p.apply(k, v);
    }
    let _ = p.check();
    let _ = login::chap_answer(&pairs, "secret");
    true
}

/// Sense data.
pub fn sense(data: &[u8]) -> bool {
    match sense::Sense::decode(data) {
        Ok(s) => {
            let _ = (s.to_string(), s.may_have_lost_registration());
            true
        }
        Err(_) => false,
    }
}

/// The data of READ CAPACITY(16), INQUIRY and PERSISTENT RESERVE IN, and port names.
pub fn scsi_data(data: &[u8]) -> bool {
    let a = scsi::Capacity::decode(data).is_ok();
    let b = scsi::Inquiry::decode(data).is_ok();
    let c = scsi::decode_read_keys(data).is_ok();
    let d = scsi::decode_read_reservation(data).is_ok();
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = scsi::split_port_name(s);
    }
    a || b || c || d
}
