//! One iSCSI session with one connection, shared by many threads: each caller sends its
//! own command and waits for it; one connection thread reads every PDU the target
//! sends and hands it to the task it belongs to, and reconnects (with back-off) when
//! the connection fails.
//!
//! Ordering: a command's CmdSN is taken under the state lock, and a command without
//! data to send goes into the outbox in the same critical section, so the outbox is in
//! CmdSN order. Whoever holds the writer sends the outbox, oldest first: a caller that
//! finds the writer busy leaves its command there and goes to wait for the answer (no
//! thread parks on the writer for a read), and a thread that lets the writer go looks
//! at the outbox once more, so nothing is left behind. A command with data takes the
//! outbox's commands (older than it) out with its CmdSN and sends them before itself.
//! The command window (ExpCmdSN..MaxCmdSN) is respected: callers wait while it is
//! closed.
//!
//! Data-In goes straight from the socket into the caller's buffer. The caller's thread
//! is blocked in [`Session::execute`] for as long as its task is in the task table, and
//! it takes the task out (waiting for a read in progress to finish) before it returns,
//! so the connection thread never touches a buffer whose borrow has ended. A read from
//! [`Session::submit_read`] owns its buffer in its task; the task leaves the table for
//! its queue (and the buffer goes back to the submitter) only once it has ended and no
//! copy into the buffer is in progress.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::completion_queue::{CompletionQueue, QueuedRead};
use super::conn_reader::ConnReader;
use super::login::{self, LoggedIn, LoginError};
use super::pdu::{self, Bhs, DataOut, RESERVED_TAG, ScsiCommand, ScsiResponse, op, sn_lt};
use super::sense::Sense;
use super::text::Params;
use super::url::IscsiUrl;
use super::wire;

/// How a command moves data.
pub enum Transfer<'a> {
    /// No data.
    None,
    /// Data from the target into this buffer.
    Read(&'a mut [u8]),
    /// Data from this buffer to the target.
    Write(&'a [u8]),
}

/// How a command ended at the target.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The SCSI status.
    pub status: u8,
    /// Sense data (with CHECK CONDITION).
    pub sense: Vec<u8>,
    /// Bytes of Data-In received (the highest offset filled).
    pub data_in: usize,
    /// The residual count the target reported, if any.
    pub residual: Option<u32>,
    /// The session's generation when the answer came.
    pub generation: u64,
}

impl Completion {
    /// The decoded sense data, if any.
    pub fn sense(&self) -> Option<Sense> {
        Sense::decode(&self.sense).ok()
    }
}

/// Why a command did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// The connection failed while the command was out: it may or may not have run.
    #[error("connection to the target lost: {0}")]
    ConnectionLost(String),
    /// No connection came up, or the command got no answer, in time (it was aborted).
    #[error("{0}")]
    TimedOut(String),
    /// The target broke the protocol or rejected the command.
    #[error("{0}")]
    Protocol(String),
    /// The session is closed.
    #[error("the iSCSI session is closed")]
    Closed,
}

/// Where the connection thread writes a task's Data-In: the caller's buffer.
struct ReadTarget {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the pointer is only dereferenced by the connection thread while the task is
// in the task table, and the caller that owns the buffer stays blocked in `execute`
// until it has removed the task and no read into it is in progress (`reader_busy`); a
// queued read's buffer is owned by its task (`Waiter::Queue`), which `wake` moves out
// of the table only when it has ended and `reader_busy` is clear.
unsafe impl Send for ReadTarget {}

/// Who waits for a task's end.
enum Waiter {
    /// A thread blocked in [`Session::execute`] (or an abort), on this condition
    /// variable; it takes the task out of the table itself.
    Thread(Arc<Condvar>),
    /// A read from [`Session::submit_read`]: the task owns its buffer (its
    /// [`ReadTarget`] points into it) and leaves the table for the queue when it ends.
    Queue {
        queue: Arc<CompletionQueue>,
        token: u64,
        cdb: [u8; 16],
        buffer: Vec<u8>,
    },
}

struct Task {
    waiter: Waiter,
    conn_id: u64,
    cmd_sn: u32,
    read: Option<ReadTarget>,
    write_len: usize,
    reader_busy: bool,
    removing: bool,
    data_in: usize,
    r2ts: VecDeque<(u32, u32, u32)>,
    done: Option<Result<Completion, CommandError>>,
}

#[derive(Clone)]
struct Conn {
    id: u64,
    stream: Arc<TcpStream>,
    params: Params,
}

struct State {
    conn: Option<Conn>,
    next_conn_id: u64,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    tasks: HashMap<u32, Task>,
    generation: u64,
    fresh_conn: bool,
    last_error: Option<String>,
    closing: bool,
    /// Commands without data waiting to be sent, in CmdSN order.
    outbox: Vec<(Conn, Bhs)>,
}

struct Shared {
    url: IscsiUrl,
    isid: [u8; 6],
    lun: [u8; 8],
    state: Mutex<State>,
    /// Serialises writes to the socket (a PDU is written whole).
    writer: Mutex<()>,
    /// Signalled when the connection comes up or goes down, or the window opens.
    changed: Condvar,
    closing: AtomicBool,
}

/// The writer, held; dropping it sends what came into the outbox meanwhile.
struct Writing<'a> {
    shared: &'a Shared,
    guard: Option<parking_lot::MutexGuard<'a, ()>>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.shared.flush_outbox();
    }
}

