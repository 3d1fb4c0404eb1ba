//! Tests of the tgtd fixture: the target it sets up, side by side instances, restarts,
//! CHAP accounts, the write cache, and that no daemon outlives its fixture.
//!
//! Each start is checked two ways: what tgtadm reports, and what the port answers over
//! iSCSI, spoken here by hand (login, one MODE SENSE) so these tests depend on no
//! initiator.

use csvfs_tests::tgtd::{Tgtd, TgtdOptions};
use csvfs_tests::{Scratch, require_tgtd};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// A sparse image of `size` bytes in the scratch directory.
fn sparse_image(scratch: &Scratch, size: u64) -> std::path::PathBuf {
    let img = scratch.image();
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size))
        .expect("create the image");
    img
}

/// The reply to one Login Request: status class, status detail, transit bit, and the
/// text keys of the data segment.
struct LoginReply {
    class: u8,
    detail: u8,
    transit: bool,
    keys: Vec<String>,
}

/// A bare-bones iSCSI initiator connection: just enough PDUs to log in and send one
/// read-type SCSI command, with one command in flight and no error handling.
struct Probe {
    s: TcpStream,
    tsih: u16,
    cmd_sn: u32,
    exp_stat_sn: u32,
}

impl Probe {
    fn connect(port: u16) -> Probe {
        let s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot connect to tgtd on port {port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        Probe {
            s,
            tsih: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    /// Sends a PDU: the 48-byte header with its data segment length filled in, then
    /// the data padded to 4 bytes.
    fn send(&mut self, mut bhs: [u8; 48], data: &[u8]) {
        bhs[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        let mut pdu = bhs.to_vec();
        pdu.extend_from_slice(data);
        pdu.resize(pdu.len().next_multiple_of(4), 0);
        self.s.write_all(&pdu).expect("send a PDU");
    }

    /// Reads a PDU: its header and its data segment without padding.
    fn recv(&mut self) -> ([u8; 48], Vec<u8>) {
        let mut bhs = [0u8; 48];
        self.s.read_exact(&mut bhs).expect("read a PDU header");
        let len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut data = vec![0u8; len.next_multiple_of(4)];
        self.s
            .read_exact(&mut data)
            .expect("read a PDU data segment");
        data.truncate(len);
        (bhs, data)
    }

    /// One Login Request from stage `csg` asking to go on to `nsg`, with text `keys`.
    fn login(&mut self, csg: u8, nsg: u8, keys: &[String]) -> LoginReply {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x40 | 0x03; // immediate, Login Request
        bhs[1] = 0x80 | (csg << 2) | nsg; // transit
        bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0x12, 0x34]); // ISID, random type
        bhs[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        bhs[16..20].copy_from_slice(&1u32.to_be_bytes()); // ITT
        bhs[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        bhs[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        let data: Vec<u8> = keys.iter().flat_map(|k| k.bytes().chain([0])).collect();
        self.send(bhs, &data);
        let (reply, data) = self.recv();
        assert_eq!(reply[0] & 0x3f, 0x23, "not a Login Response: {reply:02x?}");
        self.tsih = u16::from_be_bytes([reply[14], reply[15]]);
        self.exp_stat_sn = u32::from_be_bytes(reply[24..28].try_into().expect("4")) + 1;
        LoginReply {
            class: reply[36],
            detail: reply[37],
            transit: reply[1] & 0x80 != 0,
            keys: data
                .split(|&b| b == 0)
                .filter(|k| !k.is_empty())
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect(),
        }
    }

    /// Logs in to `iqn` without authentication, through to the full feature phase.
    fn full_login(&mut self, iqn: &str) {
        let r = self.login(0, 1, &security_keys(iqn, "None"));
        assert_eq!((r.class, r.detail, r.transit), (0, 0, true), "{:?}", r.keys);
        let r = self.login(1, 3, &[]);
        assert_eq!((r.class, r.detail, r.transit), (0, 0, true), "{:?}", r.keys);
    }

    /// MODE SENSE(6) of the caching page of `lun`: true when WCE is set. Retries past
    /// the UNIT ATTENTION a fresh nexus gets first.
    fn write_cache_enabled(&mut self, lun: u8) -> bool {
        for itt in 2u32..5 {
            match self.mode_sense_caching(lun, itt) {
                Ok(sense) => {
                    // 4-byte mode parameter header, no block descriptor (DBD), the page.
                    let page = &sense[4..];
                    assert_eq!(page[0] & 0x3f, 0x08, "not the caching page: {sense:02x?}");
                    return page[2] & 0x04 != 0;
                }
                Err(sense) if sense.get(2).is_some_and(|k| k & 0x0f == 0x06) => {}
                Err(sense) => panic!("MODE SENSE failed, sense data {sense:02x?}"),
            }
        }
        panic!("MODE SENSE kept failing with UNIT ATTENTION");
    }

    /// One MODE SENSE(6) of page 8: the data, or the sense data of a CHECK CONDITION.
    fn mode_sense_caching(&mut self, lun: u8, itt: u32) -> Result<Vec<u8>, Vec<u8>> {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x01; // SCSI Command
        bhs[1] = 0x80 | 0x40 | 0x01; // final, read, simple task
        bhs[9] = lun; // single level LUN, peripheral addressing
        bhs[16..20].copy_from_slice(&itt.to_be_bytes());
        bhs[20..24].copy_from_slice(&255u32.to_be_bytes()); // expected length
        bhs[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        bhs[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        bhs[32..38].copy_from_slice(&[0x1a, 0x08, 0x08, 0, 255, 0]); // DBD, page 8
        self.send(bhs, &[]);
        self.cmd_sn += 1;
        let mut got = Vec::new();
        loop {
            let (reply, data) = self.recv();
            let opcode = reply[0] & 0x3f;
            let status_here = opcode == 0x21 || (opcode == 0x25 && reply[1] & 0x01 != 0);
            if status_here {
                self.exp_stat_sn = u32::from_be_bytes(reply[24..28].try_into().expect("4")) + 1;
            }
            match opcode {
                0x25 => {
                    got.extend_from_slice(&data);
                    if status_here {
                        assert_eq!(reply[3], 0, "MODE SENSE status {:#x}", reply[3]);
                        return Ok(got);
                    }
                }
                0x21 if reply[3] == 0 => return Ok(got),
                // CHECK CONDITION: the data segment is a 2-byte length, then sense data.
                0x21 if reply[3] == 0x02 => return Err(data.get(2..).unwrap_or(&[]).to_vec()),
                0x21 => panic!("MODE SENSE status {:#x}", reply[3]),
                op => panic!("unexpected PDU {op:#x} answering MODE SENSE"),
            }
        }
    }
}

/// The keys of the security stage of a normal session to `iqn`.
fn security_keys(iqn: &str, auth: &str) -> Vec<String> {
    vec![
        "InitiatorName=iqn.2026-11.io.csvfs.test:fixture-probe".into(),
        "SessionType=Normal".into(),
        format!("TargetName={iqn}"),
        format!("AuthMethod={auth}"),
    ]
}

/// Sends the first Login Request of a normal session to `iqn`, offering `auth` as
/// AuthMethod, and returns the reply.
fn login(port: u16, iqn: &str, auth: &str) -> LoginReply {
    Probe::connect(port).login(0, 1, &security_keys(iqn, auth))
}

/// Asserts that the target logs an initiator in without authentication.
fn assert_serves(t: &Tgtd) {
    let r = login(t.port(), t.iqn(), "None");
    assert_eq!(
        (r.class, r.detail),
        (0, 0),
        "login to {} refused: {:?}\n{}",
        t.url(),
        r.keys,
        t.log()
    );
    assert!(r.transit, "the target did not let the login on");
}

/// Asserts that `tgtadm --mode target --op show` lists our IQN and LUN 1 backed by
/// `image` with `size_mb` (tgtd counts decimal megabytes).
fn assert_target_shown(t: &Tgtd, image: &Path, size_mb: u64) {
    let show = t.tgtadm_ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    assert!(
        show.contains(&format!("Target 1: {}\n", t.iqn())),
        "IQN missing:\n{show}"
    );
    let lun1 = show
        .split("LUN: 1\n")
        .nth(1)
        .unwrap_or_else(|| panic!("LUN 1 missing:\n{show}"));
    for want in [
        "Type: disk".to_string(),
        format!("Size: {size_mb} MB, Block size: 512"),
        "Backing store type: rdwr".to_string(),
        format!("Backing store path: {}", image.display()),
        "Readonly: No".to_string(),
    ] {
        assert!(lun1.contains(&want), "{want:?} missing from LUN 1:\n{show}");
    }
    assert!(
        show.contains("ACL information:\n        ALL"),
        "ACL:\n{show}"
    );
}

/// True when `cmdline` (NUL-separated) is a tgtd with this control port and portal.
fn is_fixture_tgtd(cmdline: &str, control_port: u16, port: u16) -> bool {
    cmdline.contains("tgtd\0")
        && cmdline.contains(&format!("\0-C\0{control_port}\0"))
        && cmdline.contains(&format!("portal=127.0.0.1:{port}\0"))
}

/// True while `pid` is this fixture's tgtd (and not a reused pid).
fn pid_is_tgtd(pid: u32, control_port: u16, port: u16) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| is_fixture_tgtd(&c, control_port, port))
}

/// True while any process is a tgtd with this control port and portal.
fn any_tgtd(control_port: u16, port: u16) -> bool {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .any(|c| is_fixture_tgtd(&c, control_port, port))
}

#[test]
fn serves_the_image_as_lun_1() {
    require_tgtd();
    let scratch = Scratch::new();
    let img = sparse_image(&scratch, 64 * MIB);
    let t = Tgtd::start(&img, TgtdOptions::default());
    assert!(t.iqn().starts_with("iqn.2026-11.io.csvfs.test:"));
    assert_eq!(
        t.url(),
        format!("iscsi://127.0.0.1:{}/{}/1", t.port(), t.iqn())
    );
    assert_target_shown(&t, &std::fs::canonicalize(&img).expect("canon"), 67);
    let portals = t.tgtadm_ok(&["--lld", "iscsi", "--mode", "portal", "--op", "show"]);
    assert_eq!(portals.trim(), format!("Portal: 127.0.0.1:{},1", t.port()));
    assert_serves(&t);
    // A wrong target name is refused: the login above really reached our target.
    let r = login(t.port(), "iqn.2026-11.io.csvfs.test:nobody", "None");
    assert_eq!(r.class, 2, "unknown target accepted: {:?}", r.keys);
    assert!(t.log().contains("--- start 1:"), "{}", t.log());
}

#[test]
fn two_fixtures_run_side_by_side() {
    require_tgtd();
    let (sa, sb) = (Scratch::new(), Scratch::new());
    let (ia, ib) = (sparse_image(&sa, 64 * MIB), sparse_image(&sb, 32 * MIB));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Tgtd::start(&ia, TgtdOptions::default()));
        let b = s.spawn(|| Tgtd::start(&ib, TgtdOptions::default()));
        (a.join().expect("start a"), b.join().expect("start b"))
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.control_port(), b.control_port());
    assert_ne!(a.iqn(), b.iqn());
    assert_ne!(a.pid(), b.pid());
    assert_target_shown(&a, &std::fs::canonicalize(&ia).expect("canon"), 67);
    assert_target_shown(&b, &std::fs::canonicalize(&ib).expect("canon"), 34);
    assert_serves(&a);
    assert_serves(&b);
    // Each daemon knows only its own target.
    let r = login(a.port(), b.iqn(), "None");
    assert_eq!(r.class, 2, "a serves b's target: {:?}", r.keys);
    drop(a);
    assert_serves(&b);
}

#[test]
fn restart_serves_again_on_the_same_port() {
    require_tgtd();
    let scratch = Scratch::new();
    let img = sparse_image(&scratch, 64 * MIB);
    let mut t = Tgtd::start(&img, TgtdOptions::default());
    let (port, url, pid) = (t.port(), t.url(), t.pid());
    // A logged-in session across the restart: it must end, and not hold tgtd up.
    let mut session = Probe::connect(port);
    session.full_login(t.iqn());
    assert!(session.write_cache_enabled(1));
    let started = Instant::now();
    t.restart();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "restarting took {:?}: tgtd was killed, not stopped\n{}",
        started.elapsed(),
        t.log()
    );
    assert_eq!((t.port(), t.url()), (port, url));
    assert_ne!(t.pid(), pid, "the daemon was not restarted");
    assert!(
        !pid_is_tgtd(pid, t.control_port(), port),
        "the old daemon {pid} still runs"
    );
    let mut b = [0u8; 1];
    assert!(
        matches!(session.s.read(&mut b), Ok(0) | Err(_)),
        "a session survived the restart"
    );
    assert_target_shown(&t, &std::fs::canonicalize(&img).expect("canon"), 67);
    assert_serves(&t);

    // And a crash: SIGKILL, then the same again.
    let pid = t.pid();
    t.kill_and_restart();
    assert_ne!(t.pid(), pid);
    assert!(
        !pid_is_tgtd(pid, t.control_port(), port),
        "the killed daemon {pid} still runs"
    );
    assert_eq!(t.port(), port);
    assert_serves(&t);
    let log = t.log();
    assert!(log.contains("--- start 3:"), "{log}");
}

#[test]
fn chap_account_is_bound_to_the_target() {
    require_tgtd();
    let scratch = Scratch::new();
    let img = sparse_image(&scratch, 64 * MIB);
    let opts = TgtdOptions {
        chap: Some(("csvfs-user".into(), "csvfs-secret-16ch".into())),
        ..TgtdOptions::default()
    };
    let mut t = Tgtd::start(&img, opts);
    let check = |t: &Tgtd| {
        let accounts = t.tgtadm_ok(&["--lld", "iscsi", "--mode", "account", "--op", "show"]);
        assert!(
            accounts.lines().any(|l| l.trim() == "csvfs-user"),
            "account missing:\n{accounts}"
        );
        let target = t.tgtadm_ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]);
        assert!(
            target.contains("Account information:\n        csvfs-user\n"),
            "account not bound:\n{target}"
        );
        // The target insists on CHAP: offered CHAP or nothing, it picks CHAP.
        let r = login(t.port(), t.iqn(), "CHAP,None");
        assert_eq!((r.class, r.detail), (0, 0), "{:?}", r.keys);
        assert!(
            r.keys.iter().any(|k| k == "AuthMethod=CHAP"),
            "{:?}",
            r.keys
        );
        assert!(!r.transit, "the target let the login on without CHAP");
    };
    check(&t);
    t.restart();
    check(&t);
}

