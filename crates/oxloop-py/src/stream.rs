//! `StreamTransport`: the native half of oxloop's byte-stream transports: TCP and Unix
//! sockets (the Python half, `oxloop._transports.SocketTransport`, is the `asyncio.Transport`
//! users see) and the read and write ends of pipes (`oxloop._pipes`).
//!
//! Everything that happens per packet is here: reading into `bytes` (or into a
//! `BufferedProtocol`'s buffer) and calling the protocol, buffering writes, sending the writes
//! of one loop iteration together with one `sendmsg`, flow control. What happens once per
//! connection (set-up, `connection_lost`, error reporting) is Python's.
//!
//! Invariants:
//! - Only the loop's thread touches a transport, with the GIL held. The state lives in a
//!   [`GilCell`], borrowed by the rule stated there (the buffered chunks a borrow may drop are
//!   exact `bytes` or vectors, whose deallocation runs no Python code).
//! - The Python socket (or pipe) object owns the descriptor; this object only borrows its
//!   number, from registration until [`StreamTransport::detach`], which the Python half calls
//!   just before closing it. From registration to detach the loop watches the descriptor
//!   edge-triggered: for reading always, for writing only while a send would block
//!   (`write_pending`; watched all the time, it would wake the poller at every acknowledgement
//!   from the peer). So a read that did not drain the socket, or a resumed transport,
//!   schedules its own next read.
//! - `reading` and `write_pending` mirror the state for the loop's event dispatch, which
//!   consults them without borrowing this transport's state.
//! - A non-empty write buffer is always either queued for the end-of-iteration flush
//!   (`flush_queued`) or waiting for writability (`write_pending`): data is never stranded.
//! - `connection_lost` is scheduled exactly once: every path that schedules it first checks
//!   and increments `conn_lost` in the same state borrow.
//! - A pipe transport does one direction only ([`Role`]): a read pipe never has buffered
//!   data; a write pipe never reads, and its readable state means "the reader went away".

use std::ffi::c_int;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use oxloop_core::write_buffer::MAX_IOVECS;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict};
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::{LoopCore, LoopRef, MAX_READ};
use crate::gil_cell::{GilCell, GilRefMut};
use crate::glue::{
    _PyBytes_Resize, check_bytes_like, copy_current_context, debug_log, is_fatal, os_error,
    warn_log, with_buffer,
};
use crate::virtual_clock::PeerWatch;

/// A read of at least this many bytes makes the next reads go straight into a `bytes` of this
/// size (see `StreamTransport::read_bytes`).
const LARGE_READ: usize = 64 * 1024;
/// asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// asyncio's default high-water mark; the low-water mark is a quarter of it.
const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// What a transport's descriptor is, which decides the system calls and asyncio's rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A connected stream socket, read and written.
    Socket,
    /// The read end of a pipe (or a pty, or a socket used as one): asyncio's read pipe
    /// transport closes at end of file whatever `eof_received` returns.
    ReadPipe,
    /// The write end of a pipe: written with `writev`; writes while closing are dropped.
    WritePipe,
}

impl Role {
    /// From the `kind` argument of the constructor.
    fn parse(kind: &str) -> PyResult<Self> {
        match kind {
            "socket" => Ok(Role::Socket),
            "read_pipe" => Ok(Role::ReadPipe),
            "write_pipe" => Ok(Role::WritePipe),
            _ => Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown transport kind {kind:?}"
            ))),
        }
    }

    /// asyncio's messages for failed reads and writes.
    fn read_error_message(self) -> &'static str {
        match self {
            Role::Socket => "Fatal read error on socket transport",
            _ => "Fatal read error on pipe transport",
        }
    }

    fn write_error_message(self) -> &'static str {
        match self {
            Role::Socket => "Fatal write error on socket transport",
            _ => "Fatal write error on pipe transport",
        }
    }

    /// asyncio's warning for writes made after the connection was lost.
    fn lost_write_warning(self) -> &'static str {
        match self {
            Role::Socket => "socket.send() raised exception.",
            _ => "pipe closed by peer or os.write(pipe, data) raised exception.",
        }
    }
}

/// A `bytes` object the write buffer keeps by reference (only an exact `bytes`: its
/// deallocation runs no Python code, so the buffer may drop it during a state borrow).
struct SharedBytes(Py<PyBytes>);

impl AsRef<[u8]> for SharedBytes {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        let object = self.0.as_ptr();
        // SAFETY: `self.0` is a strong reference, so the object lives at least as long as the
        // returned slice's borrow of `self`; a shared `bytes` object's size and contents never
        // change, so reading them races with nothing (and every caller holds the GIL anyway).
        unsafe {
            std::slice::from_raw_parts(
                ffi::PyBytes_AS_STRING(object).cast::<u8>(),
                ffi::Py_SIZE(object) as usize,
            )
        }
    }
}

/// A transport's outgoing data (see [`oxloop_core::write_buffer`]).
type WriteBuffer = oxloop_core::write_buffer::WriteBuffer<SharedBytes>;

/// The mutable state of a transport (see the module invariants).
struct StreamState {
    /// The protocol; None once the transport is detached.
    protocol: Option<Py<PyAny>>,
    /// Whether `protocol` is an `asyncio.BufferedProtocol`.
    buffered: bool,
    /// The Python `SocketTransport`; None once detached.
    transport: Option<Py<PyAny>>,
    buffer: WriteBuffer,
    high_water: usize,
    low_water: usize,
    /// `pause_writing()` was called and `resume_writing()` not yet.
    writing_paused: bool,
    /// `close()`, `abort()` or a fatal error happened.
    closing: bool,
    /// `write_eof()` was called.
    eof_requested: bool,
    /// The peer's end of file was received: nothing more to read.
    eof_received: bool,
    /// `connection_made` was scheduled and reading started.
    started: bool,
    /// `pause_reading()` was called and `resume_reading()` not yet.
    reading_paused: bool,
    /// How many times the connection was lost, plus writes made afterwards (asyncio's
    /// `_conn_lost`).
    conn_lost: u32,
    /// This transport is in the loop's end-of-iteration flush queue.
    flush_queued: bool,
    /// `loop.sendfile()`'s waiter for the buffer to drain.
    empty_waiter: Option<Py<PyAny>>,
    /// The descriptor is registered with the loop.
    watched: bool,
    /// A write pipe watches for its reader going away (asyncio does for pipes and sockets).
    watching_peer: bool,
    /// Writes a closed write pipe dropped (asyncio's count for its warning).
    dropped_writes: u32,
}

