//! Redirected I/O over real QUIC with the cluster's mutual TLS on 127.0.0.1: node n2
//! sends its block I/O to n1, which serves it on a LUN (an image file) behind the
//! coordinator's gate ([`redirect_io::cluster::admit`] over a coordinator's status).
//! A fenced life of n2 is refused and nothing it wrote lands; a newer life is served,
//! large I/O streamed in pieces; a sender of another epoch is never served; an I/O
//! the node's life ends under fails as fenced.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, BlockError, FileDevice};
use lockmgr::config::NodeConfig;
use lockmgr::shell::VolumeStatus;
use lockmgr::transport::Connection;
use lockmgr::{Config, Endpoint, identity};
use parking_lot::Mutex;
use redirect_io::client::Opening;
use redirect_io::server::{self, Gate, Refusal, ServedCounters};
use redirect_io::wire::Credentials;
use redirect_io::{RedirectedDevice, Route, Target};

/// A cluster "test" of n1 and n2 on free ports, written under `dir` as `csvctl
/// cluster init` would.
fn two_nodes(dir: &Path) -> Config {
    let free = || {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let nodes = ["n1", "n2"];
    let mut config = Config::new(
        "test",
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeConfig {
                name: n.to_string(),
                id: i as u8 + 1,
                address: free(),
            })
            .collect(),
    );
    let path = dir.join("cluster.toml");
    config.path = path.clone();
    identity::init(&config.cert_dir(), "test", &nodes, false).unwrap();
    config.save(&path).unwrap();
    Config::load(&path).unwrap()
}

/// n1 as coordinator of epoch 7, having fenced n2 up to incarnation 4.
struct Coordinator;

impl Gate for Coordinator {
    fn admit(&self, from: u8, who: Credentials) -> Result<(), Refusal> {
        let st = VolumeStatus {
            label: "Volume1".into(),
            role: "coordinator".into(),
            coordinator: Some(1),
            epoch: 7,
            incarnation: 1,
            key: 0,
            serving: true,
            handing_over: None,
            hand_over_failure: None,
            coordinator_serving: false,
            leases: 0,
            lockspace: Some(0),
            since_ms: 0,
            io: None,
            refused: vec![(2, 4)],
            evicted: Vec::new(),
        };
        redirect_io::cluster::admit(&st, from, who)
    }
}

/// n2's way to n1, as whoever `who` says.
struct ToN1 {
    endpoint: Endpoint,
    conn: tokio::sync::Mutex<Option<Connection>>,
    who: Mutex<Credentials>,
}

impl Route for ToN1 {
    fn target(&self) -> Option<Target> {
        Some(Target {
            node: 1,
            from: *self.who.lock(),
        })
    }

