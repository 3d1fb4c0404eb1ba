//! Login (RFC 7143 section 6): the security stage (no authentication, or CHAP with
//! MD5), then the operational stage, which settles the session's parameters, then the
//! full feature phase.

use std::io::{self, Read, Write};

use md5::{Digest, Md5};

use super::pdu::{LoginRequest, LoginResponse, op, stage};
use super::text::{self, Params};
use super::url::IscsiUrl;
use super::wire;

/// The most text this initiator accepts in one login response.
const LOGIN_MAX_DATA: u32 = 8192;
/// The most data this initiator accepts in one PDU in the full feature phase.
pub const INITIATOR_MAX_RECV: u32 = 262_144;

/// What a successful login leaves behind.
#[derive(Debug, Clone, Copy)]
pub struct LoggedIn {
    /// The negotiated parameters.
    pub params: Params,
    /// The first CmdSN of the full feature phase.
    pub cmd_sn: u32,
    /// The next StatSN expected.
    pub exp_stat_sn: u32,
    /// The target's command window.
    pub max_cmd_sn: u32,
    /// The session handle.
    pub tsih: u16,
}

/// Why a login failed. `Refused` is the target's considered answer (retrying will not
/// help); `Io` is the transport.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The target refused the login.
    #[error("login refused: {0}")]
    Refused(String),
    /// The connection failed or the target broke the protocol.
    #[error("login failed: {0}")]
    Io(#[from] io::Error),
}

/// One login round's answer: the response header, its text, and the MaxCmdSN it gave.
struct Answer {
    resp: LoginResponse,
    pairs: Vec<(String, String)>,
    max_cmd_sn: u32,
}

struct Exchange<'a, S> {
    stream: &'a mut S,
    isid: [u8; 6],
    cmd_sn: u32,
    exp_stat_sn: u32,
}

impl<S: Read + Write> Exchange<'_, S> {
    fn round(
        &mut self,
        transit: bool,
        csg: u8,
        nsg: u8,
        pairs: &[(&str, String)],
    ) -> Result<Answer, LoginError> {
        let data = text::encode(pairs);
        let req = LoginRequest {
            transit,
            csg,
            nsg,
            isid: self.isid,
            itt: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data_len: data.len() as u32,
        };
        wire::write_pdu(self.stream, &req.bhs(), &data)?;
        // A response may come in pieces (the Continue bit); collect its text.
        let mut all = Vec::new();
        loop {
            let bhs = wire::read_header(self.stream, LOGIN_MAX_DATA)?;
            if bhs.opcode() != op::LOGIN_RESPONSE {
                return Err(wire::invalid(format!(
                    "expected a login response, got opcode {:#04x}",
                    bhs.opcode()
                ))
                .into());
            }
            let resp = LoginResponse::decode(&bhs).map_err(wire::invalid)?;
            all.extend_from_slice(&wire::read_data(self.stream, &bhs)?);
            if resp.status_class != 0 {
                return Err(LoginError::Refused(resp.status_text()));
            }
            self.exp_stat_sn = bhs.stat_sn().wrapping_add(1);
            if resp.continue_ {
                // Ask for the rest with an empty request.
                let req = LoginRequest {
                    data_len: 0,
                    transit: false,
                    ..req
                };
                wire::write_pdu(self.stream, &req.bhs(), &[])?;
                continue;
            }
            let pairs = text::parse(&all).map_err(|e| wire::invalid(e.to_string()))?;
            return Ok(Answer {
                resp,
                pairs,
                max_cmd_sn: bhs.max_cmd_sn(),
            });
        }
    }
}