impl StreamState {
    /// Whether the transport should read (on events, or, unwatched, when scheduled).
    fn wants_read(&self, pollable: bool) -> bool {
        self.started
            && !self.reading_paused
            && !self.closing
            && !self.eof_received
            && (self.watched || !pollable)
    }

    /// Whether a write pipe should hear of its reader going away.
    fn wants_peer_close(&self) -> bool {
        self.watching_peer && !self.closing && self.watched
    }
}

/// What one attempt to send the buffer achieved.
enum FlushOutcome {
    /// Everything was sent.
    Emptied,
    /// The kernel buffer is full: wait for writability.
    WouldBlock,
    /// Sending failed.
    Failed(io::Error),
}

/// The native half of a stream transport.
#[pyclass(module = "oxloop._core", frozen, weakref)]
pub struct StreamTransport {
    fd: RawFd,
    role: Role,
    shared: LoopRef,
    /// The `contextvars.Context` protocol callbacks run in (a copy of the one current when
    /// the transport was made, as asyncio's reader handle has).
    context: Py<PyAny>,
    /// Mirrors [`StreamState::wants_read`] (for a write pipe, [`StreamState::wants_peer_close`])
    /// for event dispatch.
    reading: AtomicBool,
    /// A send would block: the loop delivers the next writable event.
    write_pending: AtomicBool,
    /// The last read was large (see [`LARGE_READ`]).
    large_reads: AtomicBool,
    /// The poller reported the peer's end of file (or an error): reads continue past a short
    /// read until they see it, since no further event will come.
    peer_closed: AtomicBool,
    /// The poller accepts the descriptor. A character device it refuses (`/dev/null`) is
    /// always ready: reads reschedule themselves, writes that would block are retried.
    pollable: AtomicBool,
    /// Where the peer is and whether it owes a reply (for a virtual-clock loop).
    peer: PeerWatch,
    state: GilCell<StreamState>,
}

impl StreamTransport {
    /// What the transport records about its peer for a virtual clock.
    pub(crate) fn peer(&self) -> &PeerWatch {
        &self.peer
    }

    /// Borrows the state (by the rule of [`GilCell`]).
    #[inline]
    fn state<'a>(&'a self, py: Python<'a>) -> GilRefMut<'a, StreamState> {
        self.state.borrow_mut(py)
    }

    /// For event dispatch: whether a readable event should run a read.
    #[inline]
    pub(crate) fn wants_readable_event(&self) -> bool {
        self.reading.load(Ordering::Relaxed)
    }

    /// For event dispatch: whether a writable event should run a flush.
    #[inline]
    pub(crate) fn wants_writable_event(&self) -> bool {
        self.write_pending.load(Ordering::Relaxed)
    }

    /// Clears `write_pending`, and the watch for writability it implied.
    fn stop_watching_writable(&self, py: Python<'_>) -> PyResult<()> {
        if self.write_pending.swap(false, Ordering::Relaxed) {
            self.shared.watch_stream_writable(py, self.fd, false)?;
        }
        Ok(())
    }

    /// For event dispatch: the peer closed its side (or the socket failed).
    #[inline]
    pub(crate) fn note_peer_closed(&self) {
        self.peer_closed.store(true, Ordering::Relaxed);
    }

    /// Whether a read that got `received` of `capacity` bytes may have left something to
    /// read (more data, or an end of file or error with no event to announce it).
    fn may_have_more(&self, received: usize, capacity: usize) -> bool {
        received == capacity
            || !self.pollable.load(Ordering::Relaxed)
            || self.peer_closed.load(Ordering::Relaxed)
    }

    /// Recomputes `reading` from the state.
    fn sync_reading(&self, state: &StreamState) {
        let wanted = match self.role {
            Role::WritePipe => state.wants_peer_close(),
            _ => state.wants_read(self.pollable.load(Ordering::Relaxed)),
        };
        self.reading.store(wanted, Ordering::Relaxed);
    }

    /// The Python transport and protocol, for error reports.
    fn transport_and_protocol(&self, py: Python<'_>) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        let state = self.state(py);
        (
            state.transport.as_ref().map(|t| t.clone_ref(py)),
            state.protocol.as_ref().map(|p| p.clone_ref(py)),
        )
    }

    /// Hands a failure to the Python half (`SocketTransport._fatal_error`), which reports it
    /// as asyncio does and force-closes the transport.
    fn fatal_error(slf: &Bound<'_, Self>, error: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let (transport, _) = slf.get().transport_and_protocol(py);
        match transport {
            Some(transport) => transport
                .bind(py)
                .call_method1(pyo3::intern!(py, "_fatal_error"), (error.value(py), message))
                .map(drop),
            None => Ok(()),
        }
    }

    /// Calls `protocol.<method>(*args)` inside the transport's context.
    fn call_protocol<'py>(
        &self,
        protocol: &Bound<'py, PyAny>,
        method: &Bound<'py, pyo3::types::PyString>,
        arg: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = protocol.py();
        // SAFETY: the GIL is held; every pointer is a live object borrowed for the call; the
        // context is entered and exited in pairs whatever the call returns.
        unsafe {
            if ffi::PyContext_Enter(self.context.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
            let args: [*mut ffi::PyObject; 2] =
                [protocol.as_ptr(), arg.map_or(std::ptr::null_mut(), |a| a.as_ptr())];
            let nargs = if arg.is_some() { 2 } else { 1 };
            let result = ffi::PyObject_VectorcallMethod(
                method.as_ptr(),
                args.as_ptr(),
                nargs | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
                std::ptr::null_mut(),
            );
            let result = Bound::from_owned_ptr_or_err(py, result);
            let exit_status: c_int = ffi::PyContext_Exit(self.context.as_ptr());
            if exit_status < 0 && result.is_ok() {
                return Err(PyErr::fetch(py));
            }
            result
        }
    }

