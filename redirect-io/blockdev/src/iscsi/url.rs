//! `iscsi://[USER%SECRET@]HOST[:PORT]/TARGET-IQN/LUN[?initiator=NAME&timeout=SECS]`:
//! where an iSCSI LUN is, how to log in to it and as whom.
//!
//! The user part gives CHAP credentials (libiscsi's `%` between user and secret; `:` is
//! accepted too). The initiator name comes from the URL's `initiator` query, else from
//! `CSVFS_INITIATOR_NAME`, else `iqn.2026-11.io.csvfs:<hostname>`.

use std::time::Duration;

/// The default iSCSI port.
pub const DEFAULT_PORT: u16 = 3260;

/// An iSCSI LUN's address and the way to log in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    /// Host name or address of the portal.
    pub host: String,
    /// TCP port of the portal.
    pub port: u16,
    /// The target's IQN.
    pub target: String,
    /// The LUN number.
    pub lun: u16,
    /// CHAP user and secret, if the target asks for CHAP.
    pub chap: Option<(String, String)>,
    /// This initiator's name.
    pub initiator: String,
    /// How long one command may take before it is aborted.
    pub timeout: Duration,
}

impl std::fmt::Debug for IscsiUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the CHAP secret.
        write!(f, "{}", self.display_name())
    }
}

impl IscsiUrl {
    /// Parses an `iscsi://` URL; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<IscsiUrl, String> {
        let rest = s
            .strip_prefix("iscsi://")
            .ok_or("an iSCSI LUN starts with iscsi://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let chap = auth
            .map(|a| {
                let (u, p) = a
                    .split_once('%')
                    .or_else(|| a.split_once(':'))
                    .ok_or("CHAP credentials are USER%SECRET@")?;
                if u.is_empty() || p.is_empty() {
                    return Err("CHAP user and secret must not be empty");
                }
                Ok((u.to_string(), p.to_string()))
            })
            .transpose()?;
        let mut parts = rest.splitn(3, '/');
        let hostport = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let lun = parts
            .next()
            .ok_or("expected iscsi://HOST[:PORT]/TARGET-IQN/LUN (the LUN number is missing)")?;
        let (host, port) = split_host_port(hostport)?;
        if target.is_empty() {
            return Err("the target IQN is missing".into());
        }
        let lun: u16 = lun
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("LUN {lun:?} is not a number from 0 to 16383"))?;
        if lun > 0x3fff {
            return Err(format!("LUN {lun} is not a number from 0 to 16383"));
        }
        let mut url = IscsiUrl {
            host,
            port,
            target: target.to_string(),
            lun,
            chap,
            initiator: default_initiator_name(),
            timeout: Duration::from_secs(30),
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("query {pair:?} is not KEY=VALUE"))?;
            match k {
                "initiator" => {
                    if v.is_empty() || v.len() > 223 {
                        return Err("the initiator name must be 1 to 223 bytes".into());
                    }
                    url.initiator = v.to_string();
                }
                "timeout" => {
                    let secs: u64 = v
                        .parse()
                        .ok()
                        .filter(|s| (1..=3600).contains(s))
                        .ok_or("timeout is a number of seconds from 1 to 3600")?;
                    url.timeout = Duration::from_secs(secs);
                }
                other => {
                    return Err(format!(
                        "unknown query key {other:?} (known: initiator, timeout)"
                    ));
                }
            }
        }
        Ok(url)
    }

    /// The URL without credentials, for messages.
    pub fn display_name(&self) -> String {
        format!(
            "iscsi://{}:{}/{}/{}",
            self.host, self.port, self.target, self.lun
        )
    }
}

fn split_host_port(hp: &str) -> Result<(String, u16), String> {
    let bad_port = |p: &str| format!("port {p:?} is not a number from 1 to 65535");
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the host")),
        };
        (h, port)
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad_port(p))?,
        None => DEFAULT_PORT,
    };
    Ok((host.to_string(), port))
}

/// `CSVFS_INITIATOR_NAME`, else `iqn.2026-11.io.csvfs:<hostname>`.
pub fn default_initiator_name() -> String {
    if let Ok(n) = std::env::var("CSVFS_INITIATOR_NAME")
        && !n.is_empty()
    {
        return n;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "localhost".into()
    } else {
        host
    };
    format!("iqn.2026-11.io.csvfs:{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let u = IscsiUrl::parse(
            "iscsi://user%pw@127.0.0.1:3261/iqn.2026-11.io.csvfs:t1/1?initiator=iqn.x:n1&timeout=5",
        )
        .unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 3261);
        assert_eq!(u.target, "iqn.2026-11.io.csvfs:t1");
        assert_eq!(u.lun, 1);
        assert_eq!(u.chap, Some(("user".into(), "pw".into())));
        assert_eq!(u.initiator, "iqn.x:n1");
        assert_eq!(u.timeout, Duration::from_secs(5));
        assert!(!format!("{u:?}").contains("pw"));
        let u = IscsiUrl::parse("iscsi://[::1]/iqn.t/0").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", DEFAULT_PORT));
    }

    #[test]
    fn every_mistake_says_what_is_wrong() {
        for (bad, says) in [
            ("iscsi://host/iqn", "LUN number is missing"),
            ("iscsi://host//1", "target IQN is missing"),
            ("iscsi://host:0/iqn/1", "port"),
            ("iscsi://host:x/iqn/1", "port"),
            ("iscsi://:3260/iqn/1", "host is missing"),
            ("iscsi://host/iqn/99999", "LUN"),
            ("iscsi://u@host/iqn/1", "USER%SECRET"),
            ("iscsi://host/iqn/1?foo=1", "unknown query key"),
            ("iscsi://host/iqn/1?timeout=0", "timeout"),
        ] {
            let e = IscsiUrl::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
