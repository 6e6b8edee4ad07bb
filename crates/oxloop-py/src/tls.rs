//! The per-record path of TLS: native methods for `oxloop._tls.TLSProtocol` (a subclass of
//! asyncio's `SSLProtocol`) and its application transport.
//!
//! asyncio's `SSLProtocol` runs TLS in memory (`ssl.MemoryBIO` + `SSLObject`) on top of a
//! plain transport. Its state machine (handshake, shutdown, timeouts, errors) runs a few
//! times per connection and stays asyncio's Python. What runs per record is here, as method
//! descriptors installed on the subclasses (`get_buffer`, `buffer_updated`, and the app
//! transport's `write`): feeding received bytes to the TLS object, decrypting every complete
//! record straight into one `bytes` for `data_received`, encrypting a write and handing the
//! records to the socket transport, and the flow-control checks, which call back into
//! asyncio's Python methods only when a threshold is crossed. Whenever the protocol is not
//! in the plain "wrapped" state (handshake, flushing, shutdown, paused reading, a buffered
//! application protocol, a write backlog), the same steps are asyncio's own Python methods.
//!
//! The methods read the protocol's attributes by asyncio's names (`_incoming`, `_sslobj`,
//! `_state`...); `oxloop._tls` checks at import that asyncio's `SSLProtocol` has them and
//! falls back to the stock class otherwise.
//!
//! Invariants: CPython calls these functions with the GIL held (they are installed from the
//! tables [`PROTOCOL_METHODS`] and [`APP_TRANSPORT_METHODS`]); the method definitions are
//! leaked so they live as long as the classes; a Rust panic becomes a `PanicException`,
//! never an unwind into C. Nothing here owns a file descriptor.

use std::ffi::{c_char, c_int};

use pyo3::exceptions::{PyAttributeError, PyException, PyOverflowError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::glue::_PyBytes_Resize;
use crate::method_table::{install_methods, one_argument_entry, MethodEntry, NativeMethod};
use crate::stream::StreamTransport;

/// asyncio's `SSLProtocolState.WRAPPED` and `SSLAgainErrors`, given at installation.
struct TlsConstants {
    wrapped: Py<PyAny>,
    again_errors: Py<PyAny>,
    /// asyncio's `SSLProtocol` (whose Python methods handle the other cases).
    base: Py<PyType>,
}

static CONSTANTS: PyOnceLock<TlsConstants> = PyOnceLock::new();

fn constants(py: Python<'_>) -> PyResult<&TlsConstants> {
    CONSTANTS.get(py).ok_or_else(|| PyTypeError::new_err("oxloop TLS methods are not installed"))
}

/// An object's instance attributes, read straight from its `__dict__`. asyncio's
/// application transport keeps its state there and defines no descriptors of those names, so
/// this reads the same values as `getattr` while skipping the lookup in the type, which is
/// most of `getattr`'s cost.
struct InstanceDict<'py>(Bound<'py, PyDict>);

impl<'py> InstanceDict<'py> {
    /// The `__dict__` of `object`.
    fn of(object: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = object.py();
        // SAFETY: the GIL is held; `object` is alive; the call returns a new reference or
        // NULL with an exception set.
        let dict = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyObject_GenericGetDict(object.as_ptr(), std::ptr::null_mut()),
            )?
        };
        Ok(InstanceDict(dict.cast_into::<PyDict>()?))
    }

    /// The attribute `name` (AttributeError if it is not set).
    fn get(&self, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        self.0.get_item(name)?.ok_or_else(|| PyAttributeError::new_err(name.to_string()))
    }
}

