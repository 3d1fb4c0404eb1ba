//! The reference of the migration benchmark: how fast bulk data moves on the cluster's
//! own QUIC transport (the endpoints, mutual TLS and transport settings that live
//! migration uses), with nothing else to do: 1 MiB frames sent back to back on one
//! stream between two service endpoints on the nodes' addresses, in one process.

use std::path::Path;
use std::time::Instant;

use lockmgr::config::Config;
use lockmgr::transport::Endpoint;

/// Sends `mib` MiB from node `from` to node `to` of the cluster configured at `config`;
/// returns MiB/s, from the first frame sent to the receiver's acknowledgement of the
/// last.
pub fn bulk_mib_per_s(config: &Path, from: &str, to: &str, mib: usize) -> f64 {
    let config = Config::load(config).expect("cluster configuration");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let sender = Endpoint::bind_service(&config, from).expect("sender endpoint");
        let receiver = Endpoint::bind_service(&config, to).expect("receiver endpoint");
        let addr = receiver.local_addr().expect("receiver address");
        let receiving = tokio::spawn(async move {
            let conn = receiver
                .accept()
                .await
                .expect("a connection")
                .expect("admitted");
            let mut stream = conn.accept_stream().await.expect("a stream");
            let mut got = 0;
            while got < mib << 20 {
                let frame = stream.recv().await.expect("a frame").expect("more frames");
                got += frame.len();
            }
            stream.send(b"done").await.expect("acknowledgement");
            // Keep the endpoint until the sender has the acknowledgement.
            let _ = stream.recv().await;
        });
        let conn = sender.connect_at(to, addr).await.expect("connect");
        let mut stream = conn.open_stream().await.expect("open a stream");
        let frame = vec![0x5a_u8; 1 << 20];
        let start = Instant::now();
        for _ in 0..mib {
            stream.send(&frame).await.expect("send");
        }
        let ack = stream
            .recv()
            .await
            .expect("acknowledgement")
            .expect("an answer");
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(ack, b"done");
        drop(stream);
        drop(conn);
        let _ = receiving.await;
        mib as f64 / secs
    })
}