/// An iSCSI session to one LUN.
pub struct Session {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.shared.url.display_name())
    }
}

impl Session {
    /// Connects and logs in; fails at once if the first login fails.
    pub fn open(url: IscsiUrl) -> Result<Session, LoginError> {
        let isid = new_isid();
        let (stream, li) = connect_and_login(&url, isid)?;
        let lun = pdu::lun_field(url.lun);
        let shared = Arc::new(Shared {
            url,
            isid,
            lun,
            state: Mutex::new(State {
                conn: None,
                next_conn_id: 1,
                cmd_sn: li.cmd_sn,
                exp_stat_sn: li.exp_stat_sn,
                max_cmd_sn: li.max_cmd_sn,
                next_itt: 1,
                tasks: HashMap::new(),
                generation: 0,
                fresh_conn: true,
                last_error: None,
                closing: false,
                outbox: Vec::new(),
            }),
            writer: Mutex::new(()),
            changed: Condvar::new(),
            closing: AtomicBool::new(false),
        });
        let conn = shared.install(stream, li);
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("iscsi-conn".into())
            .spawn(move || s2.run(conn))
            .expect("spawn the iSCSI connection thread");
        Ok(Session {
            shared,
            thread: Some(thread),
        })
    }

    /// The number of reconnects so far plus the UNIT ATTENTIONs that may have taken a
    /// registration away.
    pub fn generation(&self) -> u64 {
        self.shared.state.lock().generation
    }

    /// The initiator session id.
    pub fn isid(&self) -> [u8; 6] {
        self.shared.isid
    }

    /// The URL this session logs in to.
    pub fn url(&self) -> &IscsiUrl {
        &self.shared.url
    }

    /// Notes a UNIT ATTENTION a command came back with. Returns true when it counts as
    /// a possible loss of registration (the first one of a new connection does not:
    /// the reconnect already counted).
    pub fn note_unit_attention(&self, sense: &Sense) -> bool {
        let mut st = self.shared.state.lock();
        let fresh = std::mem::replace(&mut st.fresh_conn, false);
        if sense.may_have_lost_registration() && !(fresh && sense.asc == 0x29) {
            st.generation += 1;
            tracing::warn!(lun = %self.shared.url.display_name(), %sense, "unit attention: registration possibly lost");
            return true;
        }
        false
    }

    /// Sends one command and waits for it, up to the URL's timeout (a command that
    /// times out is aborted).
    pub fn execute(
        &self,
        cdb: [u8; 16],
        mut transfer: Transfer<'_>,
    ) -> Result<Completion, CommandError> {
        let sh = &*self.shared;
        let deadline = Instant::now() + sh.url.timeout;
        let write_data: &[u8] = match &transfer {
            Transfer::Write(b) => b,
            _ => &[],
        };
        let cond = Arc::new(Condvar::new());
        let read = match &mut transfer {
            Transfer::Read(b) => Some(ReadTarget {
                ptr: b.as_mut_ptr(),
                len: b.len(),
            }),
            _ => None,
        };
        let (itt, conn) = self
            .start(
                cdb,
                read,
                write_data,
                Waiter::Thread(Arc::clone(&cond)),
                deadline,
            )
            .map_err(|(_, e)| e)?;

        // Wait for the answer, sending the data each R2T asks for.
        let mut st = sh.state.lock();
        loop {
            let task = st
                .tasks
                .get_mut(&itt)
                .expect("only this caller removes its task");
            if task.done.is_some() {
                break;
            }
            if let Some((ttt, off, len)) = task.r2ts.pop_front() {
                drop(st);
                let w = sh.writing();
                let r = sh.send_data_out(&conn, itt, ttt, write_data, off as usize, len as usize);
                drop(w);
                if let Err(e) = r {
                    sh.fail_connection(conn.id, format!("sending Data-Out: {e}"));
                }
                st = sh.state.lock();
                continue;
            }
            if cond.wait_until(&mut st, deadline).timed_out()
                && st.tasks.get(&itt).is_some_and(|t| t.done.is_none())
            {
                drop(st);
                return Err(self.abort(itt, &conn, &cond));
            }
        }
        let task = remove_task(&mut st, itt, &cond);
        task.done.expect("loop ends when done")
    }