/// Logs in to `url`'s target over `stream` (already connected, with timeouts set).
pub fn login<S: Read + Write>(
    stream: &mut S,
    url: &IscsiUrl,
    isid: [u8; 6],
    cmd_sn: u32,
) -> Result<LoggedIn, LoginError> {
    let mut x = Exchange {
        stream,
        isid,
        cmd_sn,
        exp_stat_sn: 0,
    };
    let auth = if url.chap.is_some() {
        "CHAP,None"
    } else {
        "None"
    };
    let first = vec![
        ("InitiatorName", url.initiator.clone()),
        ("SessionType", "Normal".to_string()),
        ("TargetName", url.target.clone()),
        ("AuthMethod", auth.to_string()),
    ];
    let Answer {
        mut resp, pairs, ..
    } = x.round(true, stage::SECURITY, stage::OPERATIONAL, &first)?;
    let method = value(&pairs, "AuthMethod").unwrap_or("None");
    if method == "CHAP" {
        let Some((user, secret)) = url.chap.clone() else {
            return Err(LoginError::Refused(
                "the target requires CHAP: give the credentials as iscsi://USER%SECRET@HOST/..."
                    .into(),
            ));
        };
        let Answer { pairs, .. } = x.round(
            false,
            stage::SECURITY,
            stage::OPERATIONAL,
            &[("CHAP_A", "5".into())],
        )?;
        let answer = chap_answer(&pairs, &secret).map_err(LoginError::Refused)?;
        let Answer { resp: r, .. } = x.round(
            true,
            stage::SECURITY,
            stage::OPERATIONAL,
            &[("CHAP_N", user), ("CHAP_R", answer)],
        )?;
        resp = r;
    } else if method != "None" {
        return Err(LoginError::Refused(format!(
            "the target asks for authentication method {method:?}; csvfs does None and CHAP"
        )));
    }
    if !resp.transit {
        return Err(LoginError::Refused(
            "the target did not leave the security stage".into(),
        ));
    }
    let mut params = Params::defaults(INITIATOR_MAX_RECV);
    let mut max_cmd_sn = cmd_sn;
    if resp.nsg != stage::FULL_FEATURE {
        let mut offer = params.offer();
        for _ in 0..4 {
            let Answer {
                resp: r,
                pairs,
                max_cmd_sn: max,
            } = x.round(true, stage::OPERATIONAL, stage::FULL_FEATURE, &offer)?;
            for (k, v) in &pairs {
                params
                    .apply(k, v)
                    .map_err(|e| LoginError::Refused(e.to_string()))?;
            }
            max_cmd_sn = max;
            if r.transit && r.nsg == stage::FULL_FEATURE {
                params
                    .check()
                    .map_err(|e| LoginError::Refused(e.to_string()))?;
                return Ok(LoggedIn {
                    params,
                    cmd_sn,
                    exp_stat_sn: x.exp_stat_sn,
                    max_cmd_sn,
                    tsih: r.tsih,
                });
            }
            offer = Vec::new();
        }
        return Err(LoginError::Refused(
            "the target would not finish the operational stage".into(),
        ));
    }
    Ok(LoggedIn {
        params,
        cmd_sn,
        exp_stat_sn: x.exp_stat_sn,
        max_cmd_sn,
        tsih: resp.tsih,
    })
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The CHAP response (RFC 1994): MD5 over the identifier, the secret and the challenge,
/// in hex.
pub fn chap_answer(pairs: &[(String, String)], secret: &str) -> Result<String, String> {
    if value(pairs, "CHAP_A") != Some("5") {
        return Err("the target did not agree to CHAP with MD5 (CHAP_A=5)".into());
    }
    let id: u8 = value(pairs, "CHAP_I")
        .and_then(|v| v.parse().ok())
        .ok_or("the target sent no valid CHAP_I")?;
    let challenge = value(pairs, "CHAP_C")
        .ok_or("the target sent no CHAP_C")
        .and_then(|c| decode_hex(c).ok_or("CHAP_C is not 0x-prefixed hex"))?;
    if challenge.is_empty() || challenge.len() > 1024 {
        return Err("CHAP_C must be 1 to 1024 bytes".into());
    }
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret.as_bytes());
    h.update(&challenge);
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("0x{hex}"))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn chap_answer_is_md5_of_id_secret_challenge() {
        // MD5(0x01 || "secret" || 0x0102) computed independently with Python's hashlib.
        let p = pairs(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x0102")]);
        assert_eq!(
            chap_answer(&p, "secret").unwrap(),
            "0x18c6ee42cdcc2258144945ad28cad5a2"
        );
    }

    #[test]
    fn chap_refuses_what_it_cannot_answer() {
        for (p, says) in [
            (vec![("CHAP_A", "7")], "MD5"),
            (vec![("CHAP_A", "5"), ("CHAP_C", "0x01")], "CHAP_I"),
            (vec![("CHAP_A", "5"), ("CHAP_I", "1")], "CHAP_C"),
            (
                vec![("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0xzz")],
                "hex",
            ),
            (
                vec![("CHAP_A", "5"), ("CHAP_I", "300"), ("CHAP_C", "0x01")],
                "CHAP_I",
            ),
        ] {
            let e = chap_answer(&pairs(&p), "s").unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