    fn open(&self, _to: u8) -> Opening<'_> {
        Box::pin(async move {
            let mut conn = self.conn.lock().await;
            if conn.is_none() {
                *conn = Some(
                    self.endpoint
                        .connect("n1")
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let c = conn.as_ref().expect("connected");
            c.open_stream().await.map_err(|e| e.to_string())
        })
    }
}

#[test]
fn a_fenced_life_is_refused_a_newer_one_served_and_another_epoch_never() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_nodes(dir.path());
    let img = dir.path().join("lun.img");
    FileDevice::create_image(&img, 64 << 20).unwrap();
    let lun: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&img, false).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let counters = Arc::new(ServedCounters::default());
    let (n1, n2) = rt.block_on(async {
        (
            Endpoint::bind(&config, "n1").unwrap(),
            Endpoint::bind(&config, "n2").unwrap(),
        )
    });
    {
        let lun = lun.clone();
        let counters = counters.clone();
        rt.spawn(async move {
            while let Some(Ok(conn)) = n1.accept().await {
                let lun = lun.clone();
                let counters = counters.clone();
                tokio::spawn(async move {
                    while let Ok(stream) = conn.accept_stream().await {
                        tokio::spawn(server::serve(
                            2,
                            stream,
                            lun.clone(),
                            Arc::new(Coordinator),
                            counters.clone(),
                        ));
                    }
                });
            }
        });
    }
    let route = Arc::new(ToN1 {
        endpoint: n2,
        conn: tokio::sync::Mutex::new(None),
        who: Mutex::new(Credentials {
            epoch: 7,
            incarnation: 4,
        }),
    });
    let dev = RedirectedDevice::new(
        "lun.img",
        lun.capacity(),
        lun.block_size(),
        route.clone(),
        rt.handle().clone(),
        Duration::from_secs(2),
    );

    // The connection first, so that its handshake does not count against the device's
    // 2 s patience of the first I/O (on a loaded machine it once did: CI).
    rt.block_on(route.open(1)).expect("a stream to n1");

    // The fenced life: refused, and nothing lands.
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let e = dev.write_at(&data, 1 << 20).unwrap_err();
    assert!(
        matches!(e, BlockError::Fenced { .. }),
        "{e}: {:?}",
        std::error::Error::source(&e).map(|s| s.to_string())
    );
    let mut back = vec![1u8; data.len()];
    lun.read_at(&mut back, 1 << 20).unwrap();
    assert!(back.iter().all(|&b| b == 0), "a fenced write landed");
    let e = dev.flush().unwrap_err();
    assert!(matches!(e, BlockError::Fenced { .. }), "{e}");

    // A newer life: served; 3 MiB go as twelve pieces on one stream.
    route.who.lock().incarnation = 5;
    dev.write_at(&data, 1 << 20).unwrap();
    dev.flush().unwrap();
    lun.read_at(&mut back, 1 << 20).unwrap();
    assert!(back == data, "the served write did not land as sent");
    let mut through = vec![0u8; data.len()];
    dev.read_at(&mut through, 1 << 20).unwrap();
    assert!(through == data);

    // Another epoch: never served; after the device's patience the I/O fails saying so.
    route.who.lock().epoch = 6;
    let e = dev.write_at(&data[..4096], 0).unwrap_err();
    let why = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(
        why.contains("within 2s") && why.contains("WrongEpoch"),
        "{e}: {why}"
    );
    let mut first = vec![1u8; 4096];
    lun.read_at(&mut first, 0).unwrap();
    assert!(
        first.iter().all(|&b| b == 0),
        "a write of another epoch landed"
    );

    // An I/O that the node's life does not outlive: the node takes a new life while
    // the write waits for an answer that serves it; the write fails as fenced, it does
    // not go out as the new life.
    let bump = {
        let route = route.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            route.who.lock().incarnation = 6;
        })
    };
    let e = dev.write_at(&data[..4096], 0).unwrap_err();
    bump.join().unwrap();
    assert!(matches!(e, BlockError::Fenced { .. }), "{e}");
    lun.read_at(&mut first, 0).unwrap();
    assert!(
        first.iter().all(|&b| b == 0),
        "a write of an earlier life landed"
    );

    // How fast redirected reads go here (printed, not asserted: see tools/bench-redirect).
    route.who.lock().epoch = 7;
    const READS: u64 = 48;
    let mut mib = vec![0u8; 1 << 20];
    let start = std::time::Instant::now();
    for i in 0..READS {
        dev.read_at(&mut mib, i << 20).unwrap();
    }
    let redirected = READS as f64 * 1.048576 / start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    for i in 0..READS {
        lun.read_at(&mut mib, i << 20).unwrap();
    }
    let local = READS as f64 * 1.048576 / start.elapsed().as_secs_f64();
    println!(
        "1 MiB reads: {redirected:.0} MB/s redirected over loopback QUIC, {local:.0} MB/s from the image itself"
    );

    let refused = counters.refused.load(std::sync::atomic::Ordering::Relaxed);
    let served = counters.requests.load(std::sync::atomic::Ordering::Relaxed);
    println!("served {served} requests, refused {refused}");
    assert!(refused >= 5, "refused {refused}");
    assert_eq!(
        served,
        12 + 1 + 12 + 4 * READS,
        "twelve 256 KiB write pieces, a flush, twelve read pieces, the timed reads"
    );
}