/// The attributes of asyncio's `SSLProtocol` that the record path reads, held natively:
/// `oxloop._tls.TLSProtocol` has this class as its first base, so asyncio's code, which sets
/// and reads them by their usual names (`self._state = ...`), goes through these fields'
/// descriptors, and the native methods read them without a dictionary lookup. Two values are
/// derived when set: the `_ssl._SSLSocket` inside `_sslobj`, and the native half of
/// `_transport` when it is an oxloop stream transport.
///
/// The fields are borrowed only to copy them out, never across a call into Python (which may
/// set them).
#[pyclass(subclass, module = "oxloop._core")]
pub(crate) struct TlsProtocolState {
    #[pyo3(get, set, name = "_state")]
    state: Py<PyAny>,
    #[pyo3(get, set, name = "_incoming")]
    incoming: Py<PyAny>,
    #[pyo3(get, set, name = "_outgoing")]
    outgoing: Py<PyAny>,
    #[pyo3(get, name = "_sslobj")]
    ssl_object: Py<PyAny>,
    /// `_sslobj._sslobj`, the `_ssl._SSLSocket` doing the work (None without one).
    ssl_socket: Option<Py<PyAny>>,
    #[pyo3(get, set, name = "_app_protocol")]
    app_protocol: Py<PyAny>,
    #[pyo3(get, set, name = "_app_protocol_is_buffer")]
    app_protocol_is_buffer: bool,
    #[pyo3(get, set, name = "_app_reading_paused")]
    app_reading_paused: bool,
    #[pyo3(get, set, name = "_app_writing_paused")]
    app_writing_paused: bool,
    #[pyo3(get, set, name = "_ssl_reading_paused")]
    ssl_reading_paused: bool,
    #[pyo3(get, set, name = "_ssl_writing_paused")]
    ssl_writing_paused: bool,
    #[pyo3(get, set, name = "_write_backlog")]
    write_backlog: Py<PyAny>,
    #[pyo3(get, set, name = "_write_buffer_size")]
    write_buffer_size: usize,
    #[pyo3(get, name = "_transport")]
    transport: Py<PyAny>,
    /// The native half of `_transport`, when it is an oxloop stream transport.
    transport_core: Option<Py<StreamTransport>>,
    #[pyo3(get, set, name = "_ssl_buffer")]
    ssl_buffer: Py<PyAny>,
    #[pyo3(get, set, name = "_ssl_buffer_view")]
    ssl_buffer_view: Py<PyAny>,
    #[pyo3(get, set, name = "_incoming_high_water")]
    incoming_high_water: usize,
    #[pyo3(get, set, name = "_incoming_low_water")]
    incoming_low_water: usize,
    #[pyo3(get, set, name = "_outgoing_high_water")]
    outgoing_high_water: usize,
    #[pyo3(get, set, name = "_outgoing_low_water")]
    outgoing_low_water: usize,
}

impl TlsProtocolState {
    /// Every field None, False or 0.
    fn empty(py: Python<'_>) -> Self {
        TlsProtocolState {
            state: py.None(),
            incoming: py.None(),
            outgoing: py.None(),
            ssl_object: py.None(),
            ssl_socket: None,
            app_protocol: py.None(),
            app_protocol_is_buffer: false,
            app_reading_paused: false,
            app_writing_paused: false,
            ssl_reading_paused: false,
            ssl_writing_paused: false,
            write_backlog: py.None(),
            write_buffer_size: 0,
            transport: py.None(),
            transport_core: None,
            ssl_buffer: py.None(),
            ssl_buffer_view: py.None(),
            incoming_high_water: 0,
            incoming_low_water: 0,
            outgoing_high_water: 0,
            outgoing_low_water: 0,
        }
    }
}

#[pymethods]
impl TlsProtocolState {
    /// Every field None, False or 0 until asyncio's `SSLProtocol.__init__` sets it (the
    /// arguments are that `__init__`'s).
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Self {
        Self::empty(py)
    }

    /// Sets `_sslobj` (an `ssl.SSLObject` or None) and the `_ssl._SSLSocket` inside it.
    #[setter(_sslobj)]
    fn set_ssl_object(&mut self, value: Bound<'_, PyAny>) {
        let py = value.py();
        self.ssl_socket = if value.is_none() {
            None
        } else {
            value.getattr(intern!(py, "_sslobj")).ok().map(Bound::unbind)
        };
        self.ssl_object = value.unbind();
    }

