//! Hand-written native methods, installed from tables: each row ([`NativeMethod`]) pairs a
//! name and a docstring with the C function that implements it ([`MethodEntry`]), and
//! [`install_methods`] turns rows into method descriptors on a type. The entry functions are
//! written with [`fastcall_entry!`] or [`one_argument_entry!`], which run a body through
//! [`run_entry`].
//!
//! Each row names its own entry function: a call goes from CPython straight to that function
//! (no dispatch by position), and reordering rows changes nothing but the order in which the
//! methods are installed.
//!
//! Invariants: CPython calls an entry with the GIL held, with `self` of the type the
//! descriptor was made for (the method descriptor checks it); a Rust panic never unwinds into
//! C (it becomes a `PanicException`). The method definitions are leaked, so they live as long
//! as the types.

use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// A native method's C function, by calling convention.
#[derive(Clone, Copy)]
pub(crate) enum MethodEntry {
    /// `METH_FASTCALL | METH_KEYWORDS`: `(self, args, nargs, kwnames)` (see
    /// [`fastcall_entry!`]).
    FastWithKeywords(ffi::PyCFunctionFastWithKeywords),
    /// `METH_O`: `(self, arg)` (see [`one_argument_entry!`]).
    OneArgument(ffi::PyCFunction),
}

impl MethodEntry {
    /// The method definition's flags and function pointer.
    fn flags_and_function(self) -> (c_int, ffi::PyMethodDefPointer) {
        match self {
            MethodEntry::FastWithKeywords(function) => (
                ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: function },
            ),
            MethodEntry::OneArgument(function) => {
                (ffi::METH_O, ffi::PyMethodDefPointer { PyCFunction: function })
            }
        }
    }
}

/// One row of a method table: a method's name, its docstring (with the text signature
/// `inspect.signature` reads) and its C function.
pub(crate) struct NativeMethod {
    /// The attribute name on the type.
    pub(crate) name: &'static CStr,
    /// `__doc__`, starting with the text signature.
    pub(crate) doc: &'static CStr,
    /// The C function.
    pub(crate) entry: MethodEntry,
}

impl NativeMethod {
    /// The method's name as a Rust string.
    pub(crate) fn name(&self) -> &'static str {
        self.name.to_str().expect("method names are ASCII")
    }
}

/// Installs `methods` on `ty` as method descriptors.
pub(crate) fn install_methods<'a>(
    ty: &Bound<'_, PyType>,
    methods: impl IntoIterator<Item = &'a NativeMethod>,
) -> PyResult<()> {
    let py = ty.py();
    for method in methods {
        let (ml_flags, ml_meth) = method.entry.flags_and_function();
        // The definition must outlive the type: leak it (a few small structs per type).
        let definition: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: method.name.as_ptr(),
            ml_meth,
            ml_flags,
            ml_doc: method.doc.as_ptr(),
        }));
        // SAFETY: the type object and the leaked definition are valid; PyDescr_NewMethod
        // returns a new reference or NULL with an exception set.
        let descriptor = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), definition))?
        };
        ty.setattr(method.name(), descriptor)?;
    }
    Ok(())
}

/// Runs the body of a native method CPython called and turns its outcome into what CPython
/// expects: a new reference, or NULL with an exception set. A Rust panic becomes a
/// `PanicException` (it never unwinds into C).
///
/// # Safety
/// Only called from a method CPython calls, which holds the GIL.
pub(crate) unsafe fn run_entry(
    body: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>,
) -> *mut ffi::PyObject {
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

/// Gives a method body's closure its signature (for type inference in the entry macros).
#[inline(always)]
pub(crate) fn method_body<F: FnOnce(Python<'_>) -> PyResult<Py<PyAny>>>(body: F) -> F {
    body
}

/// Defines `unsafe extern "C" fn $entry($slf, $args, $nargs, $kwnames)`, the C function of a
/// `METH_FASTCALL | METH_KEYWORDS` method ([`MethodEntry::FastWithKeywords`]), which runs
/// `$body` (a `PyResult<Py<PyAny>>`, with the GIL token `$py`) through [`run_entry`].
///
/// The body is not an `unsafe` context; what it may rely on when it reads the arguments
/// (vectorcall's guarantees) is: `$args` points to `$nargs` positional arguments followed by
/// one value per name in `$kwnames` (a tuple, or NULL), all borrowed for the call, and `$slf`
/// is an instance of the type the method was installed on.
macro_rules! fastcall_entry {
    (
        $(#[$attr:meta])*
        $entry:ident($py:ident, $slf:ident, $args:ident, $nargs:ident, $kwnames:ident) $body:block
    ) => {
        $(#[$attr])*
        unsafe extern "C" fn $entry(
            $slf: *mut ::pyo3::ffi::PyObject,
            $args: *const *mut ::pyo3::ffi::PyObject,
            $nargs: ::pyo3::ffi::Py_ssize_t,
            $kwnames: *mut ::pyo3::ffi::PyObject,
        ) -> *mut ::pyo3::ffi::PyObject {
            let body = $crate::method_table::method_body(|$py| $body);
            // SAFETY: CPython calls a method's C function with the GIL held, as `run_entry`
            // requires.
            unsafe { $crate::method_table::run_entry(body) }
        }
    };
}
pub(crate) use fastcall_entry;

/// Defines `unsafe extern "C" fn $entry(self, arg)`, the C function of a `METH_O` method
/// ([`MethodEntry::OneArgument`]), which runs `$body` (a `PyResult<Py<PyAny>>`, not an
/// `unsafe` context) through [`run_entry`] with `$slf` and `$arg` bound as `Bound<'_, PyAny>`.
macro_rules! one_argument_entry {
    ($(#[$attr:meta])* $entry:ident($slf:ident, $arg:ident) $body:block) => {
        $(#[$attr])*
        unsafe extern "C" fn $entry(
            $slf: *mut ::pyo3::ffi::PyObject,
            $arg: *mut ::pyo3::ffi::PyObject,
        ) -> *mut ::pyo3::ffi::PyObject {
            let body = $crate::method_table::method_body(|py| {
                // SAFETY: CPython passes `self` and the argument as live objects borrowed for
                // the call, with the GIL held.
                let ($slf, $arg) = unsafe {
                    (
                        ::pyo3::Bound::from_borrowed_ptr(py, $slf),
                        ::pyo3::Bound::from_borrowed_ptr(py, $arg),
                    )
                };
                $body
            });
            // SAFETY: CPython calls a method's C function with the GIL held, as `run_entry`
            // requires.
            unsafe { $crate::method_table::run_entry(body) }
        }
    };
}
pub(crate) use one_argument_entry;