    /// Reports an exception raised by a protocol callback: fatal ones propagate, the rest go
    /// to `_fatal_error` with `message`.
    fn protocol_failed(slf: &Bound<'_, Self>, error: PyErr, message: &str) -> PyResult<()> {
        if is_fatal(slf.py(), &error) {
            return Err(error);
        }
        Self::fatal_error(slf, error, message)
    }

    /// Queues a read attempt for the next iteration (a resumed transport, or a read that may
    /// not have drained the socket: with edge-triggered watching no new event would come).
    fn schedule_read(slf: &Bound<'_, Self>) {
        slf.get().shared.schedule_stream_read(slf.py(), slf.clone().unbind());
    }

    /// Runs one read: called by the loop for a readable event or a scheduled read.
    pub(crate) fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if !this.reading.load(Ordering::Relaxed) {
            return Ok(());
        }
        if this.role == Role::WritePipe {
            return Self::reader_gone(slf);
        }
        this.peer.note_read();
        let py = slf.py();
        let (protocol, buffered) = {
            let state = this.state(py);
            match &state.protocol {
                Some(protocol) => (protocol.clone_ref(py).into_bound(py), state.buffered),
                None => return Ok(()),
            }
        };
        if buffered {
            Self::read_into_protocol_buffer(slf, &protocol)
        } else {
            Self::read_bytes(slf, &protocol)
        }
    }

    /// Reads for a plain `Protocol`, up to [`MAX_READ`] bytes per event, each passed to
    /// `data_received` as `bytes`.
    ///
    /// A small read goes through the loop's buffer and is copied into an exactly sized
    /// `bytes`, so that a 1 KiB message does not cost a 256 KiB allocation. After an event
    /// whose reads added up to [`LARGE_READ`] bytes or more, reads go straight into a new
    /// `bytes` of that size (one copy of the data instead of two), repeated while they fill
    /// it: a `bytes` the protocol dropped is reused by the next read while it is still in the
    /// CPU's cache, where one read of 256 KiB would write to memory the cache cannot hold
    /// along with the kernel's own buffers (measured: bulk transfers 1.2-1.6x faster).
    fn read_bytes(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut budget = MAX_READ;
        loop {
            let large = this.large_reads.load(Ordering::Relaxed);
            let capacity = if large { LARGE_READ } else { MAX_READ };
            let received = if large {
                read_into_new_bytes(py, this.fd, LARGE_READ)
            } else {
                this.shared.with_read_buffer(py, |buffer| {
                    // SAFETY: `buffer` is a valid writable region of its length; `fd` is
                    // registered (open) while this transport reads. (`read` is `recv` without
                    // flags on a socket, and works on pipes.)
                    let n =
                        unsafe { libc::read(this.fd, buffer.as_mut_ptr().cast(), buffer.len()) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(PyBytes::new(py, &buffer[..n as usize]))
                    }
                })
            };
            let data = match received {
                Err(err) => return Self::read_failed(slf, err),
                Ok(data) if data.as_bytes().is_empty() => return Self::on_eof(slf, protocol),
                Ok(data) => data,
            };
            let length = data.as_bytes().len();
            budget = budget.saturating_sub(length);
            // Large while this event's reads add up to a large read (a 100 KiB message read as
            // 64 + 36 KiB keeps the next message on the straight path).
            this.large_reads.store(MAX_READ - budget >= LARGE_READ, Ordering::Relaxed);
            let more = this.may_have_more(length, capacity);
            if let Err(error) = this.call_protocol(
                protocol,
                pyo3::intern!(py, "data_received"),
                Some(data.as_any()),
            ) {
                return Self::protocol_failed(
                    slf,
                    error,
                    "Fatal error: protocol.data_received() call failed.",
                );
            }
            if !more {
                return Ok(());
            }
            if !(large && budget > 0 && this.reads_into(py, protocol)) {
                Self::schedule_read(slf);
                return Ok(());
            }
        }
    }

    /// Whether the transport still reads, for `protocol` (which `data_received` may have
    /// paused, closed or replaced).
    fn reads_into(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> bool {
        self.reading.load(Ordering::Relaxed)
            && self.state(py).protocol.as_ref().is_some_and(|p| p.is(protocol))
    }

    /// A read for a `BufferedProtocol`: `get_buffer(-1)`, `read` straight into it, then
    /// `buffer_updated(n)`.
    fn read_into_protocol_buffer(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let minus_one = (-1i32).into_pyobject(py)?.into_any();
        let buffer =
            match this.call_protocol(protocol, pyo3::intern!(py, "get_buffer"), Some(&minus_one)) {
                Ok(buffer) => buffer,
                Err(error) => {
                    return Self::protocol_failed(
                        slf,
                        error,
                        "Fatal error: protocol.get_buffer() call failed.",
                    )
                }
            };
        let received = match read_into(this.fd, &buffer) {
            Ok(received) => received,
            Err(ReceiveIntoError::Python(error)) => {
                return Self::protocol_failed(
                    slf,
                    error,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
            Err(ReceiveIntoError::Os(err)) => return Self::read_failed(slf, err),
        };
        if received.bytes == 0 {
            return Self::on_eof(slf, protocol);
        }
        let count = received.bytes.into_pyobject(py)?.into_any();
        if let Err(error) =
            this.call_protocol(protocol, pyo3::intern!(py, "buffer_updated"), Some(&count))
        {
            return Self::protocol_failed(
                slf,
                error,
                "Fatal error: protocol.buffer_updated() call failed.",
            );
        }
        if this.may_have_more(received.bytes, received.capacity) {
            Self::schedule_read(slf);
        }
        Ok(())
    }

    /// A failed `read`: would-block ends the read; an interruption retries next iteration;
    /// anything else is fatal.
    fn read_failed(slf: &Bound<'_, Self>, err: io::Error) -> PyResult<()> {
        match err.kind() {
            io::ErrorKind::WouldBlock => Ok(()),
            io::ErrorKind::Interrupted => {
                Self::schedule_read(slf);
                Ok(())
            }
            _ => Self::fatal_error(slf, os_error(err), slf.get().role.read_error_message()),
        }
    }

    /// The peer closed its end: `eof_received()`; close unless it returns true.
    fn on_eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut state = this.state(py);
            state.eof_received = true;
            this.sync_reading(&state);
        }
        if this.shared.debug_enabled() {
            if let (Some(transport), _) = this.transport_and_protocol(py) {
                debug_log(py, "%r received EOF", transport.bind(py))?;
            }
        }
        let keep_open = match this.call_protocol(protocol, pyo3::intern!(py, "eof_received"), None)
        {
            Ok(keep_open) => keep_open,
            Err(error) => {
                return Self::protocol_failed(
                    slf,
                    error,
                    "Fatal error: protocol.eof_received() call failed.",
                )
            }
        };
        if this.role == Role::ReadPipe || !keep_open.is_truthy()? {
            Self::close_transport(slf)?;
        }
        Ok(())
    }

    /// Sends as much of the buffer as the kernel takes now.
    fn send_buffer(&self, py: Python<'_>) -> FlushOutcome {
        let mut state = self.state(py);
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_IOVECS];
        loop {
            if state.buffer.is_empty() {
                break FlushOutcome::Emptied;
            }
            let pieces = state.buffer.fill_iovecs(&mut iov);
            match send_vectored(self.role, self.fd, pieces) {
                Ok(sent) => state.buffer.consume(sent),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    break FlushOutcome::WouldBlock
                }
                Err(err) => break FlushOutcome::Failed(err),
            }
        }
    }

    /// Sends the buffer and deals with the outcome: wait for writability, report a failure,
    /// resume a paused protocol, and when the buffer is empty, wake `sendfile`'s waiter and
    /// finish a pending close or `write_eof`.
    fn flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match this.send_buffer(py) {
            FlushOutcome::WouldBlock if !this.pollable.load(Ordering::Relaxed) => {
                // No writable event will come: try again at the end of the iteration.
                let mut state = this.state(py);
                if !state.flush_queued {
                    state.flush_queued = true;
                    drop(state);
                    this.shared.queue_flush(py, slf.clone().unbind());
                }
                Ok(())
            }
            FlushOutcome::WouldBlock => {
                if !this.write_pending.swap(true, Ordering::Relaxed) {
                    this.shared.watch_stream_writable(py, this.fd, true)?;
                }
                Self::maybe_resume_protocol(slf)
            }
            FlushOutcome::Failed(err) => {
                this.stop_watching_writable(py)?;
                let error = os_error(err);
                let waiter = this.state(py).empty_waiter.as_ref().map(|w| w.clone_ref(py));
                if let Some(waiter) = waiter {
                    let waiter = waiter.bind(py);
                    if !waiter.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                        waiter
                            .call_method1(pyo3::intern!(py, "set_exception"), (error.value(py),))?;
                    }
                }
                Self::fatal_error(slf, error, this.role.write_error_message())
            }
            FlushOutcome::Emptied => {
                this.stop_watching_writable(py)?;
                Self::maybe_resume_protocol(slf)?;
                let (waiter, lose_connection, shut_down) = {
                    let mut state = this.state(py);
                    let waiter = state.empty_waiter.as_ref().map(|w| w.clone_ref(py));
                    let lose_connection = state.closing && state.conn_lost == 0;
                    if lose_connection {
                        state.conn_lost += 1;
                    }
                    (waiter, lose_connection, !state.closing && state.eof_requested)
                };
                if let Some(waiter) = waiter {
                    set_result_unless_done(waiter.bind(py))?;
                }
                if lose_connection {
                    Self::schedule_connection_lost(slf, None)?;
                } else if shut_down {
                    // SAFETY: `fd` is registered (open); shutting down the write side only.
                    // An error here (the peer is gone) surfaces on the next read.
                    unsafe { libc::shutdown(this.fd, libc::SHUT_WR) };
                }
                Ok(())
            }
        }
    }

    /// Called by the loop for a writable event.
    pub(crate) fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.get().write_pending.load(Ordering::Relaxed) {
            return Ok(());
        }
        Self::flush(slf)
    }

    /// Called by the loop at the end of an iteration for a transport that was written to.
    pub(crate) fn flush_queued(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.state(py).flush_queued = false;
        if this.write_pending.load(Ordering::Relaxed) {
            return Ok(()); // the writable event will flush
        }
        Self::flush(slf)
    }

    /// Schedules `SocketTransport._call_connection_lost(exc)` with `call_soon`, in the
    /// transport's context. Once the loop is closed, this fails as asyncio's `call_soon`
    /// does (the transport is left closing, its socket for its finalizer to close).
    fn schedule_connection_lost(
        slf: &Bound<'_, Self>,
        exc: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.shared.is_released(py) {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        let (transport, _) = this.transport_and_protocol(py);
        let (Some(transport), Some(event_loop)) = (transport, this.shared.loop_object(py)) else {
            return Ok(());
        };
        let callback = transport.bind(py).getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "context"), &this.context)?;
        event_loop.call_method(pyo3::intern!(py, "call_soon"), (callback, exc), Some(&kwargs))?;
        Ok(())
    }

    /// asyncio's `_maybe_pause_protocol`: `pause_writing()` once the buffer is above the
    /// high-water mark.
    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut state = slf.get().state(py);
            if state.buffer.len() <= state.high_water || state.writing_paused {
                return Ok(());
            }
            state.writing_paused = true;
            state.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        match protocol {
            Some(protocol) => Self::call_flow_control(slf, protocol.bind(py), "pause_writing"),
            None => Ok(()),
        }
    }

    /// asyncio's `_maybe_resume_protocol`: `resume_writing()` once a paused protocol's buffer
    /// is down to the low-water mark.
    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let protocol = {
            let mut state = slf.get().state(py);
            if !state.writing_paused || state.buffer.len() > state.low_water {
                return Ok(());
            }
            state.writing_paused = false;
            state.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        match protocol {
            Some(protocol) => Self::call_flow_control(slf, protocol.bind(py), "resume_writing"),
            None => Ok(()),
        }
    }

    /// Calls `pause_writing`/`resume_writing`; an exception goes to the exception handler
    /// (`protocol.<method>() failed`), as asyncio's flow-control mixin does.
    fn call_flow_control(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        method: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        let Err(error) = protocol.call_method0(method) else { return Ok(()) };
        if is_fatal(py, &error) {
            return Err(error);
        }
        let Some(event_loop) = slf.get().shared.loop_object(py) else { return Ok(()) };
        let (transport, _) = slf.get().transport_and_protocol(py);
        let context = PyDict::new(py);
        context.set_item("message", format!("protocol.{method}() failed"))?;
        context.set_item("exception", error.value(py))?;
        context.set_item("transport", transport)?;
        context.set_item("protocol", protocol)?;
        event_loop.call_method1("call_exception_handler", (context,))?;
        Ok(())
    }

    /// From Python 3.12 asyncio's socket transport has a `writelines` of its own, which first
    /// refuses after `write_eof()` or during a sendfile, naming itself in the message (before
    /// 3.12, `writelines` called `write()`, whose message names `write()`).
    fn writelines_refusal(&self, py: Python<'_>) -> Option<&'static str> {
        let message = {
            let state = self.state(py);
            if state.eof_requested {
                "Cannot call writelines() after write_eof()"
            } else if state.empty_waiter.is_some() {
                "unable to writelines; sendfile is in progress"
            } else {
                return None;
            }
        };
        (self.role != Role::WritePipe && py.version_info() >= (3, 12)).then_some(message)
    }

    /// Appends `data` (a bytes-like object) to the buffer, queues the flush, and sends at
    /// once when the buffer would otherwise pause the protocol — unless `more_follows` (a
    /// piece of `writelines` before its last, which decides for all of them).
    fn write_data(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        more_follows: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        check_bytes_like(data)?;
        // A mutable buffer is copied now (the caller may change it after `write()` returns),
        // outside the borrow; `bytes` are immutable and used in place.
        // Only an exact `bytes` is kept by reference: a subclass's deallocation could run
        // Python code, and chunks are dropped during a state borrow (see [`SharedBytes`]).
        let bytes = data.cast_exact::<PyBytes>().ok();
        let mut copy = match bytes {
            Some(_) => None,
            None => Some(with_buffer(data, <[u8]>::to_vec)?),
        };
        let len = bytes.map_or_else(|| copy.as_ref().map_or(0, Vec::len), |b| b.as_bytes().len());
        let (warn_dropped, queue_flush, send_now) = {
            let mut state = this.state(py);
            if state.eof_requested {
                return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
            }
            if state.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
            }
            if len == 0 {
                return Ok(());
            }
            if this.role == Role::WritePipe && (state.closing || state.conn_lost > 0) {
                // asyncio's write pipe drops what is written after close(), write_eof() or
                // the reader going away (counted; past a threshold, each logs a warning).
                let dropped = state.dropped_writes;
                state.dropped_writes += 1;
                (Some(dropped), false, false)
            } else if state.conn_lost > 0 {
                // asyncio's rule for sockets: writes after the connection is lost are
                // dropped (counted in `conn_lost`, which is 1 at the first).
                let lost = state.conn_lost;
                state.conn_lost += 1;
                (Some(lost), false, false)
            } else {
                match (bytes, copy.take()) {
                    (Some(bytes), _) => state
                        .buffer
                        .push_shared(bytes.as_bytes(), || SharedBytes(bytes.clone().unbind())),
                    (None, Some(copy)) => state.buffer.push_owned(copy),
                    (None, None) => unreachable!("a copy is made of every non-bytes buffer"),
                }
                this.peer.note_write();
                let pending = this.write_pending.load(Ordering::Relaxed);
                // A pipe is written at once, as asyncio does (its reader may be waiting in
                // a blocking read); a socket at the end of the iteration, or at once above
                // the high-water mark.
                let send_now = !pending
                    && !more_follows
                    && (this.role == Role::WritePipe || state.buffer.len() > state.high_water);
                let queue_flush = !send_now && !state.flush_queued && !pending;
                if queue_flush {
                    state.flush_queued = true;
                }
                (None, queue_flush, send_now)
            }
        };
        let may_need_pause = send_now || this.write_pending.load(Ordering::Relaxed);
        if let Some(dropped) = warn_dropped {
            if dropped >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                warn_log(py, this.role.lost_write_warning())?;
            }
            return Ok(());
        }
        if queue_flush {
            this.shared.queue_flush(py, slf.clone().unbind());
        }
        if send_now {
            Self::flush(slf)?;
        }
        // Only a buffer that was above the high-water mark (or already waiting for the kernel)
        // can need pausing: the common small write skips the check and its borrow.
        if may_need_pause {
            Self::maybe_pause_protocol(slf)?;
        }
        Ok(())
    }

    /// `close()`: stop reading; lose the connection once the buffer is sent.
    fn close_transport(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lose_now = {
            let mut state = this.state(py);
            if state.closing {
                return Ok(());
            }
            state.closing = true;
            this.sync_reading(&state);
            let lose_now = state.buffer.is_empty();
            if lose_now {
                state.conn_lost += 1;
                this.write_pending.store(false, Ordering::Relaxed);
            }
            lose_now
        };
        if lose_now {
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    /// Unregisters the descriptor from the loop (if registered).
    fn unwatch(&self, py: Python<'_>) -> Option<Py<StreamTransport>> {
        let was_watched = {
            let mut state = self.state(py);
            std::mem::replace(&mut state.watched, false)
        };
        self.reading.store(false, Ordering::Relaxed);
        self.write_pending.store(false, Ordering::Relaxed);
        if was_watched {
            self.shared.unregister_stream(py, self.fd)
        } else {
            None
        }
    }

    /// Forgets the protocol, the Python transport and the buffer: the transport is done, or
    /// its loop closed (breaks the reference cycles through the protocol).
    pub(crate) fn abandon(&self, py: Python<'_>) {
        let dropped = {
            let mut state = self.state(py);
            state.watched = false;
            (
                state.protocol.take(),
                state.transport.take(),
                state.buffer.clear(),
                state.empty_waiter.take(),
            )
        };
        self.reading.store(false, Ordering::Relaxed);
        self.write_pending.store(false, Ordering::Relaxed);
        drop(dropped);
    }

    /// The Python transport, until the transport is detached.
    pub(crate) fn python_transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state(py).transport.as_ref().map(|t| t.clone_ref(py))
    }

    /// A write pipe's reader went away: close now, with a `BrokenPipeError` if data is still
    /// buffered (asyncio's `_UnixWritePipeTransport._read_ready`).
    fn reader_gone(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if !this.peer_closed.load(Ordering::Relaxed) {
            return Ok(()); // data from a socket's peer: not the reader going away
        }
        let py = slf.py();
        if this.shared.debug_enabled() {
            Self::log_transport(slf, "%r was closed by peer")?;
        }
        let error = if this.state(py).buffer.is_empty() {
            None
        } else {
            Some(
                pyo3::exceptions::PyBrokenPipeError::new_err(())
                    .into_value(py)
                    .into_bound(py)
                    .into_any(),
            )
        };
        Self::force_close(slf, error)
    }

    /// Logs `message % (transport,)` at debug level (debug mode only).
    fn log_transport(slf: &Bound<'_, Self>, message: &str) -> PyResult<()> {
        let py = slf.py();
        match slf.get().transport_and_protocol(py) {
            (Some(transport), _) => debug_log(py, message, transport.bind(py)),
            _ => Ok(()),
        }
    }
}