    /// Sets `_transport` and, for an oxloop stream transport, its native half.
    #[setter(_transport)]
    fn set_transport(&mut self, value: Bound<'_, PyAny>) {
        let py = value.py();
        self.transport_core = value
            .getattr(intern!(py, "_core"))
            .ok()
            .and_then(|core| core.cast_into::<StreamTransport>().ok())
            .map(Bound::unbind);
        self.transport = value.unbind();
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for object in [
            &self.state,
            &self.incoming,
            &self.outgoing,
            &self.ssl_object,
            &self.app_protocol,
            &self.write_backlog,
            &self.transport,
            &self.ssl_buffer,
            &self.ssl_buffer_view,
        ] {
            visit.call(object)?;
        }
        if let Some(socket) = &self.ssl_socket {
            visit.call(socket)?;
        }
        if let Some(core) = &self.transport_core {
            visit.call(core)?;
        }
        Ok(())
    }

    fn __clear__(&mut self, py: Python<'_>) {
        *self = Self::empty(py);
    }
}

/// The native state of `protocol`, on which a native method was called.
fn state_of<'a, 'py>(protocol: &'a Bound<'py, PyAny>) -> &'a Bound<'py, TlsProtocolState> {
    // SAFETY: `install_tls_methods` installs the methods only on subclasses of
    // `TlsProtocolState` (it checks), and a method descriptor checks the type of its `self`.
    unsafe { protocol.cast_unchecked::<TlsProtocolState>() }
}

/// An `int` as a size (TypeError for other types, OverflowError when negative or too big).
fn as_size(value: &Bound<'_, PyAny>) -> PyResult<usize> {
    // SAFETY: the GIL is held and `value` is alive.
    let size = unsafe { ffi::PyLong_AsSsize_t(value.as_ptr()) };
    if size < 0 {
        return Err(PyErr::take(value.py())
            .unwrap_or_else(|| PyOverflowError::new_err("size must not be negative")));
    }
    Ok(size as usize)
}

/// What a memory BIO holds (its `pending` attribute).
fn pending(bio: &Bound<'_, PyAny>) -> PyResult<usize> {
    as_size(&bio.getattr(intern!(bio.py(), "pending"))?)
}

/// A memoryview of `len` bytes at `ptr`, readable or writable (`flags`).
///
/// # Safety
/// `ptr` must stay valid for `len` bytes while the view is used.
unsafe fn view_of(
    py: Python<'_>,
    ptr: *mut c_char,
    len: usize,
    flags: c_int,
) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: as the caller guarantees; returns a new reference or NULL with an exception.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyMemoryView_FromMemory(ptr, len as ffi::Py_ssize_t, flags),
        )
    }
}

/// `protocol.get_buffer(n)`: the protocol's receive buffer (asyncio's rules for `n > 0`).
fn get_buffer<'py>(
    protocol: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = protocol.py();
    let wanted: isize = n.extract()?;
    if wanted <= 0 {
        // The whole buffer, which is never smaller than max_size.
        return Ok(state_of(protocol).borrow().ssl_buffer_view.clone_ref(py).into_bound(py));
    }
    let base = constants(py)?.base.bind(py);
    base.getattr(intern!(py, "get_buffer"))?.call1((protocol, n))
}

/// `protocol.buffer_updated(nbytes)`: feed the received bytes to TLS, then read records.
fn buffer_updated(protocol: &Bound<'_, PyAny>, nbytes: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = protocol.py();
    let count = as_size(nbytes)?;
    let this = state_of(protocol);
    let (buffer, incoming, wrapped, ssl_socket) = {
        let fields = this.borrow();
        let wrapped = fields.state.bind(py).is(constants(py)?.wrapped.bind(py));
        // The TLS object to read records from, when the application protocol takes them as
        // they come (not paused, not a buffered protocol).
        let plain = !fields.app_reading_paused && !fields.app_protocol_is_buffer;
        let ssl_socket = fields
            .ssl_socket
            .as_ref()
            .filter(|_| plain)
            .map(|socket| socket.clone_ref(py).into_bound(py));
        (
            fields.ssl_buffer.clone_ref(py).into_bound(py),
            fields.incoming.clone_ref(py).into_bound(py),
            wrapped,
            ssl_socket,
        )
    };
    let buffer = buffer.cast_into::<PyByteArray>()?;
    if count > buffer.len() {
        return Err(PyTypeError::new_err("buffer_updated() count exceeds the buffer"));
    }
    // SAFETY: the bytearray is alive (held by `buffer`) and not resized during the call;
    // MemoryBIO.write copies the bytes before returning.
    let received = unsafe { view_of(py, buffer.data().cast(), count, ffi::PyBUF_READ)? };
    incoming.call_method1(intern!(py, "write"), (received,))?;
    if !wrapped {
        // Handshake, flushing or shutdown: asyncio's code.
        return protocol.call_method0(intern!(py, "_after_incoming")).map(drop);
    }
    let Some(ssl_socket) = ssl_socket else {
        // Reading paused, or a buffered application protocol: asyncio's code.
        return protocol.call_method0(intern!(py, "_do_read")).map(drop);
    };
    match read_records(protocol, this, &ssl_socket, &incoming, &buffer) {
        Ok(()) => Ok(()),
        Err(err) => report(protocol, err, "Fatal error on SSL protocol"),
    }
}

