//! The text of login negotiation: `key=value` pairs, each ended by a NUL byte
//! (RFC 7143 section 6), and the operational parameters they settle.

/// A malformed text segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A pair without `=`.
    #[error("text pair without '=': {0:?}")]
    NoEquals(String),
    /// Not UTF-8.
    #[error("text that is not UTF-8")]
    NotUtf8,
    /// A key of zero length or over 63 bytes.
    #[error("text key of bad length: {0:?}")]
    BadKey(String),
    /// A value that should be a number and is not, or is out of range.
    #[error("{key}={value} is not a valid value")]
    BadValue {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
}

/// Parses a text data segment into its pairs, in order. A trailing run of NULs
/// (padding) is allowed.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for raw in data.split(|b| *b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::NoEquals(s.to_string()))?;
        if k.is_empty() || k.len() > 63 {
            return Err(TextError::BadKey(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes pairs as a text data segment.
pub fn encode(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The operational parameters of a session, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The most data the target accepts in one PDU (its declaration).
    pub target_max_recv: u32,
    /// The most data this initiator accepts in one PDU (its declaration).
    pub initiator_max_recv: u32,
    /// Commands may carry data.
    pub immediate_data: bool,
    /// Unsolicited Data-Out is not allowed: every write waits for an R2T.
    pub initial_r2t: bool,
    /// The most unsolicited data per command.
    pub first_burst: u32,
    /// The most data per R2T or Data-In sequence.
    pub max_burst: u32,
    /// R2Ts outstanding per task.
    pub max_outstanding_r2t: u32,
}

impl Params {
    /// RFC 7143's defaults, with what this initiator proposes for its own receive size.
    pub fn defaults(initiator_max_recv: u32) -> Params {
        Params {
            target_max_recv: 8192,
            initiator_max_recv,
            immediate_data: true,
            initial_r2t: true,
            first_burst: 65536,
            max_burst: 262144,
            max_outstanding_r2t: 1,
        }
    }

    /// What this initiator offers in the operational stage.
    pub fn offer(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HeaderDigest", "None".into()),
            ("DataDigest", "None".into()),
            (
                "MaxRecvDataSegmentLength",
                self.initiator_max_recv.to_string(),
            ),
            ("ImmediateData", "Yes".into()),
            ("InitialR2T", "No".into()),
            ("FirstBurstLength", "262144".into()),
            ("MaxBurstLength", "1048576".into()),
            ("MaxOutstandingR2T", "1".into()),
            ("MaxConnections", "1".into()),
            ("DataPDUInOrder", "Yes".into()),
            ("DataSequenceInOrder", "Yes".into()),
            ("DefaultTime2Wait", "0".into()),
            ("DefaultTime2Retain", "0".into()),
            ("ErrorRecoveryLevel", "0".into()),
        ]
    }

    /// Takes in a pair the target sent, in answer to an offer or as its declaration.
    /// Keys this initiator does not use are ignored.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), TextError> {
        let bad = || TextError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
        };
        let num = |lo: u32, hi: u32| -> Result<u32, TextError> {
            let n: u32 = value.parse().map_err(|_| bad())?;
            if (lo..=hi).contains(&n) {
                Ok(n)
            } else {
                Err(bad())
            }
        };
        let yes_no = || match value {
            "Yes" => Ok(true),
            "No" => Ok(false),
            _ => Err(bad()),
        };
        match key {
            "MaxRecvDataSegmentLength" => self.target_max_recv = num(512, 16_777_215)?,
            "ImmediateData" => self.immediate_data = yes_no()?,
            "InitialR2T" => self.initial_r2t = yes_no()?,
            "FirstBurstLength" => self.first_burst = num(512, 16_777_215)?,
            "MaxBurstLength" => self.max_burst = num(512, 16_777_215)?,
            "MaxOutstandingR2T" => self.max_outstanding_r2t = num(1, 65535)?,
            "HeaderDigest" | "DataDigest" if value != "None" => return Err(bad()),
            "ErrorRecoveryLevel" if value != "0" => return Err(bad()),
            _ => {}
        }
        Ok(())
    }

    /// Checks the negotiated values against each other.
    pub fn check(&self) -> Result<(), TextError> {
        if self.first_burst > self.max_burst {
            return Err(TextError::BadValue {
                key: "FirstBurstLength".into(),
                value: format!("{} > MaxBurstLength {}", self.first_burst, self.max_burst),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_padding() {
        let p = parse(b"A=1\0B=x=y\0\0\0").unwrap();
        assert_eq!(
            p,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(matches!(parse(b"novalue\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=1\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(&[0xff, b'=', 0]), Err(TextError::NotUtf8)));
    }

    #[test]
    fn encode_then_parse() {
        let e = encode(&[("InitiatorName", "iqn.x".into()), ("X", "".into())]);
        assert_eq!(
            parse(&e).unwrap(),
            vec![
                ("InitiatorName".into(), "iqn.x".into()),
                ("X".into(), "".into())
            ]
        );
    }

    #[test]
    fn applies_answers_and_refuses_bad_values() {
        let mut p = Params::defaults(262144);
        p.apply("MaxRecvDataSegmentLength", "65536").unwrap();
        p.apply("InitialR2T", "Yes").unwrap();
        p.apply("TargetAlias", "whatever").unwrap();
        assert_eq!(p.target_max_recv, 65536);
        assert!(p.initial_r2t);
        assert!(p.apply("MaxBurstLength", "0").is_err());
        assert!(p.apply("ImmediateData", "maybe").is_err());
        assert!(p.apply("HeaderDigest", "CRC32C").is_err());
        p.first_burst = 1 << 20;
        p.max_burst = 1 << 16;
        assert!(p.check().is_err());
    }
}
