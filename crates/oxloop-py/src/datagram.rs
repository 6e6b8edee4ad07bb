//! `DatagramTransport`: the native half of oxloop's UDP and Unix datagram transports (the
//! Python half, `oxloop._datagram.DatagramSocketTransport`, is the transport protocols see).
//!
//! Per datagram, everything is here: `recvfrom` into the loop's read buffer, the sender's
//! address as a Python tuple (the last one is reused while the sender stays the same),
//! `datagram_received`, and `sendto` (the address converted natively when it is numeric, the
//! tuple of the last sender recognised without converting it again). Datagrams the kernel
//! cannot take yet are buffered and sent when the socket is writable. Two rules follow the
//! running Python's asyncio ([`DatagramRules`]): whether `sendto(b"")` sends an empty
//! datagram, and whether the write-buffer size counts a header per buffered datagram.
//!
//! Invariants:
//! - Only the loop's thread touches a transport, with the GIL held. The state is in a
//!   [`GilCell`], borrowed by the rule stated there.
//! - The Python socket object owns the descriptor; this object borrows its number until
//!   `detach`, which the Python half calls just before closing the socket.
//! - The loop watches the descriptor as asyncio's datagram transport has it watched: a reader
//!   (level-triggered, in the handle's context) while reading,
//!   a writer only while datagrams are buffered. Both are the loop's internal watches
//!   (`_add_reader`), so user code cannot take the fd while the transport is open.
//! - `connection_lost` is scheduled exactly once: every path that schedules it first checks
//!   and increments `conn_lost`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::{LoopCore, LoopRef, MAX_READ};
use crate::gil_cell::{GilCell, GilRefMut};
use crate::glue::{debug_log, is_fatal, os_error, warn_log, with_buffer};
use crate::sockaddr::RawAddress;

/// asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// The most datagrams one readable event delivers (libuv's number).
const DATAGRAMS_PER_EVENT: usize = 32;

/// What asyncio's datagram transport does differently by Python version.
#[derive(Clone, Copy)]
struct DatagramRules {
    /// `sendto(b"")` sends an empty datagram (Python 3.13+; before, it did nothing).
    sends_empty: bool,
    /// Bytes counted in the write-buffer size per buffered datagram on top of its data
    /// (8 from Python 3.13, as asyncio counts a UDP header; 0 before).
    header_size: usize,
}

impl DatagramRules {
    /// The rules of the running interpreter's asyncio.
    fn for_running_python(py: Python<'_>) -> Self {
        let since_3_13 = py.version_info() >= (3, 13);
        DatagramRules { sends_empty: since_3_13, header_size: if since_3_13 { 8 } else { 0 } }
    }
}

/// A received datagram and its sender's address.
type Datagram<'py> = (Bound<'py, PyBytes>, Bound<'py, PyAny>);

/// A datagram waiting for the kernel.
struct Queued {
    data: Py<PyBytes>,
    /// The address given to `sendto` (None on a connected socket).
    address: Option<Py<PyAny>>,
}

/// The mutable state of a transport (see the module invariants).
struct DatagramState {
    /// The protocol; None once detached.
    protocol: Option<Py<PyAny>>,
    /// The Python transport; None once detached.
    transport: Option<Py<PyAny>>,
    /// The Python socket, for the addresses converted only by Python.
    sock: Option<Py<PyAny>>,
    /// The `remote_addr` of the endpoint: `sendto` accepts only it (or None).
    remote: Option<Py<PyAny>>,
    buffer: VecDeque<Queued>,
    /// Bytes in `buffer`, plus the rules' header size per datagram.
    buffer_size: usize,
    /// `close()`, `abort()` or a fatal error happened.
    closing: bool,
    /// asyncio's `_conn_lost`.
    conn_lost: u32,
    /// `pause_reading()` was called and `resume_reading()` not yet.
    reading_paused: bool,
    /// The loop watches the descriptor for reading / for writing.
    reader_watched: bool,
    writer_watched: bool,
    /// The last sender and its Python address (reused while the sender stays the same).
    last_sender: Option<(RawAddress, Py<PyAny>)>,
    /// The last address object `sendto` converted, and what it converted to.
    last_destination: Option<(Py<PyAny>, RawAddress)>,
}