/// An exception of the record path: `Exception`s go to `protocol._fatal_error` (asyncio's
/// `except Exception`), the rest propagate.
fn report(protocol: &Bound<'_, PyAny>, err: PyErr, message: &str) -> PyResult<()> {
    let py = protocol.py();
    if !err.is_instance_of::<PyException>(py) {
        return Err(err);
    }
    protocol.call_method1(intern!(py, "_fatal_error"), (err.value(py), message)).map(drop)
}

/// asyncio's `_do_read` + `_do_read__copied` for a plain application protocol: every
/// complete record is decrypted straight into one `bytes`, delivered with one
/// `data_received`; then the outgoing records are sent and reading flow control checked.
fn read_records<'py>(
    protocol: &Bound<'py, PyAny>,
    this: &Bound<'py, TlsProtocolState>,
    ssl_socket: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    scratch: &Bound<'py, PyByteArray>,
) -> PyResult<()> {
    let py = protocol.py();
    let (data, end_of_stream) = decrypt_available(ssl_socket, incoming, scratch)?;
    if let Some(data) = data {
        let app_protocol = this.borrow().app_protocol.clone_ref(py).into_bound(py);
        app_protocol.call_method1(intern!(py, "data_received"), (data,))?;
    }
    if end_of_stream {
        // close_notify: asyncio's code.
        protocol.call_method0(intern!(py, "_call_eof_received"))?;
        protocol.call_method0(intern!(py, "_start_shutdown"))?;
    }
    let backlog = this.borrow().write_backlog.clone_ref(py).into_bound(py);
    if backlog.is_truthy()? {
        protocol.call_method0(intern!(py, "_do_write"))?;
    } else {
        process_outgoing(this)?;
    }
    control_ssl_reading(this, incoming)
}

/// The most plaintext one TLS record carries.
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// Plaintext no larger than this is decrypted into the protocol's receive buffer (free once
/// its bytes are in the incoming BIO) and copied into an exact `bytes`; larger amounts are
/// decrypted straight into their `bytes`, which is shrunk afterwards.
const SCRATCH_LIMIT: usize = 64 * 1024;

/// Why a decryption loop stopped.
enum Stop {
    /// Every complete record was read.
    Drained,
    /// The output is full and more is available.
    Full,
    /// The peer's close_notify was read.
    EndOfStream,
    Failed(PyErr),
}