#[test]
fn write_cache_can_be_turned_off() {
    require_tgtd();
    let scratch = Scratch::new();
    let img = sparse_image(&scratch, 64 * MIB);
    let t = Tgtd::start(
        &img,
        TgtdOptions {
            write_cache: false,
            ..TgtdOptions::default()
        },
    );
    let mut p = Probe::connect(t.port());
    p.full_login(t.iqn());
    assert!(!p.write_cache_enabled(1), "LUN 1 still reports WCE");
}

#[test]
fn write_cache_is_on_by_default() {
    require_tgtd();
    let scratch = Scratch::new();
    let img = sparse_image(&scratch, 64 * MIB);
    let t = Tgtd::start(&img, TgtdOptions::default());
    let mut p = Probe::connect(t.port());
    p.full_login(t.iqn());
    assert!(p.write_cache_enabled(1), "LUN 1 does not report WCE");
}

#[test]
fn drop_leaves_no_daemon() {
    require_tgtd();
    let scratch = Scratch::new();
    let img = sparse_image(&scratch, 64 * MIB);
    let t = Tgtd::start(&img, TgtdOptions::default());
    let (pid, control, port) = (t.pid(), t.control_port(), t.port());
    assert!(
        pid_is_tgtd(pid, control, port),
        "cannot see the running tgtd"
    );
    // A session logged in at drop time must not keep the daemon up.
    let mut session = Probe::connect(port);
    session.full_login(t.iqn());
    let started = Instant::now();
    drop(t);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping tgtd took {:?}: it was killed, not stopped",
        started.elapsed()
    );
    assert!(
        !pid_is_tgtd(pid, control, port),
        "tgtd pid {pid} is still there"
    );
    assert!(!any_tgtd(control, port), "a tgtd with -C {control} remains");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on the iSCSI port {port}"
    );
}

#[test]
#[should_panic(expected = "must exist before tgtd starts")]
fn a_missing_image_fails_loudly() {
    require_tgtd();
    let scratch = Scratch::new();
    let _ = Tgtd::start(&scratch.path("absent.img"), TgtdOptions::default());
}