/// The native half of a datagram transport.
#[pyclass(module = "oxloop._core", frozen, weakref)]
pub struct DatagramTransport {
    fd: RawFd,
    /// The socket's address family.
    family: libc::c_int,
    /// The socket is connected: datagrams go out with `send`, to its peer.
    connected: bool,
    /// The running Python's datagram rules.
    rules: DatagramRules,
    shared: LoopRef,
    state: GilCell<DatagramState>,
}

/// How one `send`/`sendto` went.
enum SendOutcome {
    Sent,
    /// The kernel buffer is full.
    WouldBlock,
    /// The error to report (an `OSError` goes to `error_received`).
    Failed(PyErr),
}

impl DatagramTransport {
    /// Borrows the state (by the rule of [`GilCell`]).
    #[inline]
    fn state<'a>(&'a self, py: Python<'a>) -> GilRefMut<'a, DatagramState> {
        self.state.borrow_mut(py)
    }

    /// The protocol, unless the transport is detached.
    fn protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state(py).protocol.as_ref().map(|p| p.bind(py).clone())
    }

    /// The Python transport, unless detached.
    fn python_transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.state(py).transport.as_ref().map(|t| t.bind(py).clone())
    }

    /// `loop.<method>(fd, *args)` (the loop's internal fd watches).
    fn call_loop(
        &self,
        py: Python<'_>,
        method: &str,
        callback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let Some(event_loop) = self.shared.loop_object(py) else { return Ok(()) };
        match callback {
            Some(callback) => event_loop.call_method1(method, (self.fd, callback)).map(drop),
            None => event_loop.call_method1(method, (self.fd,)).map(drop),
        }
    }

    /// Starts watching for readability, unless already watching.
    fn watch_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut state = this.state(py);
            if state.reader_watched || state.closing || state.reading_paused {
                return Ok(());
            }
            state.reader_watched = true;
        }
        let callback = slf.getattr(pyo3::intern!(slf.py(), "_read_ready"))?;
        this.call_loop(slf.py(), "_add_reader", Some(callback))
    }

    /// Stops watching for readability.
    fn unwatch_reading(&self, py: Python<'_>) -> PyResult<()> {
        if !std::mem::replace(&mut self.state(py).reader_watched, false) {
            return Ok(());
        }
        self.call_loop(py, "_remove_reader", None)
    }

    /// Starts watching for writability, unless already watching.
    fn watch_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if std::mem::replace(&mut this.state(py).writer_watched, true) {
            return Ok(());
        }
        let callback = slf.getattr(pyo3::intern!(slf.py(), "_sendto_ready"))?;
        this.call_loop(slf.py(), "_add_writer", Some(callback))
    }

    /// Stops watching for writability.
    fn unwatch_writing(&self, py: Python<'_>) -> PyResult<()> {
        if !std::mem::replace(&mut self.state(py).writer_watched, false) {
            return Ok(());
        }
        self.call_loop(py, "_remove_writer", None)
    }

    /// Schedules `transport._call_connection_lost(exc)` with `call_soon`.
    fn schedule_connection_lost(
        &self,
        py: Python<'_>,
        exc: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (Some(transport), Some(event_loop)) =
            (self.python_transport(py), self.shared.loop_object(py))
        else {
            return Ok(());
        };
        let callback = transport.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        event_loop.call_method1(pyo3::intern!(py, "call_soon"), (callback, exc)).map(drop)
    }

    /// Calls `transport.<method>(*args)` on the Python half (flow control, fatal errors).
    fn upcall<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<()> {
        match self.python_transport(py) {
            Some(transport) => transport.call_method1(method, args).map(drop),
            None => Ok(()),
        }
    }

    /// The Python address of a sender: the last one's tuple again if it is the same sender.
    fn sender_address<'py>(
        &self,
        py: Python<'py>,
        raw: &RawAddress,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if let Some((last, address)) = &self.state(py).last_sender {
            if last.same_as(raw) {
                return Ok(Some(address.bind(py).clone()));
            }
        }
        let Some(address) = raw.python_address(py)? else { return Ok(None) };
        let previous = self.state(py).last_sender.replace((*raw, address.clone().unbind()));
        drop(previous);
        Ok(Some(address))
    }

    /// The kernel form of `address` if it is converted natively: the last sender's tuple,
    /// the last destination again, or a numeric address.
    fn destination(&self, py: Python<'_>, address: &Bound<'_, PyAny>) -> Option<RawAddress> {
        {
            let state = self.state(py);
            if let Some((raw, sender)) = &state.last_sender {
                if sender.is(address) {
                    return Some(*raw);
                }
            }
            if let Some((destination, raw)) = &state.last_destination {
                if destination.is(address) {
                    return Some(*raw);
                }
            }
        }
        let raw = RawAddress::from_python(self.family, address)?;
        let previous = self.state(py).last_destination.replace((address.clone().unbind(), raw));
        drop(previous);
        Some(raw)
    }

    /// Sends one datagram now: `send` on a connected socket, else `sendto` (natively, or by
    /// the Python socket for addresses only Python converts).
    fn send_one(
        &self,
        py: Python<'_>,
        data: &[u8],
        address: Option<&Bound<'_, PyAny>>,
        data_object: &Bound<'_, PyAny>,
    ) -> PyResult<SendOutcome> {
        let native = match (self.connected, address) {
            (true, _) => Some(None),
            (false, Some(address)) => self.destination(py, address).map(Some),
            (false, None) => None,
        };
        let Some(raw) = native else {
            return self.send_by_python(py, data_object, address);
        };
        loop {
            // SAFETY: `data` is a live buffer of its length; `raw` (if any) is a valid
            // address of its length; `fd` is open until the transport is detached.
            let sent = unsafe {
                match &raw {
                    None => {
                        libc::send(self.fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL)
                    }
                    Some(raw) => libc::sendto(
                        self.fd,
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                        raw.as_ptr(),
                        raw.len,
                    ),
                }
            };
            if sent >= 0 {
                return Ok(SendOutcome::Sent);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(SendOutcome::WouldBlock),
                _ => return Ok(SendOutcome::Failed(os_error(err))),
            }
        }
    }

    /// `sock.sendto(data, address)` by the Python socket (host names, unusual forms, and
    /// the errors Python gives for bad addresses).
    fn send_by_python(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<SendOutcome> {
        let Some(sock) = self.state(py).sock.as_ref().map(|s| s.bind(py).clone()) else {
            return Ok(SendOutcome::Sent);
        };
        let result = match address {
            Some(address) => sock.call_method1(pyo3::intern!(py, "sendto"), (data, address)),
            None => sock.call_method1(pyo3::intern!(py, "sendto"), (data, py.None())),
        };
        match result {
            Ok(_) => Ok(SendOutcome::Sent),
            Err(err)
                if err.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                    || err.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) =>
            {
                Ok(SendOutcome::WouldBlock)
            }
            // OSErrors go to error_received, anything else is fatal: `report` decides.
            Err(err) => Ok(SendOutcome::Failed(err)),
        }
    }

    /// An error of a send or receive: `OSError`s go to `error_received`, anything else is a
    /// fatal error of the transport (asyncio's rules).
    fn report(&self, py: Python<'_>, error: PyErr, fatal_message: &str) -> PyResult<()> {
        if is_fatal(py, &error) {
            return Err(error);
        }
        if error.is_instance_of::<pyo3::exceptions::PyOSError>(py) {
            if let Some(protocol) = self.protocol(py) {
                protocol.call_method1(pyo3::intern!(py, "error_received"), (error.value(py),))?;
            }
            return Ok(());
        }
        self.upcall(py, "_fatal_error", (error.value(py), fatal_message))
    }

    /// Receives one datagram natively; None if the socket's family is converted only by
    /// Python.
    fn receive<'py>(&self, py: Python<'py>) -> PyResult<Option<io::Result<Datagram<'py>>>> {
        let mut raw = RawAddress::empty();
        let received = self.shared.with_read_buffer(py, |buffer| {
            let (address, length) = raw.as_mut_parts();
            // SAFETY: `buffer` is writable for its length; `address`/`length` describe `raw`'s
            // storage; `fd` is open until the transport is detached.
            let n = unsafe {
                libc::recvfrom(
                    self.fd,
                    buffer.as_mut_ptr().cast(),
                    buffer.len().min(MAX_READ),
                    0,
                    address,
                    length,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(PyBytes::new(py, &buffer[..n as usize]))
            }
        });
        let data = match received {
            Ok(data) => data,
            Err(err) => return Ok(Some(Err(err))),
        };
        match self.sender_address(py, &raw)? {
            Some(address) => Ok(Some(Ok((data, address)))),
            None => Ok(None),
        }
    }

    /// `sock.recvfrom(max_size)` by the Python socket (families converted only by Python).
    fn receive_by_python<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        let Some(sock) = self.state(py).sock.as_ref().map(|s| s.bind(py).clone()) else {
            return Ok(None);
        };
        let (data, address): (Bound<'py, PyAny>, Bound<'py, PyAny>) =
            sock.call_method1(pyo3::intern!(py, "recvfrom"), (MAX_READ,))?.extract()?;
        Ok(Some((data, address)))
    }

    /// Receives one datagram and hands it to `datagram_received`; false when there was none
    /// (or an error was reported).
    fn read_one(&self, py: Python<'_>) -> PyResult<bool> {
        let Some(protocol) = self.protocol(py) else { return Ok(false) };
        let received = match self.receive(py)? {
            Some(Ok((data, address))) => (data.into_any(), address),
            Some(Err(err)) => {
                return match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
                    _ => self
                        .report(py, os_error(err), "Fatal read error on datagram transport")
                        .map(|()| false),
                };
            }
            None => match self.receive_by_python(py) {
                Ok(Some(received)) => received,
                Ok(None) => return Ok(false),
                Err(err)
                    if err.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                        || err.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) =>
                {
                    return Ok(false)
                }
                Err(err) => {
                    return self
                        .report(py, err, "Fatal read error on datagram transport")
                        .map(|()| false)
                }
            },
        };
        protocol.call_method1(pyo3::intern!(py, "datagram_received"), received)?;
        Ok(true)
    }

    /// Forgets the protocol, the Python objects and the buffer (breaks reference cycles).
    fn abandon(&self, py: Python<'_>) {
        let dropped = {
            let mut state = self.state(py);
            state.buffer_size = 0;
            (
                state.protocol.take(),
                state.transport.take(),
                state.sock.take(),
                state.remote.take(),
                std::mem::take(&mut state.buffer),
                state.last_sender.take(),
                state.last_destination.take(),
            )
        };
        drop(dropped);
    }
}