/// Reads decrypted records into `capacity` bytes at `start`, from `filled` on; returns the
/// new fill level and why it stopped. Stops at the end of the complete records by checking
/// what is pending instead of asking for more and catching `SSLWantReadError`.
///
/// # Safety
/// `start` must be writable for `capacity` bytes during the call.
unsafe fn read_loop(
    ssl_socket: &Bound<'_, PyAny>,
    incoming: &Bound<'_, PyAny>,
    start: *mut c_char,
    capacity: usize,
    mut filled: usize,
) -> (usize, Stop) {
    let py = ssl_socket.py();
    let again = match constants(py) {
        Ok(constants) => constants.again_errors.bind(py),
        Err(err) => return (filled, Stop::Failed(err)),
    };
    loop {
        if filled > 0 {
            let more = pending(incoming).and_then(|ciphertext| {
                if ciphertext > 0 {
                    Ok(true)
                } else {
                    Ok(as_size(&ssl_socket.call_method0(intern!(py, "pending"))?)? > 0)
                }
            });
            match more {
                Ok(false) => return (filled, Stop::Drained),
                Ok(true) if filled == capacity => return (filled, Stop::Full),
                Ok(true) => {}
                Err(err) => return (filled, Stop::Failed(err)),
            }
        }
        let room = capacity - filled;
        // SAFETY: `start + filled` is writable for `room` bytes (the caller's guarantee).
        let result = unsafe { view_of(py, start.add(filled), room, ffi::PyBUF_WRITE) }
            .and_then(|view| ssl_socket.call_method1(intern!(py, "read"), (room, view)))
            .and_then(|n| as_size(&n));
        match result {
            Ok(0) => return (filled, Stop::EndOfStream),
            Ok(n) => filled += n,
            Err(err) if err.is_instance(py, again) => return (filled, Stop::Drained),
            Err(err) => return (filled, Stop::Failed(err)),
        }
    }
}

/// Decrypts every complete record available: the plaintext (None if there was none) and
/// whether the peer's close_notify was read. `scratch` is the protocol's receive buffer.
fn decrypt_available<'py>(
    ssl_socket: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    scratch: &Bound<'py, PyByteArray>,
) -> PyResult<(Option<Bound<'py, PyBytes>>, bool)> {
    let py = ssl_socket.py();
    // The plaintext is no longer than the ciphertext it comes from, plus what TLS already
    // holds: decrypted bytes, and the start of a record it took from the BIO earlier (at
    // most one record). More room is made if that was not enough.
    let ciphertext = pending(incoming)?;
    let expected = ciphertext + MAX_RECORD_PLAINTEXT;
    let (start_data, mut filled, mut stop) = if expected <= SCRATCH_LIMIT.min(scratch.len()) {
        // SAFETY: the bytearray is held by the protocol and not resized during the loop.
        let (filled, stop) =
            unsafe { read_loop(ssl_socket, incoming, scratch.data().cast(), scratch.len(), 0) };
        if !matches!(stop, Stop::Full) {
            let data = match stop {
                Stop::Failed(err) => return Err(err),
                _ => (filled > 0).then(|| {
                    // SAFETY: the first `filled` bytes of the bytearray were just written.
                    PyBytes::new(py, unsafe { &scratch.as_bytes()[..filled] })
                }),
            };
            return Ok((data, matches!(stop, Stop::EndOfStream)));
        }
        // SAFETY: as above.
        (Some(unsafe { scratch.as_bytes()[..filled].to_vec() }), filled, stop)
    } else {
        (None, 0, Stop::Full)
    };
    let mut capacity = expected.max(filled + MAX_RECORD_PLAINTEXT);
    // SAFETY: a `bytes` made with a NULL source is uninitialised and not yet shared: it is
    // written through views of its own memory (valid while `object` lives and is not
    // resized) and resized, which may move it, only between reads; it is shrunk to what
    // was written before anyone else sees it.
    unsafe {
        let mut object =
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), capacity as ffi::Py_ssize_t);
        if object.is_null() {
            return Err(PyErr::fetch(py));
        }
        if let Some(start_data) = start_data {
            std::ptr::copy_nonoverlapping(
                start_data.as_ptr(),
                ffi::PyBytes_AsString(object).cast::<u8>(),
                filled,
            );
        }
        loop {
            if matches!(stop, Stop::Full) && filled == capacity {
                capacity += MAX_RECORD_PLAINTEXT.max(capacity / 2);
                if _PyBytes_Resize(&mut object, capacity as ffi::Py_ssize_t) < 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            let (now_filled, now_stop) =
                read_loop(ssl_socket, incoming, ffi::PyBytes_AsString(object), capacity, filled);
            filled = now_filled;
            stop = now_stop;
            if !matches!(stop, Stop::Full) {
                break;
            }
        }
        if _PyBytes_Resize(&mut object, filled as ffi::Py_ssize_t) < 0 {
            return Err(PyErr::fetch(py));
        }
        let data = Bound::from_owned_ptr(py, object).cast_into_unchecked::<PyBytes>();
        match stop {
            Stop::Failed(err) => Err(err),
            stop => Ok(((filled > 0).then_some(data), matches!(stop, Stop::EndOfStream))),
        }
    }
}

