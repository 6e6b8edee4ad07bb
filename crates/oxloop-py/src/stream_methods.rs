//! The per-packet methods of the Python `SocketTransport` class (`write`, `writelines`,
//! `is_closing`, ...), implemented natively.
//!
//! `SocketTransport` must be a Python subclass of `asyncio.Transport` (frameworks check
//! `isinstance`), and asyncio's transport classes have a `__slots__` layout no native class
//! can share. So the transport is a Python object holding its native half in the `_core`
//! slot, and the methods called per packet are method descriptors created here for that
//! class, from the table [`METHODS`]: a call goes straight from the interpreter to
//! [`StreamTransport`], with no Python frame in between.
//!
//! Invariants: CPython calls these functions with the GIL held, with `self` an instance of
//! the class the descriptors were made for (the descriptor checks it); the method
//! definitions are leaked, so they live as long as the class. A Rust panic becomes a
//! `PanicException`, never an unwind into C.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::method_table::{fastcall_entry, install_methods, MethodEntry, NativeMethod};
use crate::stream::StreamTransport;

/// Parses the arguments of the forwarded method `name`, which takes the single parameter
/// `parameter` (or none), and finds the transport's native half: returns it and the
/// argument.
///
/// # Safety
/// As a `METH_FASTCALL | METH_KEYWORDS` function: `args` holds `nargs` positional arguments
/// followed by one value per name of `kwnames` (a tuple or NULL), borrowed for the call; the
/// GIL is held.
unsafe fn parse_forwarded<'py>(
    py: Python<'py>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    name: &str,
    parameter: Option<&str>,
) -> PyResult<(Bound<'py, StreamTransport>, Option<Bound<'py, PyAny>>)> {
    // SAFETY: (whole block) the pointers come from the vectorcall protocol, as the function's
    // contract states.
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
                if parameter.is_some_and(|p| keyword.to_str().is_ok_and(|k| k == p))
                    && argument.is_none()
                {
                    argument = Some(Bound::from_borrowed_ptr(py, value));
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got an unexpected keyword argument '{keyword}'"
                    )));
                }
            }
        }
        let expected = usize::from(parameter.is_some());
        if positional.len() + usize::from(argument.is_some()) != expected {
            return Err(PyTypeError::new_err(format!(
                "{name}() takes {} positional argument{} but {} were given",
                expected + 1,
                if expected == 0 { "" } else { "s" },
                positional.len() + 1
            )));
        }
        if let Some(&first) = positional.first() {
            argument = Some(Bound::from_borrowed_ptr(py, first));
        }
        let core = transport.getattr(pyo3::intern!(py, "_core"))?.cast_into::<StreamTransport>()?;
        Ok((core, argument))
    }
}

fastcall_entry! {
    /// The C function of `write(data)`.
    write_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a forwarded method, as the function requires.
        let (core, data) = unsafe {
            parse_forwarded(py, slf, args, nargs, kwnames, "write", Some("data"))
        }?;
        let data = data.expect("parse_forwarded checked it");
        StreamTransport::write(&core, &data).map(|()| py.None())
    }
}

fastcall_entry! {
    /// The C function of `writelines(list_of_data)`.
    writelines_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a forwarded method, as the function requires.
        let (core, list_of_data) = unsafe {
            parse_forwarded(py, slf, args, nargs, kwnames, "writelines", Some("list_of_data"))
        }?;
        let list_of_data = list_of_data.expect("parse_forwarded checked it");
        StreamTransport::writelines(&core, &list_of_data).map(|()| py.None())
    }
}

fastcall_entry! {
    /// The C function of `is_closing()`.
    is_closing_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a forwarded method, as the function requires.
        let (core, _) = unsafe {
            parse_forwarded(py, slf, args, nargs, kwnames, "is_closing", None)
        }?;
        Ok(core.get().is_closing(py).into_pyobject(py)?.to_owned().into_any().unbind())
    }
}

