//! Small pieces of Python glue the whole extension uses: asyncio's logger, byte buffers,
//! errors, `bytes` resizing and the current `contextvars.Context`.
//!
//! Invariants: every function here is called with the GIL held (a `Python` token or a `Bound`
//! proves it) and holds nothing between calls but the logger, looked up once. Nothing here
//! owns a file descriptor.

use std::ffi::c_int;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

/// asyncio's logger.
fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("logging")?.call_method1("getLogger", ("asyncio",))?.unbind())
        })
        .map(|l| l.bind(py))
}

/// `logger.debug(message, transport)`.
pub(crate) fn debug_log(
    py: Python<'_>,
    message: &str,
    transport: &Bound<'_, PyAny>,
) -> PyResult<()> {
    logger(py)?.call_method1("debug", (message, transport)).map(drop)
}

/// `logger.warning(message)`.
pub(crate) fn warn_log(py: Python<'_>, message: &str) -> PyResult<()> {
    logger(py)?.call_method1("warning", (message,)).map(drop)
}

/// asyncio's check of `write()`'s argument.
pub(crate) fn check_bytes_like(data: &Bound<'_, PyAny>) -> PyResult<()> {
    if data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>()
    {
        Ok(())
    } else {
        Err(PyTypeError::new_err(format!(
            "data argument must be a bytes-like object, not {}",
            data.get_type().name()?.repr()?
        )))
    }
}

/// Runs `f` on the contents of a contiguous bytes-like object.
pub(crate) fn with_buffer<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    let py = data.py();
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: the GIL is held; on success the view describes `len` readable bytes at `buf`
    // until `PyBuffer_Release`, which is called before returning.
    unsafe {
        if ffi::PyObject_GetBuffer(data.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) < 0 {
            return Err(PyErr::fetch(py));
        }
        let mut view = view.assume_init();
        let slice = if view.len == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(view.buf as *const u8, view.len as usize)
        };
        let result = f(slice);
        ffi::PyBuffer_Release(&mut view);
        Ok(result)
    }
}

/// An `OSError` as Python raises it for a failed system call: `OSError(errno, strerror)`,
/// which Python turns into the matching subclass (`PermissionError`, ...).
pub(crate) fn os_error(err: std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(code) => {
            // SAFETY: strerror returns a pointer to a NUL-terminated static or thread-local
            // message, read at once.
            let message = unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
                .to_string_lossy()
                .into_owned();
            PyOSError::new_err((code, message))
        }
        None => err.into(),
    }
}

/// Whether `err` must leave the loop rather than reach the exception handler.
pub(crate) fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// Panics with `message`. It exists so the test suite can check that a panic in oxloop's
/// native code surfaces as a Python exception (`pyo3_runtime.PanicException`, a
/// `BaseException`) and never aborts the interpreter.
#[pyfunction]
pub(crate) fn _panic_for_tests(message: &str) -> PyResult<()> {
    panic!("{message}")
}

extern "C" {
    /// CPython's `_PyBytes_Resize` (not in PyO3's bindings): resizes a `bytes` object that
    /// nobody else refers to yet; on failure frees it and sets `*bytes` to NULL.
    pub(crate) fn _PyBytes_Resize(
        bytes: *mut *mut ffi::PyObject,
        new_size: ffi::Py_ssize_t,
    ) -> c_int;
}

/// `contextvars.copy_context()`.
pub(crate) fn copy_current_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: called with the GIL held; PyContext_CopyCurrent returns a new reference or NULL
    // with an exception set, which `from_owned_ptr_or_err` turns into a PyErr.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()).map(Bound::unbind) }
}