/// asyncio's `_process_outgoing`: hand the encrypted records to the socket transport, then
/// check writing flow control.
fn process_outgoing(this: &Bound<'_, TlsProtocolState>) -> PyResult<()> {
    let py = this.py();
    let (outgoing, writing_paused, transport, core) = {
        let fields = this.borrow();
        (
            fields.outgoing.clone_ref(py).into_bound(py),
            fields.ssl_writing_paused,
            fields.transport.clone_ref(py).into_bound(py),
            fields.transport_core.as_ref().map(|core| core.clone_ref(py).into_bound(py)),
        )
    };
    let mut still_pending = pending(&outgoing)?;
    if !writing_paused && still_pending > 0 {
        let records = outgoing.call_method0(intern!(py, "read"))?;
        still_pending = 0; // `read()` takes everything
        match core {
            // oxloop's socket transport: straight to its native half.
            Some(core) => StreamTransport::write(&core, &records)?,
            None => {
                transport.call_method1(intern!(py, "write"), (records,))?;
            }
        }
    }
    control_app_writing(this, still_pending)
}

/// asyncio's `_control_app_writing`, entered only when a threshold is crossed;
/// `outgoing_pending` is what the outgoing BIO holds.
fn control_app_writing(
    this: &Bound<'_, TlsProtocolState>,
    outgoing_pending: usize,
) -> PyResult<()> {
    let py = this.py();
    let crossing = {
        let fields = this.borrow();
        let size = outgoing_pending + fields.write_buffer_size;
        if fields.app_writing_paused {
            size <= fields.outgoing_low_water
        } else {
            size >= fields.outgoing_high_water
        }
    };
    if crossing {
        this.call_method0(intern!(py, "_control_app_writing"))?;
    }
    Ok(())
}

/// asyncio's `_control_ssl_reading`, entered only when a threshold is crossed.
fn control_ssl_reading(
    this: &Bound<'_, TlsProtocolState>,
    incoming: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = this.py();
    let size = pending(incoming)?;
    let crossing = {
        let fields = this.borrow();
        if fields.ssl_reading_paused {
            size <= fields.incoming_low_water
        } else {
            size >= fields.incoming_high_water
        }
    };
    if crossing {
        this.call_method0(intern!(py, "_control_ssl_reading"))?;
    }
    Ok(())
}

/// The application transport's `write(data)`: encrypt at once when the protocol is wrapped
/// with nothing backlogged, else asyncio's `_write_appdata`.
fn app_write(transport: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    if !(data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>())
    {
        return Err(PyTypeError::new_err(format!(
            "data: expecting a bytes-like instance, got {}",
            data.get_type().name()?
        )));
    }
    let length = data.len()?;
    if length == 0 {
        return Ok(());
    }
    let protocol = InstanceDict::of(transport)?.get(intern!(py, "_ssl_protocol"))?;
    let Ok(this) = protocol.cast::<TlsProtocolState>() else {
        return protocol.call_method1(intern!(py, "_write_appdata"), ((data,),)).map(drop);
    };
    let ssl_socket = {
        let fields = this.borrow();
        let plain = fields.state.bind(py).is(constants(py)?.wrapped.bind(py))
            && !fields.write_backlog.bind(py).is_truthy()?;
        plain
            .then(|| fields.ssl_socket.as_ref().map(|socket| socket.clone_ref(py).into_bound(py)))
            .flatten()
    };
    let Some(ssl_socket) = ssl_socket else {
        return protocol.call_method1(intern!(py, "_write_appdata"), ((data,),)).map(drop);
    };
    match encrypt(this, &ssl_socket, data, length) {
        Ok(()) => Ok(()),
        Err(err) => report(&protocol, err, "Fatal error on SSL protocol"),
    }
}