#[pymethods]
impl StreamTransport {
    /// Registers `fd` with `loop` for `protocol`; `transport` is the Python transport (passed
    /// to error reports). `kind` is "socket" (a connected stream socket), "read_pipe" or
    /// "write_pipe". Reading starts with `_start_reading()`.
    #[new]
    #[pyo3(signature = (event_loop, fd, protocol, transport, kind="socket"))]
    fn py_new(
        event_loop: &Bound<'_, LoopCore>,
        fd: RawFd,
        protocol: Bound<'_, PyAny>,
        transport: Bound<'_, PyAny>,
        kind: &str,
    ) -> PyResult<Py<Self>> {
        let py = event_loop.py();
        let role = Role::parse(kind)?;
        let shared = LoopCore::shared_for_transport(event_loop)?;
        let buffered = is_buffered_protocol(&protocol)?;
        let this = Py::new(
            py,
            StreamTransport {
                fd,
                role,
                pollable: AtomicBool::new(true),
                shared: shared.clone_ref(py),
                context: copy_current_context(py)?,
                reading: AtomicBool::new(false),
                write_pending: AtomicBool::new(false),
                peer_closed: AtomicBool::new(false),
                large_reads: AtomicBool::new(false),
                peer: PeerWatch::new(),
                state: GilCell::new(StreamState {
                    protocol: Some(protocol.unbind()),
                    buffered,
                    transport: Some(transport.unbind()),
                    buffer: WriteBuffer::default(),
                    high_water: DEFAULT_HIGH_WATER,
                    low_water: DEFAULT_HIGH_WATER / 4,
                    writing_paused: false,
                    closing: false,
                    eof_requested: false,
                    eof_received: false,
                    started: false,
                    reading_paused: false,
                    conn_lost: 0,
                    flush_queued: false,
                    empty_waiter: None,
                    watched: false,
                    watching_peer: false,
                    dropped_writes: 0,
                }),
            },
        )?;
        match shared.register_stream(py, fd, this.clone_ref(py)) {
            Ok(()) => this.get().state(py).watched = true,
            // A pipe end the poller refuses (a character device such as /dev/null) is used
            // unwatched, as always ready; a socket must be watchable.
            Err(err)
                if role != Role::Socket
                    && err.value(py).is_instance_of::<pyo3::exceptions::PyPermissionError>() =>
            {
                this.get().pollable.store(false, Ordering::Relaxed);
            }
            Err(err) => return Err(err),
        }
        Ok(this)
    }