    /// Takes a CmdSN and sends the command: through the outbox, or, with data, holding
    /// the writer and sending the outbox's older commands first (CmdSN order). The
    /// task is in the table when this returns; on failure the waiter comes back.
    fn start(
        &self,
        cdb: [u8; 16],
        mut read: Option<ReadTarget>,
        write_data: &[u8],
        waiter: Waiter,
        deadline: Instant,
    ) -> Result<(u32, Conn), (Waiter, CommandError)> {
        let sh = &*self.shared;
        let read_len = read.as_ref().map_or(0, |r| r.len);
        let expected = read_len.max(write_data.len());
        // A queued read whose submitter has more ended reads to take (and so more
        // reads to submit) stays in the outbox: the submitter's next command, or its
        // wait in `next_queued`, sends them all in one write.
        let defer_send = matches!(&waiter, Waiter::Queue { queue, .. } if queue.has_ended());

        loop {
            // A command with data holds the writer from its CmdSN to its last byte.
            let w = (!write_data.is_empty()).then(|| sh.writing());
            let mut st = sh.state.lock();
            if !st.ready() {
                // Let the writer go (which looks at the outbox, under the state lock)
                // before waiting, and send what queued reads left in the outbox: the
                // window opens only as the target answers them.
                drop(st);
                drop(w);
                loop {
                    sh.flush_outbox();
                    let mut st = sh.state.lock();
                    if st.ready() {
                        break;
                    }
                    if st.closing {
                        return Err((waiter, CommandError::Closed));
                    }
                    if sh.changed.wait_until(&mut st, deadline).timed_out() {
                        let why = format!(
                            "no usable connection to {} within {:?}{}",
                            sh.url.display_name(),
                            sh.url.timeout,
                            st.last_error
                                .as_ref()
                                .map(|e| format!(" (last error: {e})"))
                                .unwrap_or_default()
                        );
                        return Err((waiter, CommandError::TimedOut(why)));
                    }
                }
                continue;
            }
            let conn = st.conn.clone().expect("ready means connected");
            let itt = st.take_itt();
            let cmd_sn = st.cmd_sn;
            st.cmd_sn = st.cmd_sn.wrapping_add(1);
            if let Waiter::Queue { queue, token, .. } = &waiter {
                queue.set_task(*token, itt);
            }
            st.tasks.insert(
                itt,
                Task {
                    waiter,
                    conn_id: conn.id,
                    cmd_sn,
                    read: read.take(),
                    write_len: write_data.len(),
                    reader_busy: false,
                    removing: false,
                    data_in: 0,
                    r2ts: VecDeque::new(),
                    done: None,
                },
            );
            let p = conn.params;
            let immediate = if p.immediate_data {
                write_data
                    .len()
                    .min(p.first_burst as usize)
                    .min(p.target_max_recv as usize)
            } else {
                0
            };
            let unsolicited = if p.initial_r2t {
                immediate
            } else {
                write_data.len().min(p.first_burst as usize)
            };
            let cmd = ScsiCommand {
                lun: sh.lun,
                itt,
                cmd_sn,
                exp_stat_sn: st.exp_stat_sn,
                expected_len: expected as u32,
                read: read_len > 0,
                write: !write_data.is_empty(),
                final_: unsolicited == immediate,
                cdb,
                immediate_len: immediate as u32,
            };
            let Some(w) = w else {
                st.outbox.push((conn.clone(), cmd.bhs()));
                drop(st);
                if !defer_send {
                    sh.flush_outbox();
                }
                return Ok((itt, conn));
            };
            let older = std::mem::take(&mut st.outbox);
            drop(st);
            sh.send_commands(older);
            let sent = wire::write_pdu(&mut &*conn.stream, &cmd.bhs(), &write_data[..immediate])
                .and_then(|()| {
                    sh.send_data_out(
                        &conn,
                        itt,
                        RESERVED_TAG,
                        write_data,
                        immediate,
                        unsolicited - immediate,
                    )
                });
            drop(w);
            if let Err(e) = sent {
                sh.fail_connection(conn.id, format!("sending a command: {e}"));
            }
            return Ok((itt, conn));
        }
    }

    /// Gives up on a task that got no answer: ABORT TASK, and if even that goes
    /// unanswered, drops the connection so that it is re-established. `cond` is the
    /// task's own (its caller is this thread).
    fn abort(&self, itt: u32, conn: &Conn, cond: &Condvar) -> CommandError {
        let sh = &*self.shared;
        let answered = self.abort_task(itt, conn);
        let mut st = sh.state.lock();
        let task = remove_task(&mut st, itt, cond);
        drop(st);
        if let Some(done) = task.done {
            // The answer came while we aborted.
            return match done {
                Ok(_) => CommandError::TimedOut(format!(
                    "command to {} answered only after its {:?} timeout",
                    sh.url.display_name(),
                    sh.url.timeout
                )),
                Err(e) => e,
            };
        }
        if !answered {
            sh.fail_connection(conn.id, "the target did not answer ABORT TASK".into());
        }
        self.aborted()
    }