/// Encrypts `data` (`length` bytes) and sends the records; what TLS cannot take now goes to
/// asyncio's backlog.
fn encrypt<'py>(
    this: &Bound<'py, TlsProtocolState>,
    ssl_socket: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    length: usize,
) -> PyResult<()> {
    let py = this.py();
    match ssl_socket.call_method1(intern!(py, "write"), (data,)).and_then(|n| as_size(&n)) {
        Ok(written) if written >= length => process_outgoing(this),
        Ok(written) => {
            let rest = PyMemoryView::from(data)?.get_item(pyo3::types::PySlice::new(
                py,
                written as isize,
                length as isize,
                1,
            ))?;
            this.call_method1(intern!(py, "_write_appdata"), ((rest,),)).map(drop)
        }
        Err(err) if err.is_instance(py, constants(py)?.again_errors.bind(py)) => {
            this.call_method1(intern!(py, "_write_appdata"), ((data,),)).map(drop)
        }
        Err(err) => Err(err),
    }
}

one_argument_entry! {
    /// The C function of the protocol's `get_buffer(n)`.
    get_buffer_entry(protocol, n) {
        get_buffer(&protocol, &n).map(Bound::unbind)
    }
}

one_argument_entry! {
    /// The C function of the protocol's `buffer_updated(nbytes)`.
    buffer_updated_entry(protocol, nbytes) {
        buffer_updated(&protocol, &nbytes).map(|()| protocol.py().None())
    }
}

one_argument_entry! {
    /// The C function of the application transport's `write(data)`.
    app_write_entry(transport, data) {
        app_write(&transport, &data).map(|()| transport.py().None())
    }
}

/// The native methods of `TLSProtocol`.
static PROTOCOL_METHODS: [NativeMethod; 2] = [
    NativeMethod {
        name: c"get_buffer",
        doc: c"get_buffer($self, n, /)\n--\n\nThe buffer incoming TLS bytes are received into.",
        entry: MethodEntry::OneArgument(get_buffer_entry),
    },
    NativeMethod {
        name: c"buffer_updated",
        doc: c"buffer_updated($self, nbytes, /)\n--\n\nFeed nbytes received to TLS and deliver the decrypted records.",
        entry: MethodEntry::OneArgument(buffer_updated_entry),
    },
];

/// The native methods of the TLS application transport.
static APP_TRANSPORT_METHODS: [NativeMethod; 1] = [NativeMethod {
    name: c"write",
    doc: c"write($self, data, /)\n--\n\nEncrypt and send a bytes-like object.",
    entry: MethodEntry::OneArgument(app_write_entry),
}];

/// Installs the native per-record methods: `get_buffer` and `buffer_updated` on
/// `protocol_class` (a subclass of asyncio's `SSLProtocol`, `base`), `write` on
/// `transport_class` (its application transport). `wrapped` is
/// `SSLProtocolState.WRAPPED`, `again_errors` asyncio's `SSLAgainErrors`. A protocol class
/// that is not a subclass of `TlsProtocolState` is refused with TypeError.
#[pyfunction]
fn install_tls_methods(
    protocol_class: &Bound<'_, PyType>,
    transport_class: &Bound<'_, PyType>,
    base: &Bound<'_, PyType>,
    wrapped: &Bound<'_, PyAny>,
    again_errors: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = protocol_class.py();
    // The protocol methods view `self` as a `TlsProtocolState` without checking each call
    // (`state_of`): that holds only for subclasses of it, so nothing else gets them.
    if !protocol_class.is_subclass_of::<TlsProtocolState>()? {
        return Err(PyTypeError::new_err(format!(
            "install_tls_methods: {} is not a subclass of TlsProtocolState",
            protocol_class.name()?
        )));
    }
    CONSTANTS.get_or_init(py, || TlsConstants {
        wrapped: wrapped.clone().unbind(),
        again_errors: again_errors.clone().unbind(),
        base: base.clone().unbind(),
    });
    install_methods(protocol_class, &PROTOCOL_METHODS)?;
    install_methods(transport_class, &APP_TRANSPORT_METHODS)
}

/// Adds `install_tls_methods` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TlsProtocolState>()?;
    m.add_function(wrap_pyfunction!(install_tls_methods, m)?)
}
