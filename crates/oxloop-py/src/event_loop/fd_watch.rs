//! Watching file descriptors: `add_reader`/`add_writer` callbacks ([`FdCallbacks`]), what a
//! change of watches takes out ([`Unwatched`]), the registration of stream transports with the
//! reactor, and what a readiness event queues.
//!
//! Invariants:
//! - The loop never owns a watched descriptor: `add_reader` callers keep theirs open and
//!   remove them before closing; a stream transport's socket is owned by the transport, which
//!   unregisters it before closing it (`stream.rs`). The loop owns only its epoll instance and
//!   its wakeup pipe's watch.
//! - `add_reader`/`add_writer` descriptors are watched level-triggered; stream transports'
//!   edge-triggered, for reading always and for writing only while a send would block.
//! - A descriptor closed while watched is noticed when its number is watched again: the old
//!   entry's callbacks are stale and are cancelled.
//! - What a change takes out of the bookkeeping (callbacks, file objects) is cancelled and
//!   dropped after the state borrow ends: cancelling calls into Python, and dropping a file
//!   object can run its finalizer.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use oxloop_core::reactor::{Readiness, Trigger, Watch};
use pyo3::exceptions::{PyAttributeError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

use super::state::{FdCallbacks, LoopShared, LoopState, Runnable};
use super::LoopCore;
use crate::glue::os_error;
use crate::handles::Handle;
use crate::stream::StreamTransport;

impl FdCallbacks {
    /// The callback slot of one side.
    fn slot(&mut self, side: Side) -> &mut Option<Py<Handle>> {
        match side {
            Side::Read => &mut self.reader,
            Side::Write => &mut self.writer,
        }
    }

    /// Whether a callback watches one side.
    fn watches(&self, side: Side) -> bool {
        match side {
            Side::Read => self.reader.is_some(),
            Side::Write => self.writer.is_some(),
        }
    }
}

/// What a change of fd watches took out of the loop's bookkeeping. The caller cancels and
/// drops it after the state borrow ends (cancelling calls into Python, and dropping the last
/// reference to a file object can run its finalizer).
#[must_use]
#[derive(Default)]
struct Unwatched {
    /// The callback the change replaced on its own side.
    replaced: Option<Py<Handle>>,
    /// Callbacks left by a descriptor that was closed while watched: its number names another
    /// file now, and they can never fire for theirs.
    stale: Vec<Py<Handle>>,
    /// File objects whose entries are gone.
    fileobjs: Vec<Py<PyAny>>,
}

impl Unwatched {
    /// Takes a whole entry out as stale.
    fn add_stale(&mut self, entry: FdCallbacks) {
        self.stale.extend(entry.reader.into_iter().chain(entry.writer));
        self.fileobjs.push(entry.fileobj);
    }

    /// Cancels the callbacks taken out; whether one was replaced on the changed side.
    fn cancel(self, py: Python<'_>) -> PyResult<bool> {
        let replaced = self.replaced.is_some();
        for handle in self.replaced.iter().chain(&self.stale) {
            handle.bind(py).call_method0("cancel")?;
        }
        Ok(replaced)
    }

    /// Moves everything into `released`, to be dropped after the borrow (for callbacks that
    /// are cancelled already).
    fn release_into(self, released: &mut Vec<Py<PyAny>>) {
        released.extend(self.replaced.into_iter().chain(self.stale).map(Py::into_any));
        released.extend(self.fileobjs);
    }
}

/// Which side of an fd a callback watches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Readability (`add_reader`).
    Read,
    /// Writability (`add_writer`).
    Write,
}