#[pymethods]
impl DatagramTransport {
    /// The native half for `sock` (a datagram socket) on `loop`, delivering to `protocol`;
    /// `transport` is the Python half; `remote` the endpoint's `remote_addr` (or None);
    /// `connected` whether the socket has a peer. Reading starts with `_start_reading()`.
    #[new]
    fn py_new(
        event_loop: &Bound<'_, LoopCore>,
        sock: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        transport: Bound<'_, PyAny>,
        remote: Option<Bound<'_, PyAny>>,
        connected: bool,
    ) -> PyResult<Self> {
        let py = event_loop.py();
        let shared = LoopCore::shared_for_transport(event_loop)?;
        let fd: RawFd = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
        let family: libc::c_int = sock.getattr(pyo3::intern!(py, "family"))?.extract()?;
        Ok(DatagramTransport {
            fd,
            family,
            connected,
            rules: DatagramRules::for_running_python(py),
            shared,
            state: GilCell::new(DatagramState {
                protocol: Some(protocol.unbind()),
                transport: Some(transport.unbind()),
                sock: Some(sock.unbind()),
                remote: remote.map(Bound::unbind),
                buffer: VecDeque::new(),
                buffer_size: 0,
                closing: false,
                conn_lost: 0,
                reading_paused: false,
                reader_watched: false,
                writer_watched: false,
                last_sender: None,
                last_destination: None,
            }),
        })
    }

