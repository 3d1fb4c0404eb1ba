//! Idle request streams to peers, kept for the next exchange: a stream goes back to
//! the pool only after a whole exchange (request and answer), so a stream taken from
//! it never holds half an answer.

use lockmgr::shell::Shell;
use lockmgr::transport::FramedStream;
use parking_lot::Mutex;

use super::wire::MAX_FRAME;

/// Idle streams of one service of one volume, by peer.
pub struct StreamPool {
    label: String,
    service: u8,
    idle: Mutex<Vec<(u8, FramedStream)>>,
}

impl StreamPool {
    /// A pool for `service` of volume `label`.
    pub fn new(label: &str, service: u8) -> StreamPool {
        StreamPool {
            label: label.to_string(),
            service,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle stream to `to`, or a new one.
    pub async fn take(&self, shell: &Shell, to: u8) -> Result<FramedStream, String> {
        let pooled = {
            let mut idle = self.idle.lock();
            idle.iter()
                .position(|(peer, _)| *peer == to)
                .map(|i| idle.swap_remove(i).1)
        };
        match pooled {
            Some(s) => Ok(s),
            None => {
                let mut s = shell
                    .open_service(to, &self.label, self.service)
                    .await
                    .map_err(|e| e.to_string())?;
                s.set_max_frame_len(MAX_FRAME);
                Ok(s)
            }
        }
    }

    /// Gives back a stream after a whole exchange.
    pub fn put(&self, to: u8, stream: FramedStream) {
        self.idle.lock().push((to, stream));
    }

    /// Sends `frame` to `to` on a stream of the pool and reads the answer through
    /// `read` (`peer` names the other side in errors); the stream goes back to the
    /// pool only when `read` took the answer.
    pub async fn exchange<T>(
        &self,
        shell: &Shell,
        to: u8,
        frame: &[u8],
        peer: &str,
        read: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut read = Some(read);
        let mut answer = None;
        self.exchange_until(shell, to, frame, peer, |bytes| {
            let read = read.take().ok_or("a second answer")?;
            answer = Some(read(bytes)?);
            Ok(true)
        })
        .await?;
        answer.ok_or_else(|| format!("the {peer} sent no answer"))
    }

    /// Sends `frame` to `to` on a stream of the pool and reads answer frames through
    /// `read` until it says the answer is whole; the stream goes back to the pool
    /// only then.
    pub async fn exchange_until(
        &self,
        shell: &Shell,
        to: u8,
        frame: &[u8],
        peer: &str,
        mut read: impl FnMut(&[u8]) -> Result<bool, String>,
    ) -> Result<(), String> {
        let mut stream = self.take(shell, to).await?;
        stream.send(frame).await.map_err(|e| e.to_string())?;
        loop {
            let bytes = stream
                .recv()
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("the {peer} closed the stream without an answer"))?;
            if read(&bytes)? {
                break;
            }
        }
        self.put(to, stream);
        Ok(())
    }
}
