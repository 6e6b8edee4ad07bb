//! Hand-written vectorcall entry points for `call_soon` and `call_soon_threadsafe`.
//!
//! These two are called for every callback asyncio schedules (by every task step and future
//! completion, from C), so their argument parsing matters: PyO3's generic parser for
//! `(callback, *args, context=None)` costs more than the rest of the call. These functions
//! read the vectorcall arguments directly and then share the PyO3 implementation
//! (`LoopCore::schedule_soon`).
//!
//! Invariants: CPython calls them with the GIL held (they are `METH_FASTCALL | METH_KEYWORDS`
//! methods installed on `LoopCore` at module initialisation, with a method definition that
//! lives for the life of the process). They never unwind into C: a Rust panic becomes a
//! `PanicException`.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::event_loop::LoopCore;
use crate::handles::Handle;

/// Parses `(callback, *args, context=None)` and schedules the callback.
///
/// # Safety
/// `args` points to `nargs` positional arguments followed by one value per name in
/// `kwnames` (a tuple, or NULL), all borrowed for the duration of the call, as vectorcall
/// guarantees; the GIL is held.
unsafe fn schedule_from_vectorcall(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: &str,
    threadsafe: bool,
) -> PyResult<Py<Handle>> {
    // SAFETY (whole block): pointers come from CPython's vectorcall protocol, see above.
    unsafe {
        // The method descriptor has already checked that `slf` is a LoopCore (or a subclass):
        // CPython's method_descriptor calls verify the type of `self`.
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>();
        let positional = std::slice::from_raw_parts(args, nargs as usize);
        let (mut callback, rest) = match positional.split_first() {
            Some((&callback, rest)) => (Some(Bound::from_borrowed_ptr(py, callback)), rest),
            None => (None, positional),
        };
        let rest = if rest.is_empty() {
            PyTuple::empty(py)
        } else {
            PyTuple::new(py, rest.iter().map(|&arg| Bound::from_borrowed_ptr(py, arg)))?
        };
        let mut context = None;
        if !kwnames.is_null() {
            let names = Bound::from_borrowed_ptr(py, kwnames).cast_into::<PyTuple>()?;
            let values = std::slice::from_raw_parts(args.add(nargs as usize), names.len());
            let context_name = pyo3::intern!(py, "context");
            for (name, &value) in names.iter().zip(values) {
                // Keyword names are almost always the interned string itself.
                let is = |expected: &str| name.cast::<PyString>().is_ok_and(|n| n.to_str().is_ok_and(|n| n == expected));
                if name.is(context_name) || is("context") {
                    context = Some(Bound::from_borrowed_ptr(py, value));
                } else if is("callback") && callback.is_none() {
                    callback = Some(Bound::from_borrowed_ptr(py, value));
                } else if is("callback") {
                    return Err(PyTypeError::new_err(format!("{method}() got multiple values for argument 'callback'")));
                } else {
                    return Err(PyTypeError::new_err(format!("{method}() got an unexpected keyword argument '{name}'")));
                }
            }
        }
        let callback = callback.ok_or_else(|| {
            PyTypeError::new_err(format!("{method}() missing 1 required positional argument: 'callback'"))
        })?;
        LoopCore::schedule_soon(&slf, callback, rest, context, threadsafe)
    }
}

/// Turns the outcome of an entry point into what CPython expects: a new reference, or NULL
/// with an exception set.
fn into_c_result(py: Python<'_>, outcome: std::thread::Result<PyResult<Py<Handle>>>) -> *mut ffi::PyObject {
    match outcome {
        Ok(Ok(handle)) => handle.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(_) => {
            PanicException::new_err("Rust panic while scheduling a callback").restore(py);
            std::ptr::null_mut()
        }
    }
}

/// `loop.call_soon(callback, *args, context=None)` and, with `THREADSAFE`,
/// `loop.call_soon_threadsafe(...)`.
unsafe extern "C" fn schedule_entry<const THREADSAFE: bool>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods with the GIL held; arguments as `schedule_from_vectorcall`
    // documents.
    let py = unsafe { Python::assume_attached() };
    let method = if THREADSAFE { "call_soon_threadsafe" } else { "call_soon" };
    let outcome = catch_unwind(AssertUnwindSafe(|| unsafe {
        schedule_from_vectorcall(py, slf, args, nargs, kwnames, method, THREADSAFE)
    }));
    into_c_result(py, outcome)
}

/// One method to install: its name, its C function and its docstring (with the text signature
/// `inspect.signature` reads).
struct FastMethod {
    name: &'static CStr,
    function: ffi::PyCFunctionFastWithKeywords,
    doc: &'static CStr,
}

const METHODS: [FastMethod; 2] = [
    FastMethod {
        name: c"call_soon",
        function: schedule_entry::<false>,
        doc: c"call_soon($self, callback, *args, context=None)\n--\n\nSchedule callback(*args) for the next iteration; return its Handle.",
    },
    FastMethod {
        name: c"call_soon_threadsafe",
        function: schedule_entry::<true>,
        doc: c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), callable from any thread and from signal handlers: wakes the loop.",
    },
];

/// Installs the hand-written methods on `LoopCore`.
pub(crate) fn install(loop_type: &Bound<'_, PyType>) -> PyResult<()> {
    let py = loop_type.py();
    for method in METHODS {
        // The definition must outlive the type: leak it (two small structs per process).
        let definition: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: method.name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: method.function },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: method.doc.as_ptr() as *const c_char,
        }));
        // SAFETY: the type object and the leaked definition are valid; PyDescr_NewMethod
        // returns a new reference or NULL with an exception set.
        let descriptor = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(loop_type.as_ptr().cast(), definition))?
        };
        loop_type.setattr(method.name.to_str().expect("method names are ASCII"), descriptor)?;
    }
    Ok(())
}
