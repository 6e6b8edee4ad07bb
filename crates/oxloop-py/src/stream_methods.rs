//! The per-packet methods of the Python `SocketTransport` class (`write`, `writelines`,
//! `is_closing`, ...), implemented natively.
//!
//! `SocketTransport` must be a Python subclass of `asyncio.Transport` (frameworks check
//! `isinstance`), and asyncio's transport classes have a `__slots__` layout no native class
//! can share. So the transport is a Python object holding its native half in the `_core`
//! slot, and the methods called per packet are method descriptors created here for that
//! class: a call goes straight from the interpreter to [`StreamTransport`], with no Python
//! frame in between.
//!
//! Invariants: CPython calls these functions with the GIL held, with `self` an instance of
//! the class the descriptors were made for (the descriptor checks it); the method
//! definitions are leaked, so they live as long as the class. A Rust panic becomes a
//! `PanicException`, never an unwind into C.

use std::ffi::{c_char, CStr};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::method_table::run_entry;
use crate::stream::StreamTransport;

/// One forwarded method.
#[derive(Clone, Copy)]
struct Forwarded {
    name: &'static CStr,
    /// The name of its single parameter, if it takes one.
    parameter: Option<&'static str>,
    doc: &'static CStr,
}

const METHODS: [Forwarded; 7] = [
    Forwarded { name: c"write", parameter: Some("data"), doc: c"write($self, data, /)\n--\n\nWrite a bytes-like object; it is sent at the end of the loop iteration (at once if the buffer is above the high-water mark)." },
    Forwarded { name: c"writelines", parameter: Some("list_of_data"), doc: c"writelines($self, list_of_data, /)\n--\n\nWrite each bytes-like object of an iterable, in order." },
    Forwarded { name: c"is_closing", parameter: None, doc: c"is_closing($self, /)\n--\n\nWhether the transport is closing or closed." },
    Forwarded { name: c"get_write_buffer_size", parameter: None, doc: c"get_write_buffer_size($self, /)\n--\n\nBytes written but not yet sent." },
    Forwarded { name: c"is_reading", parameter: None, doc: c"is_reading($self, /)\n--\n\nWhether the transport delivers incoming data." },
    Forwarded { name: c"pause_reading", parameter: None, doc: c"pause_reading($self, /)\n--\n\nStop delivering incoming data until resume_reading()." },
    Forwarded { name: c"resume_reading", parameter: None, doc: c"resume_reading($self, /)\n--\n\nDeliver incoming data again." },
];

/// Parses the arguments and calls method number `index` of [`METHODS`] on the transport's
/// native half.
///
/// # Safety
/// As a `METH_FASTCALL | METH_KEYWORDS` function: `args` holds `nargs` positional arguments
/// followed by one value per name of `kwnames` (a tuple or NULL), borrowed for the call; the
/// GIL is held.
unsafe fn call_forwarded(py: Python<'_>, slf: *mut ffi::PyObject, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject, index: usize) -> PyResult<Py<PyAny>> {
    let method = METHODS[index];
    let name = method.name.to_str().expect("method names are ASCII");
    // SAFETY (whole block): pointers from the vectorcall protocol, see above.
    unsafe {
        let transport = Bound::from_borrowed_ptr(py, slf);
        let mut argument = None;
        let positional = std::slice::from_raw_parts(args, nargs as usize);
        let keywords = if kwnames.is_null() { 0 } else { ffi::PyTuple_GET_SIZE(kwnames) as usize };
        if keywords > 0 {
            let names = Bound::from_borrowed_ptr(py, kwnames).cast_into::<PyTuple>()?;
            let values = std::slice::from_raw_parts(args.add(nargs as usize), keywords);
            for (keyword, &value) in names.iter().zip(values) {
                let keyword = keyword.cast_into::<PyString>()?;
                if method.parameter.is_some_and(|p| keyword.to_str().is_ok_and(|k| k == p)) && argument.is_none() {
                    argument = Some(Bound::from_borrowed_ptr(py, value));
                } else {
                    return Err(PyTypeError::new_err(format!("{name}() got an unexpected keyword argument '{keyword}'")));
                }
            }
        }
        let expected = usize::from(method.parameter.is_some());
        if positional.len() + usize::from(argument.is_some()) != expected {
            return Err(PyTypeError::new_err(format!("{name}() takes {} positional argument{} but {} were given", expected + 1, if expected == 0 { "" } else { "s" }, positional.len() + 1)));
        }
        if let Some(&first) = positional.first() {
            argument = Some(Bound::from_borrowed_ptr(py, first));
        }
        let core = transport.getattr(pyo3::intern!(py, "_core"))?.cast_into::<StreamTransport>()?;
        let none = || Ok(py.None());
        match index {
            0 => StreamTransport::write(&core, &argument.expect("checked above")).and_then(|()| none()),
            1 => StreamTransport::writelines(&core, &argument.expect("checked above")).and_then(|()| none()),
            2 => Ok(core.get().is_closing(py).into_pyobject(py)?.to_owned().into_any().unbind()),
            3 => Ok(core.get().get_write_buffer_size(py).into_pyobject(py)?.into_any().unbind()),
            4 => Ok(core.get().is_reading(py).into_pyobject(py)?.to_owned().into_any().unbind()),
            5 => StreamTransport::pause_reading(&core).and_then(|()| none()),
            _ => StreamTransport::resume_reading(&core).and_then(|()| none()),
        }
    }
}

/// The C entry point of method number `INDEX`.
unsafe extern "C" fn forwarded_entry<const INDEX: usize>(slf: *mut ffi::PyObject, args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods with the GIL held; arguments as `call_forwarded` documents.
    unsafe { run_entry(|py| call_forwarded(py, slf, args, nargs, kwnames, INDEX)) }
}

const ENTRIES: [ffi::PyCFunctionFastWithKeywords; 7] = [
    forwarded_entry::<0>,
    forwarded_entry::<1>,
    forwarded_entry::<2>,
    forwarded_entry::<3>,
    forwarded_entry::<4>,
    forwarded_entry::<5>,
    forwarded_entry::<6>,
];

/// Installs the forwarded methods on `cls`, a Python class whose instances keep their
/// [`StreamTransport`] in `_core`: all of them, or those named in `names` (a read pipe has no
/// `write`, a write pipe no `pause_reading`).
#[pyfunction]
#[pyo3(signature = (cls, names=None))]
fn install_transport_methods(cls: &Bound<'_, PyType>, names: Option<Vec<String>>) -> PyResult<()> {
    let py = cls.py();
    if let Some(names) = &names {
        if let Some(unknown) = names.iter().find(|n| !METHODS.iter().any(|m| m.name.to_str().is_ok_and(|m| m == n.as_str()))) {
            return Err(PyTypeError::new_err(format!("no native transport method named {unknown:?}")));
        }
    }
    for (method, entry) in METHODS.iter().zip(ENTRIES) {
        let name = method.name.to_str().expect("method names are ASCII");
        if names.as_ref().is_some_and(|names| !names.iter().any(|n| n == name)) {
            continue;
        }
        // The definition must outlive the class: leak it (a few small structs per class).
        let definition: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: method.name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: entry },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: method.doc.as_ptr() as *const c_char,
        }));
        // SAFETY: the class object and the leaked definition are valid; PyDescr_NewMethod
        // returns a new reference or NULL with an exception set.
        let descriptor = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(cls.as_type_ptr(), definition))? };
        cls.setattr(name, descriptor)?;
    }
    Ok(())
}

/// Adds `install_transport_methods` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(install_transport_methods, m)?)
}