    /// Tells a virtual-clock loop where the peer is: "in_loop" (a transport of the same loop),
    /// "outside_client" (another process connected to this loop), "outside_server" (this loop
    /// connected to another process, whose replies hold virtual time).
    fn _set_peer(&self, kind: &str) -> PyResult<()> {
        self.peer.set_kind(kind)
    }

    /// Starts reading (scheduled by the Python half after `connection_made`).
    fn _start_reading(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        {
            let mut state = this.state(py);
            state.started = true;
            this.sync_reading(&state);
        }
        Self::schedule_read(slf);
    }

    /// A write pipe: from now on, the reader going away closes the transport (scheduled by
    /// the Python half after `connection_made`, for pipes and sockets, as asyncio does).
    fn _watch_peer_close(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        {
            let mut state = this.state(py);
            state.watching_peer = true;
            this.sync_reading(&state);
        }
        if this.peer_closed.load(Ordering::Relaxed) {
            // The event came before watching started; edge-triggered, it will not repeat.
            Self::schedule_read(slf);
        }
    }

    /// `transport.write(data)`.
    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_data(slf, data, false)
    }

    /// `transport.writelines(list_of_data)`: the pieces are buffered in order and sent
    /// together. As asyncio's (which joins them and calls `write()`), nothing is written if a
    /// piece is not bytes-like, and an empty list still raises after `write_eof()`.
    pub(crate) fn writelines(
        slf: &Bound<'_, Self>,
        list_of_data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let Some(message) = slf.get().writelines_refusal(slf.py()) {
            return Err(PyRuntimeError::new_err(message));
        }
        let mut pieces = list_of_data.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        for piece in &pieces {
            check_bytes_like(piece)?;
        }
        pieces.retain(|piece| piece.len().map_or(true, |len| len > 0));
        let Some((last, first)) = pieces.split_last() else {
            return Self::write_data(slf, PyBytes::new(slf.py(), b"").as_any(), false);
        };
        for piece in first {
            Self::write_data(slf, piece, true)?;
        }
        Self::write_data(slf, last, false)
    }

    /// Whether the transport is closing or closed.
    pub(crate) fn is_closing(&self, py: Python<'_>) -> bool {
        self.state(py).closing
    }

    /// Bytes written but not yet accepted by the kernel.
    pub(crate) fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state(py).buffer.len()
    }

    /// Whether the transport delivers incoming data (not paused, not closing).
    pub(crate) fn is_reading(&self, py: Python<'_>) -> bool {
        let state = self.state(py);
        !state.reading_paused && !state.closing
    }

    /// Stops delivering data until `resume_reading()`; does nothing if not reading.
    pub(crate) fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let changed = {
            let mut state = this.state(py);
            let changed = !state.reading_paused && !state.closing;
            if changed {
                state.reading_paused = true;
                this.sync_reading(&state);
            }
            changed
        };
        if changed && this.shared.debug_enabled() {
            Self::log_transport(slf, "%r pauses reading")?;
        }
        Ok(())
    }

    /// Delivers data again after `pause_reading()`; does nothing if not paused or closing.
    pub(crate) fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let changed = {
            let mut state = this.state(py);
            let changed = state.reading_paused && !state.closing;
            if changed {
                state.reading_paused = false;
                this.sync_reading(&state);
            }
            changed
        };
        if changed {
            Self::schedule_read(slf);
            if this.shared.debug_enabled() {
                Self::log_transport(slf, "%r resumes reading")?;
            }
        }
        Ok(())
    }

    /// `close()`.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_transport(slf)
    }

    /// asyncio's `_force_close(exc)` (and `abort()` with None): drop the buffer and lose the
    /// connection now, unless it is already lost.
    #[pyo3(signature = (exc=None))]
    fn force_close(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if exc.is_none()
            && this.role == Role::Socket
            && !this.write_pending.load(Ordering::Relaxed)
            && this.state(py).conn_lost == 0
        {
            // `abort()`. asyncio's `write()` has already sent what the kernel takes, and abort
            // drops only the rest; small writes wait here for the end of the iteration, so
            // they are offered to the kernel now. What it refuses (or an error) is dropped,
            // as asyncio drops it.
            let _ = this.send_buffer(slf.py());
        }
        let dropped = {
            let mut state = this.state(py);
            if state.conn_lost > 0 {
                return Ok(());
            }
            let dropped = state.buffer.clear();
            this.write_pending.store(false, Ordering::Relaxed);
            state.closing = true;
            this.sync_reading(&state);
            state.conn_lost += 1;
            dropped
        };
        drop(dropped);
        Self::schedule_connection_lost(slf, exc)
    }

    /// `write_eof()`: shut down the write side once the buffer is sent.
    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let shut_down_now = {
            let mut state = self.state(py);
            if state.closing || state.eof_requested {
                return Ok(());
            }
            state.eof_requested = true;
            state.buffer.is_empty()
        };
        // SAFETY: `fd` is registered (open) while the transport is not closing.
        if shut_down_now && unsafe { libc::shutdown(self.fd, libc::SHUT_WR) } < 0 {
            return Err(os_error(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Whether `write_eof()` was called.
    #[getter]
    fn eof_requested(&self, py: Python<'_>) -> bool {
        self.state(py).eof_requested
    }

    /// Sets the protocol that receives the following events.
    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = is_buffered_protocol(&protocol)?;
        let old = {
            let mut state = self.state(py);
            state.buffered = buffered;
            state.protocol.replace(protocol.unbind())
        };
        drop(old);
        Ok(())
    }

    /// The current protocol (None once the transport is done).
    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state(py).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// Sets validated flow-control limits and pauses the protocol if already above.
    fn set_write_buffer_limits(slf: &Bound<'_, Self>, high: usize, low: usize) -> PyResult<()> {
        let py = slf.py();
        {
            let mut state = slf.get().state(py);
            state.high_water = high;
            state.low_water = low;
        }
        Self::maybe_pause_protocol(slf)
    }

    /// Whether `pause_writing()` is in effect (asyncio's `_protocol_paused`).
    #[getter]
    fn writing_paused(&self, py: Python<'_>) -> bool {
        self.state(py).writing_paused
    }

    /// Whether a send waits for the socket to become writable.
    #[getter]
    fn write_pending(&self) -> bool {
        self.write_pending.load(Ordering::Relaxed)
    }

    /// asyncio's `_conn_lost`.
    #[getter]
    fn conn_lost(&self, py: Python<'_>) -> u32 {
        self.state(py).conn_lost
    }

    /// Whether the loop watches the descriptor for reading now.
    #[getter]
    fn reading_watched(&self) -> bool {
        self.reading.load(Ordering::Relaxed)
    }

    /// Sets (or clears, with None) `sendfile`'s waiter for the buffer to drain; it is resolved
    /// at once if the buffer is already empty.
    fn set_empty_waiter(&self, py: Python<'_>, waiter: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let empty = {
            let mut state = self.state(py);
            state.empty_waiter = waiter.as_ref().map(|w| w.clone().unbind());
            state.buffer.is_empty()
        };
        if let (Some(waiter), true) = (waiter, empty) {
            set_result_unless_done(&waiter)?;
        }
        Ok(())
    }

    /// Whether `sendfile` has a waiter set.
    #[getter]
    fn has_empty_waiter(&self, py: Python<'_>) -> bool {
        self.state(py).empty_waiter.is_some()
    }

    /// Stops watching the descriptor (`sendfile` drives it directly meanwhile).
    fn suspend_watching(&self, py: Python<'_>) {
        let registered = self.unwatch(py);
        drop(registered);
    }

    /// Watches the descriptor again after `suspend_watching()`.
    fn resume_watching(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.state(py).watched {
            return Ok(());
        }
        this.shared.register_stream(py, this.fd, slf.clone().unbind())?;
        {
            let mut state = this.state(py);
            state.watched = true;
            this.sync_reading(&state);
        }
        Self::schedule_read(slf);
        Ok(())
    }

    /// Stops watching and forgets the protocol and Python transport: called by the Python
    /// half right before it closes the socket.
    fn detach(&self, py: Python<'_>) {
        let registered = self.unwatch(py);
        self.abandon(py);
        drop(registered);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.context)?;
        // SAFETY: the collector calls `tp_traverse` with the GIL held; the token only
        // borrows the state.
        let py = unsafe { Python::assume_attached() };
        if let Some(state) = self.state.try_borrow_mut(py) {
            for object in
                [&state.protocol, &state.transport, &state.empty_waiter].into_iter().flatten()
            {
                visit.call(object)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        self.abandon(py);
    }
}

/// `future.set_result(None)` unless the future is already done.
fn set_result_unless_done(future: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = future.py();
    if !future.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
        future.call_method1(pyo3::intern!(py, "set_result"), (py.None(),))?;
    }
    Ok(())
}