fastcall_entry! {
    /// The C function of `get_write_buffer_size()`.
    get_write_buffer_size_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a forwarded method, as the function requires.
        let (core, _) = unsafe {
            parse_forwarded(py, slf, args, nargs, kwnames, "get_write_buffer_size", None)
        }?;
        Ok(core.get().get_write_buffer_size(py).into_pyobject(py)?.into_any().unbind())
    }
}

fastcall_entry! {
    /// The C function of `is_reading()`.
    is_reading_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a forwarded method, as the function requires.
        let (core, _) = unsafe {
            parse_forwarded(py, slf, args, nargs, kwnames, "is_reading", None)
        }?;
        Ok(core.get().is_reading(py).into_pyobject(py)?.to_owned().into_any().unbind())
    }
}

fastcall_entry! {
    /// The C function of `pause_reading()`.
    pause_reading_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a forwarded method, as the function requires.
        let (core, _) = unsafe {
            parse_forwarded(py, slf, args, nargs, kwnames, "pause_reading", None)
        }?;
        StreamTransport::pause_reading(&core).map(|()| py.None())
    }
}

fastcall_entry! {
    /// The C function of `resume_reading()`.
    resume_reading_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a forwarded method, as the function requires.
        let (core, _) = unsafe {
            parse_forwarded(py, slf, args, nargs, kwnames, "resume_reading", None)
        }?;
        StreamTransport::resume_reading(&core).map(|()| py.None())
    }
}

/// The forwarded methods, in the order they are installed.
static METHODS: [NativeMethod; 7] = [
    NativeMethod {
        name: c"write",
        doc: c"write($self, data, /)\n--\n\nWrite a bytes-like object; it is sent at the end of the loop iteration (at once if the buffer is above the high-water mark).",
        entry: MethodEntry::FastWithKeywords(write_entry),
    },
    NativeMethod {
        name: c"writelines",
        doc: c"writelines($self, list_of_data, /)\n--\n\nWrite each bytes-like object of an iterable, in order.",
        entry: MethodEntry::FastWithKeywords(writelines_entry),
    },
    NativeMethod {
        name: c"is_closing",
        doc: c"is_closing($self, /)\n--\n\nWhether the transport is closing or closed.",
        entry: MethodEntry::FastWithKeywords(is_closing_entry),
    },
    NativeMethod {
        name: c"get_write_buffer_size",
        doc: c"get_write_buffer_size($self, /)\n--\n\nBytes written but not yet sent.",
        entry: MethodEntry::FastWithKeywords(get_write_buffer_size_entry),
    },
    NativeMethod {
        name: c"is_reading",
        doc: c"is_reading($self, /)\n--\n\nWhether the transport delivers incoming data.",
        entry: MethodEntry::FastWithKeywords(is_reading_entry),
    },
    NativeMethod {
        name: c"pause_reading",
        doc: c"pause_reading($self, /)\n--\n\nStop delivering incoming data until resume_reading().",
        entry: MethodEntry::FastWithKeywords(pause_reading_entry),
    },
    NativeMethod {
        name: c"resume_reading",
        doc: c"resume_reading($self, /)\n--\n\nDeliver incoming data again.",
        entry: MethodEntry::FastWithKeywords(resume_reading_entry),
    },
];

/// Installs the forwarded methods on `cls`, a Python class whose instances keep their
/// [`StreamTransport`] in `_core`: all of them, or those named in `names` (a read pipe has no
/// `write`, a write pipe no `pause_reading`).
#[pyfunction]
#[pyo3(signature = (cls, names=None))]
fn install_transport_methods(cls: &Bound<'_, PyType>, names: Option<Vec<String>>) -> PyResult<()> {
    if let Some(names) = &names {
        if let Some(unknown) =
            names.iter().find(|n| !METHODS.iter().any(|m| m.name() == n.as_str()))
        {
            return Err(PyTypeError::new_err(format!(
                "no native transport method named {unknown:?}"
            )));
        }
    }
    let selected = METHODS.iter().filter(|method| {
        names.as_ref().is_none_or(|names| names.iter().any(|n| n == method.name()))
    });
    install_methods(cls, selected)
}

/// Adds `install_transport_methods` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(install_transport_methods, m)?)
}