    /// Starts reading (scheduled by the Python half after `connection_made`).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::watch_reading(slf)
    }

    /// The socket is readable: receive datagrams and hand each to `datagram_received`, up to
    /// [`DATAGRAMS_PER_EVENT`] or until none is left (as libuv does; asyncio takes one per
    /// iteration, which costs a poll per datagram under load).
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        for _ in 0..DATAGRAMS_PER_EVENT {
            {
                let state = self.state(py);
                // The protocol may have paused or closed the transport meanwhile.
                if state.conn_lost > 0 || !state.reader_watched {
                    return Ok(());
                }
            }
            if !self.read_one(py)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `transport.sendto(data, addr=None)`: send now if nothing is buffered, else (or if the
    /// kernel is full) buffer a copy and send it when the socket is writable.
    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let length = data.len()?;
        if length == 0 && !this.rules.sends_empty {
            return Ok(());
        }
        let mut address = addr.filter(|a| !a.is_none());
        let (remote, conn_lost, buffered) = {
            let state = this.state(py);
            (
                state.remote.as_ref().map(|r| r.bind(py).clone()),
                state.conn_lost,
                !state.buffer.is_empty(),
            )
        };
        if let Some(remote) = remote.filter(|r| r.is_truthy().unwrap_or(true)) {
            if let Some(given) = &address {
                if !given.is(&remote) && !given.eq(&remote)? {
                    return Err(PyValueError::new_err(format!(
                        "Invalid address: must be None or {}",
                        remote.str()?
                    )));
                }
            }
            address = Some(remote);
            if conn_lost > 0 {
                if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                    warn_log(py, "socket.send() raised exception.")?;
                }
                this.state(py).conn_lost += 1;
                return Ok(());
            }
        }
        if conn_lost > 0 {
            return Ok(()); // the socket is closed: nothing can be sent any more
        }
        if !buffered {
            let outcome = match data.cast::<PyBytes>() {
                Ok(bytes) => this.send_one(py, bytes.as_bytes(), address.as_ref(), data)?,
                Err(_) => {
                    with_buffer(data, |view| this.send_one(py, view, address.as_ref(), data))??
                }
            };
            match outcome {
                SendOutcome::Sent => return Ok(()),
                SendOutcome::Failed(error) => {
                    return this.report(py, error, "Fatal write error on datagram transport")
                }
                SendOutcome::WouldBlock => Self::watch_writing(slf)?,
            }
        }
        // Buffered: an immutable copy (bytes are kept as they are).
        let copy = match data.cast::<PyBytes>() {
            Ok(bytes) => bytes.clone().unbind(),
            Err(_) => with_buffer(data, |view| PyBytes::new(py, view).unbind())?,
        };
        {
            let mut state = this.state(py);
            state.buffer.push_back(Queued { data: copy, address: address.map(Bound::unbind) });
            state.buffer_size += length + this.rules.header_size;
        }
        this.upcall(py, "_maybe_pause_protocol", ())
    }

    /// The socket is writable: send what is buffered, in order.
    fn _sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let Some(queued) = this.state(py).buffer.pop_front() else { break };
            let data = queued.data.bind(py);
            let address = queued.address.as_ref().map(|a| a.bind(py).clone());
            let outcome = this.send_one(py, data.as_bytes(), address.as_ref(), data.as_any())?;
            match outcome {
                SendOutcome::Sent => {
                    this.state(py).buffer_size -= data.as_bytes().len() + this.rules.header_size
                }
                SendOutcome::WouldBlock => {
                    this.state(py).buffer.push_front(queued);
                    break;
                }
                SendOutcome::Failed(error) => {
                    this.state(py).buffer_size -= data.as_bytes().len() + this.rules.header_size;
                    return this.report(py, error, "Fatal write error on datagram transport");
                }
            }
        }
        this.upcall(py, "_maybe_resume_protocol", ())?;
        let (empty, closing) = {
            let state = this.state(py);
            (state.buffer.is_empty(), state.closing)
        };
        if empty {
            this.unwatch_writing(py)?;
            if closing {
                this.upcall(py, "_call_connection_lost", (py.None(),))?;
            }
        }
        Ok(())
    }

    /// Bytes buffered, waiting for the kernel.
    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state(py).buffer_size
    }

    /// Whether the transport is closing or closed.
    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state(py).closing
    }

    /// Whether datagrams are delivered (not paused, not closing).
    fn is_reading(&self, py: Python<'_>) -> bool {
        let state = self.state(py);
        !state.reading_paused && !state.closing
    }

    /// Stops delivering datagrams until `resume_reading()`.
    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut state = self.state(py);
            if state.closing || state.reading_paused {
                return Ok(());
            }
            state.reading_paused = true;
        }
        self.unwatch_reading(py)?;
        if self.shared.debug_enabled() {
            if let Some(transport) = self.python_transport(py) {
                debug_log(py, "%r pauses reading", &transport)?;
            }
        }
        Ok(())
    }

    /// Delivers datagrams again after `pause_reading()`.
    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut state = this.state(py);
            if state.closing || !state.reading_paused {
                return Ok(());
            }
            state.reading_paused = false;
        }
        Self::watch_reading(slf)?;
        if this.shared.debug_enabled() {
            if let Some(transport) = this.python_transport(py) {
                debug_log(py, "%r resumes reading", &transport)?;
            }
        }
        Ok(())
    }

    /// `close()`: stop reading; lose the connection once the buffer is sent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let lose_now = {
            let mut state = self.state(py);
            if state.closing {
                return Ok(());
            }
            state.closing = true;
            let lose_now = state.buffer.is_empty();
            if lose_now {
                state.conn_lost += 1;
            }
            lose_now
        };
        self.unwatch_reading(py)?;
        if lose_now {
            self.schedule_connection_lost(py, None)?;
        }
        Ok(())
    }

    /// asyncio's `_force_close(exc)` (and `abort()` with None): drop the buffer and lose the
    /// connection now, unless it is already lost.
    #[pyo3(signature = (exc=None))]
    fn force_close(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let dropped = {
            let mut state = self.state(py);
            if state.conn_lost > 0 {
                return Ok(());
            }
            state.closing = true;
            state.conn_lost += 1;
            state.buffer_size = 0;
            std::mem::take(&mut state.buffer)
        };
        drop(dropped);
        self.unwatch_writing(py)?;
        self.unwatch_reading(py)?;
        self.schedule_connection_lost(py, exc)
    }

    /// Sets the protocol that receives the following events.
    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) {
        let old = self.state(py).protocol.replace(protocol.unbind());
        drop(old);
    }

    /// The current protocol (None once the transport is done).
    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state(py).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// asyncio's `_conn_lost`.
    #[getter]
    fn conn_lost(&self, py: Python<'_>) -> u32 {
        self.state(py).conn_lost
    }

    /// Whether the loop watches the socket for reading / writing now.
    #[getter]
    fn reading_watched(&self, py: Python<'_>) -> bool {
        self.state(py).reader_watched
    }

    #[getter]
    fn writing_watched(&self, py: Python<'_>) -> bool {
        self.state(py).writer_watched
    }

    /// Stops watching and forgets the Python objects: called by the Python half right
    /// before it closes the socket.
    fn detach(&self, py: Python<'_>) -> PyResult<()> {
        let result = self.unwatch_writing(py).and_then(|()| self.unwatch_reading(py));
        self.abandon(py);
        result
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the collector calls `tp_traverse` with the GIL held; the token only
        // borrows the state.
        let py = unsafe { Python::assume_attached() };
        if let Some(state) = self.state.try_borrow_mut(py) {
            for object in [&state.protocol, &state.transport, &state.sock, &state.remote]
                .into_iter()
                .flatten()
            {
                visit.call(object)?;
            }
            for queued in &state.buffer {
                visit.call(&queued.data)?;
                if let Some(address) = &queued.address {
                    visit.call(address)?;
                }
            }
            if let Some((_, address)) = &state.last_sender {
                visit.call(address)?;
            }
            if let Some((address, _)) = &state.last_destination {
                visit.call(address)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        self.abandon(py);
    }
}