/// `isinstance(protocol, asyncio.BufferedProtocol)`.
fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    static BUFFERED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let buffered = BUFFERED.import(protocol.py(), "asyncio", "BufferedProtocol")?;
    protocol.is_instance(buffered)
}

/// `read` of up to `capacity` bytes straight into a new `bytes`, shrunk to what was read.
fn read_into_new_bytes(
    py: Python<'_>,
    fd: RawFd,
    capacity: usize,
) -> io::Result<Bound<'_, PyBytes>> {
    // SAFETY: the GIL is held. A `bytes` made with a NULL source is uninitialised and not yet
    // shared, so writing into it and resizing it (which may move it) is allowed; it is
    // initialised up to the size it is shrunk to before anyone else sees it.
    unsafe {
        let mut object =
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), capacity as ffi::Py_ssize_t);
        if object.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let n = libc::read(fd, ffi::PyBytes_AsString(object).cast(), capacity);
        let error = (n < 0).then(io::Error::last_os_error);
        if _PyBytes_Resize(&mut object, n.max(0) as ffi::Py_ssize_t) < 0 {
            // The object was freed; nothing was read into anything anyone sees.
            ffi::PyErr_Clear();
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let data = Bound::from_owned_ptr(py, object).cast_into_unchecked::<PyBytes>();
        match error {
            Some(error) => Err(error),
            None => Ok(data),
        }
    }
}

