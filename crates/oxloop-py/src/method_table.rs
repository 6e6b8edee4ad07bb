//! The machinery of hand-written native methods: [`run_entry`], which runs a method's body
//! for CPython.
//!
//! Invariants: CPython calls a method's C function with the GIL held; a Rust panic never
//! unwinds into C (it becomes a `PanicException`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;

/// Runs the body of a native method CPython called and turns its outcome into what CPython
/// expects: a new reference, or NULL with an exception set. A Rust panic becomes a
/// `PanicException` (it never unwinds into C).
///
/// # Safety
/// Only called from a method CPython calls, which holds the GIL.
pub(crate) unsafe fn run_entry(body: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) -> *mut ffi::PyObject {
    // SAFETY: the caller's contract: CPython calls methods with the GIL held.
    let py = unsafe { Python::assume_attached() };
    match catch_unwind(AssertUnwindSafe(|| body(py))) {
        Ok(Ok(result)) => result.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(_) => {
            PanicException::new_err("Rust panic in a native method of oxloop").restore(py);
            std::ptr::null_mut()
        }
    }
}