impl LoopState {
    /// Sets (`new`: the handle and the file object it was registered with) or clears the
    /// callback on one side of `fd` and updates the epoll watch. What the change takes out
    /// goes to `unwatched`, whether it succeeds or not.
    ///
    /// A descriptor closed while watched is noticed here when a new file with its number is
    /// watched: epoll dropped the old file (so the registrar no longer knows the fd, or epoll
    /// refuses to modify it), and the entry's callbacks are stale. They are taken out and the
    /// new file is watched for the new callback alone.
    fn set_fd_callback(
        &mut self,
        fd: RawFd,
        side: Side,
        new: Option<(Py<Handle>, &Bound<'_, PyAny>)>,
        unwatched: &mut Unwatched,
    ) -> PyResult<()> {
        let Some(registrar) = self.registrar.as_mut() else {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        let adding = new.is_some();
        if adding && !registrar.is_watched(fd) {
            if let Some(stale) = self.fd_callbacks.remove(&fd) {
                unwatched.add_stale(stale);
            }
        }
        let entry = match new {
            // An existing entry keeps its file object; the caller holds the one given, so the
            // unused reference dropped here only decrements it.
            Some((handle, fileobj)) => {
                let entry = self.fd_callbacks.entry(fd).or_insert_with(|| FdCallbacks {
                    fileobj: fileobj.clone().unbind(),
                    reader: None,
                    writer: None,
                });
                unwatched.replaced = entry.slot(side).replace(handle);
                entry
            }
            None => match self.fd_callbacks.get_mut(&fd) {
                Some(entry) => {
                    unwatched.replaced = entry.slot(side).take();
                    entry
                }
                None => return Ok(()),
            },
        };
        let watch = |entry: &FdCallbacks| Watch {
            readable: entry.reader.is_some(),
            writable: entry.writer.is_some(),
            trigger: Trigger::Level,
        };
        let mut result = registrar.set_watch(fd, watch(entry));
        if adding && result.is_err() && !registrar.is_watched(fd) {
            // Closed while watched (see above): what else the entry held is stale.
            let other = match side {
                Side::Read => entry.writer.take(),
                Side::Write => entry.reader.take(),
            };
            unwatched.stale.extend(other.into_iter().chain(unwatched.replaced.take()));
            result = registrar.set_watch(fd, watch(entry));
        }
        if result.is_err() && !adding && !registrar.is_watched(fd) {
            // Removing one side of a descriptor closed while watched: nothing is left to
            // modify. The other side stays in the bookkeeping until it is removed too.
            result = Ok(());
        }
        if result.is_err() {
            // Undo the bookkeeping. The caller still holds the rejected handle, so dropping it
            // here only decrements it. (Stale callbacks stay out: they can never fire.)
            let _rejected = std::mem::replace(entry.slot(side), unwatched.replaced.take());
        }
        if !entry.watches(Side::Read) && !entry.watches(Side::Write) {
            if let Some(gone) = self.fd_callbacks.remove(&fd) {
                unwatched.fileobjs.push(gone.fileobj);
            }
        }
        result.map_err(os_error)
    }

    /// The descriptor a file object that no longer has one (it was closed) was registered
    /// with, found by identity as asyncio's selector finds it.
    fn fd_registered_for(&self, fileobj: &Bound<'_, PyAny>) -> Option<RawFd> {
        self.fd_callbacks.iter().find(|(_, entry)| entry.fileobj.is(fileobj)).map(|(&fd, _)| fd)
    }

    /// Whether a stale entry (of a descriptor closed while watched) is all that holds `fd`:
    /// if so it is taken out into `unwatched`.
    fn discard_if_stale(&mut self, fd: RawFd, unwatched: &mut Unwatched) {
        let Some(registrar) = self.registrar.as_mut() else { return };
        if self.fd_callbacks.contains_key(&fd) && !registrar.confirm(fd) {
            if let Some(stale) = self.fd_callbacks.remove(&fd) {
                unwatched.add_stale(stale);
            }
        }
    }

    /// Queues the callbacks of one readiness event (asyncio's `_process_events`): a cancelled
    /// watcher is removed instead. Puts what to release after the borrow in `released`.
    pub(super) fn dispatch_io(
        &mut self,
        py: Python<'_>,
        event: Readiness,
        released: &mut Vec<Py<PyAny>>,
    ) {
        if Some(event.fd) == self.wakeup_reader {
            drain(event.fd);
            return;
        }
        if let Some(stream) = self.streams.get(&event.fd) {
            let transport = stream.get();
            if event.read_closed {
                transport.note_peer_closed();
            }
            if event.readable && transport.wants_readable_event() {
                self.ready.push(Runnable::StreamRead(stream.clone_ref(py)));
            }
            if event.writable && transport.wants_writable_event() {
                self.ready.push(Runnable::StreamWrite(stream.clone_ref(py)));
            }
            return;
        }
        let Some(entry) = self.fd_callbacks.get(&event.fd) else { return };
        let mut remove = [false, false];
        for (side, ready, handle) in
            [(0, event.readable, &entry.reader), (1, event.writable, &entry.writer)]
        {
            if let (true, Some(handle)) = (ready, handle) {
                if handle.get().is_cancelled() {
                    remove[side] = true;
                } else {
                    self.ready.push(Runnable::Callback(handle.clone_ref(py)));
                }
            }
        }
        for (side, remove) in [(Side::Read, remove[0]), (Side::Write, remove[1])] {
            if remove {
                let mut unwatched = Unwatched::default();
                // Removing only fails once the loop is closed, and a closed loop polls nothing.
                let _ = self.set_fd_callback(event.fd, side, None, &mut unwatched);
                unwatched.release_into(released);
            }
        }
    }
}

/// Reads and discards everything readable on a non-blocking `fd`.
fn drain(fd: RawFd) {
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: `buf` is a valid writable buffer of the given length; `fd` is the loop's own
        // wakeup pipe, open while registered.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            continue;
        }
        // End of file, EAGAIN (drained) or a real error: stop; only EINTR retries.
        if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

impl LoopShared {
    /// Registers a stream transport's descriptor: watched edge-triggered for reading (and
    /// for writing only while a send would block: see [`Self::watch_stream_writable`]).
    pub(crate) fn register_stream(
        &self,
        py: Python<'_>,
        fd: RawFd,
        transport: Py<StreamTransport>,
    ) -> PyResult<()> {
        let mut stale = Unwatched::default();
        let registered = {
            let mut state = self.state(py);
            state.discard_if_stale(fd, &mut stale);
            if state.fd_callbacks.contains_key(&fd) || state.streams.contains_key(&fd) {
                Err(PyRuntimeError::new_err(format!(
                    "File descriptor {fd} is already watched by the loop"
                )))
            } else {
                match state.registrar.as_mut() {
                    None => Err(PyRuntimeError::new_err("Event loop is closed")),
                    Some(registrar) => registrar
                        .set_watch(
                            fd,
                            Watch { readable: true, writable: false, trigger: Trigger::Edge },
                        )
                        .map_err(os_error),
                }
                .map(|()| state.streams.insert(fd, transport.clone_ref(py)))
            }
        };
        drop(transport);
        stale.cancel(py)?;
        registered.map(drop)
    }

    /// Adds or removes writability to a stream transport's watch. Writability is watched only
    /// while a send would block, as libuv does: a socket watched for it all the time wakes
    /// the poller each time the peer's acknowledgements free buffer space.
    pub(crate) fn watch_stream_writable(
        &self,
        py: Python<'_>,
        fd: RawFd,
        writable: bool,
    ) -> PyResult<()> {
        let mut state = self.state(py);
        if !state.streams.contains_key(&fd) {
            return Ok(());
        }
        let Some(registrar) = state.registrar.as_mut() else { return Ok(()) };
        registrar
            .set_watch(fd, Watch { readable: true, writable, trigger: Trigger::Edge })
            .map_err(os_error)
    }

    /// Stops watching a stream transport's descriptor; returns the loop's reference to the
    /// transport (to be dropped by the caller, after the borrow).
    pub(crate) fn unregister_stream(
        &self,
        py: Python<'_>,
        fd: RawFd,
    ) -> Option<Py<StreamTransport>> {
        let mut state = self.state(py);
        let transport = state.streams.remove(&fd)?;
        if let Some(registrar) = state.registrar.as_mut() {
            registrar.unwatch(fd);
        }
        Some(transport)
    }

    /// The stream transport using `fd`, if any.
    fn stream_on(&self, py: Python<'_>, fd: RawFd) -> Option<Py<StreamTransport>> {
        self.state(py).streams.get(&fd).map(|t| t.clone_ref(py))
    }
}

impl LoopCore {
    /// asyncio's `_ensure_fd_no_transport`: the fd must not belong to a transport, native
    /// (a stream transport: it keeps its watch until it has flushed and lost its connection,
    /// so its fd stays taken until then) or Python (in the loop's `_transports`, as asyncio
    /// keeps them: taken until the transport is closing).
    pub(super) fn ensure_fd_no_transport(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        fd: RawFd,
    ) -> PyResult<()> {
        let py = slf.py();
        let owner = match slf.get().shared.stream_on(py, fd) {
            Some(transport) => Some(match transport.get().python_transport(py) {
                Some(owner) => owner.bind(py).repr()?.to_string(),
                None => "<closed transport>".to_owned(),
            }),
            None => match slf
                .getattr(pyo3::intern!(py, "_transports"))?
                .call_method1(pyo3::intern!(py, "get"), (fd,))?
            {
                transport if transport.is_none() => None,
                transport
                    if transport.call_method0(pyo3::intern!(py, "is_closing"))?.is_truthy()? =>
                {
                    None
                }
                transport => Some(transport.repr()?.to_string()),
            },
        };
        match owner {
            Some(owner) => Err(PyRuntimeError::new_err(format!(
                "File descriptor {} is used by transport {owner}",
                fileobj.repr()?
            ))),
            None => Ok(()),
        }
    }

    /// `add_reader`/`add_writer` (`checked`: refused for a transport's fd, as the public
    /// methods are; the loop's own callers, like asyncio's `_add_reader`, are not checked).
    pub(super) fn add_fd_callback(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        side: Side,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        checked: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let fd = fileobj_to_fd(fileobj)?;
        if checked {
            Self::ensure_fd_no_transport(slf, fileobj, fd)?;
        }
        let handle = Self::new_handle(slf, callback, args, None, false, None)?;
        let mut unwatched = Unwatched::default();
        let added = this.state(py).set_fd_callback(
            fd,
            side,
            Some((handle.clone_ref(py), fileobj)),
            &mut unwatched,
        );
        unwatched.cancel(py)?;
        added.map(|()| handle)
    }

    /// `remove_reader`/`remove_writer`: whether a callback was registered (`checked` as for
    /// [`Self::add_fd_callback`]). A file object closed since it was registered is found by
    /// identity, as asyncio's selector finds it.
    pub(super) fn remove_fd_callback(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        side: Side,
        checked: bool,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        let fd = match fileobj_to_fd(fileobj) {
            Ok(fd) => {
                if checked {
                    Self::ensure_fd_no_transport(slf, fileobj, fd)?;
                }
                fd
            }
            // (asyncio checks a closed file object's transports under its fd, -1: none.)
            Err(err) if err.is_instance_of::<PyValueError>(py) => {
                this.state(py).fd_registered_for(fileobj).ok_or(err)?
            }
            Err(err) => return Err(err),
        };
        let mut unwatched = Unwatched::default();
        let removed = {
            let mut state = this.state(py);
            if !state.fd_callbacks.get(&fd).is_some_and(|entry| entry.watches(side)) {
                return Ok(false);
            }
            state.set_fd_callback(fd, side, None, &mut unwatched)
        };
        let was_registered = unwatched.cancel(py)?;
        removed.map(|()| was_registered)
    }
}

/// selectors' `_fileobj_to_fd`: an int, or an object whose `fileno()` gives one.
pub(super) fn fileobj_to_fd(fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = fileobj.py();
    let fd: i64 = if fileobj.is_instance_of::<PyInt>() {
        fileobj.extract()?
    } else {
        let number = fileobj
            .call_method0("fileno")
            .and_then(|n| py.get_type::<PyInt>().call1((n,)))
            .and_then(|n| n.extract::<i64>());
        match number {
            Ok(fd) => fd,
            Err(err)
                if err.is_instance_of::<PyAttributeError>(py)
                    || err.is_instance_of::<PyTypeError>(py)
                    || err.is_instance_of::<PyValueError>(py) =>
            {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    fileobj.repr()?
                )));
            }
            Err(err) => return Err(err),
        }
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}