/// What `read_into` read.
struct Received {
    bytes: usize,
    capacity: usize,
}

/// Why `read_into` failed.
enum ReceiveIntoError {
    /// The buffer is unusable (not writable, empty).
    Python(PyErr),
    /// `read` failed.
    Os(io::Error),
}

/// `read` straight into a writable buffer object.
fn read_into(fd: RawFd, buffer: &Bound<'_, PyAny>) -> Result<Received, ReceiveIntoError> {
    let py = buffer.py();
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: the GIL is held; on success the view describes `len` writable bytes at `buf`
    // until `PyBuffer_Release`, which is called on every path after it.
    unsafe {
        if ffi::PyObject_GetBuffer(buffer.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) < 0 {
            return Err(ReceiveIntoError::Python(PyErr::fetch(py)));
        }
        let mut view = view.assume_init();
        let capacity = view.len as usize;
        let result = if capacity == 0 {
            Err(ReceiveIntoError::Python(PyRuntimeError::new_err(
                "get_buffer() returned an empty buffer",
            )))
        } else {
            let n = libc::read(fd, view.buf, capacity);
            if n < 0 {
                Err(ReceiveIntoError::Os(io::Error::last_os_error()))
            } else {
                Ok(Received { bytes: n as usize, capacity })
            }
        };
        ffi::PyBuffer_Release(&mut view);
        result
    }
}

/// One `sendmsg` of the given pieces on a socket (`MSG_NOSIGNAL`: a closed peer gives
/// `EPIPE`, never a `SIGPIPE`) — a plain `send` when there is one piece, which the kernel
/// handles with less work — or one `writev` on a pipe (Python ignores `SIGPIPE`).
fn send_vectored(role: Role, fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid (no name, no control data); `iov` points to `len`
    // valid iovecs describing live buffers for the duration of the call.
    let sent = unsafe {
        match (role, iov) {
            (Role::Socket, [one]) => libc::send(fd, one.iov_base, one.iov_len, libc::MSG_NOSIGNAL),
            (Role::Socket, _) => {
                let mut message: libc::msghdr = std::mem::zeroed();
                message.msg_iov = iov.as_ptr() as *mut libc::iovec;
                message.msg_iovlen = iov.len() as _;
                libc::sendmsg(fd, &message, libc::MSG_NOSIGNAL)
            }
            _ => libc::writev(fd, iov.as_ptr(), iov.len() as c_int),
        }
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}