    fn aborted(&self) -> CommandError {
        let sh = &*self.shared;
        CommandError::TimedOut(format!(
            "command to {} got no answer within {:?} and was aborted",
            sh.url.display_name(),
            sh.url.timeout
        ))
    }

    /// Sends ABORT TASK for `itt` and waits up to 5 s for the answer; whether it came.
    fn abort_task(&self, itt: u32, conn: &Conn) -> bool {
        let sh = &*self.shared;
        let cond = Arc::new(Condvar::new());
        let (tmf_itt, ref_cmd_sn) = {
            let mut st = sh.state.lock();
            let ref_cmd_sn = st.tasks.get(&itt).map(|t| t.cmd_sn).unwrap_or(0);
            let tmf_itt = st.take_itt();
            let cmd_sn = st.cmd_sn;
            st.tasks.insert(
                tmf_itt,
                Task {
                    waiter: Waiter::Thread(Arc::clone(&cond)),
                    conn_id: conn.id,
                    cmd_sn,
                    read: None,
                    write_len: 0,
                    reader_busy: false,
                    removing: false,
                    data_in: 0,
                    r2ts: VecDeque::new(),
                    done: None,
                },
            );
            (tmf_itt, ref_cmd_sn)
        };
        let sent = {
            let _w = sh.writing();
            let st = sh.state.lock();
            let bhs = pdu::abort_task(tmf_itt, itt, st.cmd_sn, ref_cmd_sn, st.exp_stat_sn, sh.lun);
            drop(st);
            wire::write_pdu(&mut &*conn.stream, &bhs, &[])
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut st = sh.state.lock();
        let answered = sent.is_ok()
            && loop {
                if st.tasks.get(&tmf_itt).is_some_and(|t| t.done.is_some()) {
                    break true;
                }
                if cond.wait_until(&mut st, deadline).timed_out() {
                    break st.tasks.get(&tmf_itt).is_some_and(|t| t.done.is_some());
                }
            };
        remove_task(&mut st, tmf_itt, &cond);
        answered
    }

    /// Sends READ command `cdb` into `buffer` without waiting for it: its end, with the
    /// buffer, goes to `queue` under `token` (unique among the queue's outstanding
    /// reads), where [`Session::next_queued`] takes it. While ended reads wait in the
    /// queue, the command stays in the outbox for the submitter's next send (its next
    /// command or its wait in [`Session::next_queued`]), so that the reads submitted
    /// for a batch of ends go out in one write. On failure to send, the
    /// buffer comes back with the error.
    pub fn submit_read(
        &self,
        cdb: [u8; 16],
        mut buffer: Vec<u8>,
        token: u64,
        queue: &Arc<CompletionQueue>,
    ) -> Result<(), (Vec<u8>, CommandError)> {
        let deadline = Instant::now() + self.shared.url.timeout;
        if !queue.reserve(token, deadline) {
            return Err((
                buffer,
                CommandError::Protocol(format!("read {token} is already outstanding")),
            ));
        }
        // The buffer's heap stays where it is when the Vec moves into the task.
        let read = ReadTarget {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
        };
        let waiter = Waiter::Queue {
            queue: Arc::clone(queue),
            token,
            cdb,
            buffer,
        };
        match self.start(cdb, Some(read), &[], waiter, deadline) {
            Ok(_) => Ok(()),
            Err((waiter, e)) => {
                queue.forget(token);
                // The waiter given was a Queue one: its buffer comes back.
                let buffer = match waiter {
                    Waiter::Queue { buffer, .. } => buffer,
                    Waiter::Thread(_) => Vec::new(),
                };
                Err((buffer, e))
            }
        }
    }

    /// The next read of `queue` to end, waiting for it; None when none is outstanding.
    /// A read that passes its deadline is aborted and ends `TimedOut`.
    pub fn next_queued(&self, queue: &CompletionQueue) -> Option<QueuedRead> {
        loop {
            let mut q = queue.inner.lock();
            if let Some(ended) = q.ended.pop_front() {
                q.outstanding.remove(&ended.token);
                return Some(ended);
            }
            let (&token, &o) = q.outstanding.iter().min_by_key(|(_, o)| o.deadline)?;
            if Instant::now() < o.deadline {
                // Reads submitted while more ends were waiting may still be in the
                // outbox: send them before sleeping.
                drop(q);
                self.shared.flush_outbox();
                let mut q = queue.inner.lock();
                if q.ended.is_empty() {
                    queue.ready.wait_until(&mut q, o.deadline);
                }
                continue;
            }
            drop(q);
            if let Some(itt) = o.itt {
                self.abort_queued(token, itt);
            }
            // If its end could not go to the queue yet (a Data-In copy into its
            // buffer was in progress), the copy's end wakes it: look again in a
            // moment instead of aborting it again at once.
            if let Some(o) = queue.inner.lock().outstanding.get_mut(&token) {
                o.deadline = Instant::now() + Duration::from_millis(100);
            }
        }
    }

    /// Aborts overdue read `token` (task `itt`); its end goes to its queue.
    fn abort_queued(&self, token: u64, itt: u32) {
        let sh = &*self.shared;
        let conn = {
            let st = sh.state.lock();
            let ours = st.tasks.get(&itt).is_some_and(
                |t| matches!(&t.waiter, Waiter::Queue { token: k, .. } if *k == token),
            );
            if !ours {
                // It ended meanwhile: its end is in the queue.
                return;
            }
            st.conn
                .clone()
                .filter(|c| Some(c.id) == st.tasks.get(&itt).map(|t| t.conn_id))
        };
        let abort_answered = conn.as_ref().is_some_and(|c| self.abort_task(itt, c));
        let mut st = sh.state.lock();
        // The read itself may have been answered while we aborted (or be gone: its
        // end is in the queue); then the connection works.
        let mut read_answered = true;
        if let Some(t) = st.tasks.get_mut(&itt)
            && t.done.is_none()
        {
            t.done = Some(Err(self.aborted()));
            read_answered = false;
        }
        wake(&mut st, itt);
        drop(st);
        if let (Some(c), false, false) = (conn, abort_answered, read_answered) {
            sh.fail_connection(c.id, "the target did not answer ABORT TASK".into());
        }
    }

    /// Logs out and stops the connection thread.
    pub fn close(&mut self) {
        let sh = &*self.shared;
        sh.closing.store(true, Ordering::SeqCst);
        let conn = {
            let mut st = sh.state.lock();
            st.closing = true;
            st.conn.clone()
        };
        if let Some(conn) = conn {
            let _w = sh.writing();
            let st = sh.state.lock();
            let bhs = pdu::logout(RESERVED_TAG - 1, st.cmd_sn, st.exp_stat_sn);
            drop(st);
            let _ = wire::write_pdu(&mut &*conn.stream, &bhs, &[]);
            // Give the target a moment to answer before the socket goes.
            let _ = conn
                .stream
                .set_read_timeout(Some(Duration::from_millis(500)));
        }
        sh.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

impl State {
    fn ready(&self) -> bool {
        !self.closing && self.conn.is_some() && !sn_lt(self.max_cmd_sn, self.cmd_sn)
    }

    fn take_itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt < RESERVED_TAG - 1 && !self.tasks.contains_key(&itt) {
                return itt;
            }
        }
    }
}

/// Ends a failed connection so that nothing still queued on it can reach the target
/// later: with SO_LINGER at zero the socket's close resets the connection and drops
/// unsent data, instead of retransmitting it when a cut path comes back (a write
/// that arrived then could overwrite newer data written meanwhile through another
/// path).
fn abort(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this stream owns, with a linger struct of the
    // size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Removes a task, first waiting for a Data-In read into its buffer to finish.
fn remove_task(st: &mut parking_lot::MutexGuard<'_, State>, itt: u32, cond: &Condvar) -> Task {
    while let Some(t) = st.tasks.get_mut(&itt).filter(|t| t.reader_busy) {
        t.removing = true;
        cond.wait(st);
    }
    st.tasks.remove(&itt).expect("task present")
}

impl Shared {
    fn install(&self, stream: TcpStream, li: LoggedIn) -> Conn {
        let mut st = self.state.lock();
        let id = st.next_conn_id;
        st.next_conn_id += 1;
        if id > 1 {
            st.generation += 1;
            tracing::warn!(lun = %self.url.display_name(), "reconnected to the target: registration possibly lost");
        }
        st.cmd_sn = li.cmd_sn;
        st.exp_stat_sn = li.exp_stat_sn;
        st.max_cmd_sn = li.max_cmd_sn;
        st.fresh_conn = true;
        st.last_error = None;
        let conn = Conn {
            id,
            stream: Arc::new(stream),
            params: li.params,
        };
        st.conn = Some(conn.clone());
        drop(st);
        self.changed.notify_all();
        conn
    }

    /// Sends `len` bytes of `data` from `offset` as Data-Out PDUs of the target's size.
    fn send_data_out(
        &self,
        conn: &Conn,
        itt: u32,
        ttt: u32,
        data: &[u8],
        offset: usize,
        len: usize,
    ) -> io::Result<()> {
        let max = conn.params.target_max_recv as usize;
        let end = offset + len;
        let mut at = offset;
        let mut data_sn = 0;
        while at < end {
            let n = max.min(end - at);
            let exp_stat_sn = self.state.lock().exp_stat_sn;
            let h = DataOut {
                lun: self.lun,
                itt,
                ttt,
                exp_stat_sn,
                data_sn,
                offset: at as u32,
                len: n as u32,
                final_: at + n == end,
            };
            wire::write_pdu(&mut &*conn.stream, &h.bhs(), &data[at..at + n])?;
            at += n;
            data_sn += 1;
        }
        Ok(())
    }

    /// Takes the writer, after sending what the outbox holds; letting it go sends
    /// what came into the outbox meanwhile.
    fn writing(&self) -> Writing<'_> {
        let guard = self.writer.lock();
        let queued = std::mem::take(&mut self.state.lock().outbox);
        self.send_commands(queued);
        Writing {
            shared: self,
            guard: Some(guard),
        }
    }

    /// Sends the outbox unless another thread holds the writer (which then sends it
    /// before it lets go, see [`Writing`]).
    fn flush_outbox(&self) {
        loop {
            let Some(guard) = self.writer.try_lock() else {
                return;
            };
            loop {
                let queued = std::mem::take(&mut self.state.lock().outbox);
                if queued.is_empty() {
                    break;
                }
                self.send_commands(queued);
            }
            drop(guard);
            // A command queued while this thread held the writer, by a caller whose
            // try_lock failed, is sent by this thread.
            if self.state.lock().outbox.is_empty() {
                return;
            }
        }
    }

    /// Writes queued command headers, in order, each run of one connection in one
    /// vectored write; the caller holds the writer.
    fn send_commands(&self, queued: Vec<(Conn, Bhs)>) {
        let mut rest = &queued[..];
        while let Some((conn, _)) = rest.first() {
            let run = rest
                .iter()
                .position(|(c, _)| c.id != conn.id)
                .unwrap_or(rest.len());
            let heads: Vec<&Bhs> = rest[..run].iter().map(|(_, b)| b).collect();
            if let Err(e) = wire::write_headers(&mut &*conn.stream, &heads) {
                self.fail_connection(conn.id, format!("sending a command: {e}"));
            }
            rest = &rest[run..];
        }
    }

    /// Marks connection `id` as failed: every task on it ends with `ConnectionLost`.
    fn fail_connection(&self, id: u64, reason: String) {
        let mut st = self.state.lock();
        let Some(conn) = st.conn.clone().filter(|c| c.id == id) else {
            return;
        };
        abort(&conn.stream);
        st.conn = None;
        if !st.closing {
            tracing::warn!(lun = %self.url.display_name(), %reason, "iSCSI connection lost");
        }
        st.last_error = Some(reason.clone());
        let on_it: Vec<u32> = (st.tasks.iter())
            .filter(|(_, t)| t.conn_id == id)
            .map(|(&itt, _)| itt)
            .collect();
        for itt in on_it {
            if let Some(t) = st.tasks.get_mut(&itt)
                && t.done.is_none()
            {
                t.done = Some(Err(CommandError::ConnectionLost(reason.clone())));
            }
            wake(&mut st, itt);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// The connection thread: reads PDUs until the connection fails, then reconnects.
    fn run(self: Arc<Self>, first: Conn) {
        let mut conn = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            let c = match conn.take() {
                Some(c) => c,
                None => {
                    if self.closing.load(Ordering::SeqCst) {
                        return;
                    }
                    match connect_and_login(&self.url, self.isid) {
                        Ok((stream, li)) => {
                            backoff = Duration::from_millis(100);
                            self.install(stream, li)
                        }
                        Err(e) => {
                            self.state.lock().last_error = Some(e.to_string());
                            self.sleep_unless_closing(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    }
                }
            };
            let reason = match self.read_loop(&c) {
                Ok(()) => "logged out".to_string(),
                Err(e) => e.to_string(),
            };
            self.fail_connection(c.id, reason);
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    fn sleep_unless_closing(&self, d: Duration) {
        let mut st = self.state.lock();
        if !st.closing {
            let _ = self.changed.wait_for(&mut st, d);
        }
    }

    /// Reads and dispatches PDUs. Returns Ok after a logout response.
    fn read_loop(&self, conn: &Conn) -> io::Result<()> {
        let mut r = ConnReader::new(&conn.stream, self.url.timeout, &self.closing);
        let max_data = conn.params.initiator_max_recv;
        loop {
            if !r.wait_for_data()? {
                continue;
            }
            let bhs = wire::read_header(&mut r, max_data)?;
            if bhs.opcode() == op::DATA_IN {
                // Its sequence numbers are noted under the same lock as its data.
                self.on_data_in(&mut r, &bhs)?;
                continue;
            }
            self.note_sequence_numbers(&bhs);
            match bhs.opcode() {
                op::SCSI_RESPONSE => {
                    let data = wire::read_data(&mut r, &bhs)?;
                    let resp = ScsiResponse::decode(&bhs).map_err(wire::invalid)?;
                    let sense = pdu::response_sense(&data).map_err(wire::invalid)?.to_vec();
                    self.complete(&bhs, resp, sense)?;
                }
                op::R2T => {
                    wire::skip(&mut r, bhs.padded_data_len())?;
                    self.on_r2t(&bhs, conn)?;
                }
                op::NOP_IN => {
                    wire::skip(&mut r, bhs.padded_data_len())?;
                    if bhs.ttt() != RESERVED_TAG {
                        let _w = self.writing();
                        let st = self.state.lock();
                        let reply = pdu::nop_out(
                            RESERVED_TAG,
                            bhs.ttt(),
                            st.cmd_sn,
                            st.exp_stat_sn,
                            self.lun,
                        );
                        drop(st);
                        wire::write_pdu(&mut &*conn.stream, &reply, &[])?;
                    }
                }
                op::TASK_MGMT_RESPONSE => {
                    wire::skip(&mut r, bhs.padded_data_len())?;
                    let mut st = self.state.lock();
                    if let Some(t) = st.tasks.get_mut(&bhs.itt()) {
                        t.done = Some(Ok(Completion {
                            status: bhs.byte2(),
                            sense: Vec::new(),
                            data_in: 0,
                            residual: None,
                            generation: 0,
                        }));
                        wake(&mut st, bhs.itt());
                    }
                }
                op::LOGOUT_RESPONSE => {
                    wire::skip(&mut r, bhs.padded_data_len())?;
                    return Ok(());
                }
                op::ASYNC => {
                    let data = wire::read_data(&mut r, &bhs)?;
                    match bhs.0[36] {
                        0 => {
                            if let Ok(s) = pdu::response_sense(&data)
                                && let Ok(sense) = Sense::decode(s)
                                && sense.may_have_lost_registration()
                            {
                                self.state.lock().generation += 1;
                            }
                        }
                        1 => return Err(wire::invalid("the target asked to log out")),
                        2 | 3 => return Err(wire::invalid("the target dropped the connection")),
                        _ => {}
                    }
                }
                op::REJECT => {
                    let data = wire::read_data(&mut r, &bhs)?;
                    let rejected = Bhs::decode_any(&data);
                    let reason = bhs.byte2();
                    let mut st = self.state.lock();
                    let itt = rejected.map(|b| b.itt());
                    match itt.and_then(|i| st.tasks.get_mut(&i).map(|t| (i, t))) {
                        Some((i, t)) => {
                            t.done = Some(Err(CommandError::Protocol(format!(
                                "the target rejected the command (reason {reason:#04x})"
                            ))));
                            wake(&mut st, i);
                        }
                        None => {
                            return Err(wire::invalid(format!(
                                "the target rejected a PDU (reason {reason:#04x})"
                            )));
                        }
                    }
                }
                other => {
                    return Err(wire::invalid(format!(
                        "unexpected opcode {other:#04x} in the full feature phase"
                    )));
                }
            }
        }
    }

    fn note_sequence_numbers(&self, bhs: &Bhs) {
        let opened = note_sequence_numbers(&mut self.state.lock(), bhs);
        if opened {
            self.changed.notify_all();
        }
    }

    fn on_data_in(&self, r: &mut ConnReader<'_>, bhs: &Bhs) -> io::Result<()> {
        let len = bhs.data_len() as usize;
        let padded = bhs.padded_data_len();
        let off = bhs.buffer_offset() as usize;
        let with_status = bhs.flags() & 0x01 != 0;
        let resp = if with_status {
            Some(ScsiResponse::decode(bhs).map_err(wire::invalid)?)
        } else {
            None
        };
        let mut st = self.state.lock();
        let opened = note_sequence_numbers(&mut st, bhs);
        if opened {
            self.changed.notify_all();
        }
        let Some(task) = st.tasks.get_mut(&bhs.itt()) else {
            // An aborted task's data: drop it.
            drop(st);
            return wire::skip(r, padded);
        };
        let Some(target) = &task.read else {
            return Err(wire::invalid("Data-In for a command that reads nothing"));
        };
        if off.checked_add(len).is_none_or(|end| end > target.len) {
            return Err(wire::invalid(format!(
                "Data-In at offset {off}, {len} bytes, past the {}-byte buffer",
                target.len
            )));
        }
        // SAFETY: see ReadTarget: the caller is blocked until it removes the task, and
        // it waits while reader_busy is set or this thread holds the state lock;
        // [off, off+len) is inside its buffer.
        let dst = unsafe { std::slice::from_raw_parts_mut(target.ptr.add(off), len) };
        if r.buffered().len() >= padded {
            // The whole segment is read ahead already (the common case of a small
            // read): copy it and complete the task under this one lock.
            dst.copy_from_slice(&r.buffered()[..len]);
            r.consume(padded);
            task.data_in = task.data_in.max(off + len);
            if let Some(resp) = resp {
                complete(&mut st, bhs, resp, Vec::new());
            }
            return Ok(());
        }
        task.reader_busy = true;
        drop(st);
        let res = r.read_exact(dst).and_then(|()| wire::skip(r, padded - len));
        let mut st = self.state.lock();
        let task = st.tasks.get_mut(&bhs.itt()).expect("a busy task stays");
        task.reader_busy = false;
        task.data_in = task.data_in.max(off + len);
        if task.removing || task.done.is_some() {
            // A caller waits to take the task out, or it ended (its connection was
            // failed) while its data came in.
            wake(&mut st, bhs.itt());
        }
        res?;
        if let Some(resp) = resp {
            complete(&mut st, bhs, resp, Vec::new());
        }
        Ok(())
    }

    fn on_r2t(&self, bhs: &Bhs, conn: &Conn) -> io::Result<()> {
        let mut st = self.state.lock();
        let Some(task) = st.tasks.get_mut(&bhs.itt()) else {
            return Ok(());
        };
        let (off, len) = (bhs.buffer_offset(), bhs.word44());
        let end = u64::from(off) + u64::from(len);
        if len == 0 || end > task.write_len as u64 || len > conn.params.max_burst.max(1 << 24) {
            return Err(wire::invalid(format!(
                "R2T for {len} bytes at offset {off} of a {}-byte write",
                task.write_len
            )));
        }
        task.r2ts.push_back((bhs.ttt(), off, len));
        wake(&mut st, bhs.itt());
        Ok(())
    }

    fn complete(&self, bhs: &Bhs, resp: ScsiResponse, sense: Vec<u8>) -> io::Result<()> {
        complete(&mut self.state.lock(), bhs, resp, sense);
        Ok(())
    }
}

/// Notes the StatSN and command window a PDU carries; true when the window opened.
fn note_sequence_numbers(st: &mut State, bhs: &Bhs) -> bool {
    if bhs.advances_stat_sn() && !sn_lt(bhs.stat_sn(), st.exp_stat_sn) {
        st.exp_stat_sn = bhs.stat_sn().wrapping_add(1);
    }
    if bhs.carries_cmd_window() {
        let (exp, max) = (bhs.exp_cmd_sn(), bhs.max_cmd_sn());
        // A window with MaxCmdSN < ExpCmdSN - 1 is invalid and ignored (RFC 7143).
        if !sn_lt(max, exp.wrapping_sub(1)) && sn_lt(st.max_cmd_sn, max) {
            st.max_cmd_sn = max;
            return true;
        }
    }
    false
}

/// Ends the task `bhs` answers (if it is still there) and wakes its caller.
fn complete(st: &mut State, bhs: &Bhs, resp: ScsiResponse, sense: Vec<u8>) {
    let generation = st.generation;
    let Some(task) = st.tasks.get_mut(&bhs.itt()) else {
        return;
    };
    let result = if resp.response != 0 {
        Err(CommandError::Protocol(format!(
            "the target failed the command (iSCSI response {:#04x})",
            resp.response
        )))
    } else {
        Ok(Completion {
            status: resp.status,
            sense,
            data_in: task.data_in,
            residual: (resp.overflow || resp.underflow).then_some(resp.residual),
            generation,
        })
    };
    task.done = Some(result);
    wake(st, bhs.itt());
}

/// Wakes whoever waits for task `itt`. A queued read that has ended leaves the table
/// for its queue, once no Data-In read into its buffer is in progress (the reader
/// wakes it again when it finishes).
fn wake(st: &mut State, itt: u32) {
    let Some(t) = st.tasks.get(&itt) else {
        return;
    };
    match &t.waiter {
        Waiter::Thread(cond) => {
            cond.notify_all();
        }
        Waiter::Queue { .. } if t.done.is_some() && !t.reader_busy => {
            if let Some(Task {
                waiter:
                    Waiter::Queue {
                        queue,
                        token,
                        cdb,
                        buffer,
                    },
                done: Some(result),
                ..
            }) = st.tasks.remove(&itt)
            {
                queue.push(QueuedRead {
                    token,
                    cdb,
                    buffer,
                    result,
                });
            }
        }
        Waiter::Queue { .. } => {}
    }
}

fn connect_and_login(url: &IscsiUrl, isid: [u8; 6]) -> Result<(TcpStream, LoggedIn), LoginError> {
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| {
            LoginError::Io(io::Error::new(
                e.kind(),
                format!("cannot resolve {}: {e}", url.host),
            ))
        })?
        .collect();
    let connect_timeout = url.timeout.min(Duration::from_secs(10));
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, connect_timeout) {
            Ok(mut s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(url.timeout))?;
                s.set_write_timeout(Some(url.timeout))?;
                let li = login::login(&mut s, url, isid, 1)?;
                // In the full feature phase the connection thread wakes up every second
                // to notice a close; a stall inside a PDU is still bounded by the
                // write timeout and the callers' own deadlines.
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                return Ok((s, li));
            }
            Err(e) => last = io::Error::new(e.kind(), format!("cannot connect to {a}: {e}")),
        }
    }
    Err(LoginError::Io(last))
}

/// A random ISID (type 0x80: random qualifier), one per session and kept across its
/// reconnects, so that a reconnect reinstates (and so ends) the old session.
fn new_isid() -> [u8; 6] {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b[0] = 0x80 | (b[0] & 0x3f);
    b
}
