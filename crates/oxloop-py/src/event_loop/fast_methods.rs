//! Hand-written vectorcall entry points for `call_soon`, `call_soon_threadsafe`, `call_later`,
//! `call_at` and `create_task`.
//!
//! These are called for every callback, timer and task asyncio schedules (by every task step
//! and future completion, from C), so their argument parsing matters: PyO3's generic parser
//! for `(callback, *args, context=None)` costs more than the rest of the call. These functions
//! read the vectorcall arguments directly and then call the loop's implementation
//! (`LoopCore::schedule_soon` / `LoopCore::schedule_timer` / `LoopCore::spawn_task`).
//!
//! Invariants: CPython calls them with the GIL held (they are `METH_FASTCALL | METH_KEYWORDS`
//! methods installed on `LoopCore` at module initialisation from the table [`METHODS`], with
//! method definitions that live for the life of the process). They never unwind into C: a
//! Rust panic becomes a `PanicException`.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyString, PyTuple, PyType};

use super::LoopCore;
use crate::method_table::{fastcall_entry, install_methods, MethodEntry, NativeMethod};

/// Which scheduling method an entry function implements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `call_soon(callback, *args, context=None)`.
    Soon,
    /// `call_soon_threadsafe(callback, *args, context=None)`.
    SoonThreadsafe,
    /// `call_later(delay, callback, *args, context=None)`.
    Later,
    /// `call_at(when, callback, *args, context=None)`.
    At,
}

impl Call {
    /// The method's name, for error messages.
    const fn name(self) -> &'static str {
        match self {
            Call::Soon => "call_soon",
            Call::SoonThreadsafe => "call_soon_threadsafe",
            Call::Later => "call_later",
            Call::At => "call_at",
        }
    }

    /// The name of the time argument that precedes `callback`, if any.
    const fn time_parameter(self) -> Option<&'static str> {
        match self {
            Call::Soon | Call::SoonThreadsafe => None,
            Call::Later => Some("delay"),
            Call::At => Some("when"),
        }
    }
}

/// Parses `([time,] callback, *args, context=None)` and schedules the callback.
///
/// # Safety
/// `args` points to `nargs` positional arguments followed by one value per name in
/// `kwnames` (a tuple, or NULL), all borrowed for the duration of the call, as vectorcall
/// guarantees; the GIL is held; `slf` is a `LoopCore` (the method descriptor checked it).
unsafe fn schedule_from_vectorcall(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    call: Call,
) -> PyResult<Py<PyAny>> {
    let name = call.name();
    // SAFETY: (whole block) the pointers come from CPython's vectorcall protocol, as the
    // function's contract states.
    unsafe {
        // The method descriptor has already checked that `slf` is a LoopCore (or a subclass):
        // CPython's method_descriptor calls verify the type of `self`.
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>();
        let mut positional = std::slice::from_raw_parts(args, nargs as usize).iter();
        let mut time = match call.time_parameter() {
            Some(_) => positional.next().map(|&arg| Bound::from_borrowed_ptr(py, arg)),
            None => None,
        };
        let mut callback = positional.next().map(|&arg| Bound::from_borrowed_ptr(py, arg));
        let rest = positional.as_slice();
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
            for (keyword, &value) in names.iter().zip(values) {
                let value = Bound::from_borrowed_ptr(py, value);
                // Keyword names are almost always the interned string itself.
                let is = |expected: &str| {
                    keyword
                        .cast::<PyString>()
                        .is_ok_and(|k| k.to_str().is_ok_and(|k| k == expected))
                };
                let slot = if keyword.is(context_name) || is("context") {
                    &mut context
                } else if is("callback") {
                    &mut callback
                } else if call.time_parameter().is_some_and(is) {
                    &mut time
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got an unexpected keyword argument '{keyword}'"
                    )));
                };
                if slot.replace(value).is_some() {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got multiple values for argument '{keyword}'"
                    )));
                }
            }
        }
        let missing = |parameter: &str| {
            PyTypeError::new_err(format!(
                "{name}() missing 1 required positional argument: '{parameter}'"
            ))
        };
        let time = match call.time_parameter() {
            Some(parameter) => Some(time.ok_or_else(|| missing(parameter))?),
            None => None,
        };
        let callback = callback.ok_or_else(|| missing("callback"))?;
        match (call, time) {
            (Call::Soon | Call::SoonThreadsafe, _) => {
                let threadsafe = call == Call::SoonThreadsafe;
                LoopCore::schedule_soon(&slf, callback, rest, context, threadsafe).map(Py::into_any)
            }
            (Call::Later | Call::At, Some(time)) => {
                if time.is_none() {
                    let message = if call == Call::At {
                        "when cannot be None"
                    } else {
                        "delay must not be None"
                    };
                    return Err(PyTypeError::new_err(message));
                }
                let mut when: f64 = time.extract()?;
                let given_when = match call {
                    Call::Later => {
                        when += slf.get().scheduling_now(py)?;
                        None
                    }
                    _ => (!time.is_exact_instance_of::<PyFloat>()).then_some(time),
                };
                LoopCore::schedule_timer(&slf, when, given_when, callback, rest, context, "call_at")
                    .map(Py::into_any)
            }
            (Call::Later | Call::At, None) => {
                unreachable!("timer methods always have a time parameter")
            }
        }
    }
}

fastcall_entry! {
    /// The C function of `call_soon`.
    call_soon_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a `LoopCore` method, as the function requires.
        unsafe { schedule_from_vectorcall(py, slf, args, nargs, kwnames, Call::Soon) }
    }
}

fastcall_entry! {
    /// The C function of `call_soon_threadsafe`.
    call_soon_threadsafe_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a `LoopCore` method, as the function requires.
        unsafe { schedule_from_vectorcall(py, slf, args, nargs, kwnames, Call::SoonThreadsafe) }
    }
}

fastcall_entry! {
    /// The C function of `call_later`.
    call_later_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a `LoopCore` method, as the function requires.
        unsafe { schedule_from_vectorcall(py, slf, args, nargs, kwnames, Call::Later) }
    }
}

fastcall_entry! {
    /// The C function of `call_at`.
    call_at_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a `LoopCore` method, as the function requires.
        unsafe { schedule_from_vectorcall(py, slf, args, nargs, kwnames, Call::At) }
    }
}

/// Parses `(coro, *, name=None, context=None, **kwargs)` and creates the task.
///
/// # Safety
/// As for [`schedule_from_vectorcall`].
unsafe fn create_task_from_vectorcall(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    // SAFETY: (whole block) the pointers come from CPython's vectorcall protocol, as the
    // function's contract states.
    unsafe {
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>();
        if nargs > 1 {
            return Err(PyTypeError::new_err(format!(
                "create_task() takes 1 positional argument but {nargs} were given"
            )));
        }
        let mut coro = (nargs == 1).then(|| Bound::from_borrowed_ptr(py, *args));
        let (mut name, mut context, mut extra) = (None, None, None::<Bound<'_, PyDict>>);
        if !kwnames.is_null() {
            let names = Bound::from_borrowed_ptr(py, kwnames).cast_into::<PyTuple>()?;
            let values = std::slice::from_raw_parts(args.add(nargs as usize), names.len());
            for (keyword, &value) in names.iter().zip(values) {
                let value = Bound::from_borrowed_ptr(py, value);
                let slot = match keyword.cast::<PyString>().map(|k| k.to_str()) {
                    Ok(Ok("coro")) => &mut coro,
                    Ok(Ok("name")) => &mut name,
                    Ok(Ok("context")) => &mut context,
                    _ => {
                        extra.get_or_insert_with(|| PyDict::new(py)).set_item(keyword, value)?;
                        continue;
                    }
                };
                if slot.replace(value).is_some() {
                    return Err(PyTypeError::new_err(format!(
                        "create_task() got multiple values for argument '{keyword}'"
                    )));
                }
            }
        }
        let coro = coro.ok_or_else(|| {
            PyTypeError::new_err("create_task() missing 1 required positional argument: 'coro'")
        })?;
        LoopCore::spawn_task(&slf, &coro, name, context, extra.as_ref()).map(Bound::unbind)
    }
}

fastcall_entry! {
    /// The C function of `create_task`.
    create_task_entry(py, slf, args, nargs, kwnames) {
        // SAFETY: the vectorcall arguments of a `LoopCore` method, as the function requires.
        unsafe { create_task_from_vectorcall(py, slf, args, nargs, kwnames) }
    }
}

/// The hand-written methods of `LoopCore`.
static METHODS: [NativeMethod; 5] = [
    NativeMethod {
        name: c"call_soon",
        doc: c"call_soon($self, callback, *args, context=None)\n--\n\nSchedule callback(*args) for the next iteration; return its Handle.",
        entry: MethodEntry::FastWithKeywords(call_soon_entry),
    },
    NativeMethod {
        name: c"call_soon_threadsafe",
        doc: c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), callable from any thread and from signal handlers: wakes the loop.",
        entry: MethodEntry::FastWithKeywords(call_soon_threadsafe_entry),
    },
    NativeMethod {
        name: c"call_later",
        doc: c"call_later($self, delay, callback, *args, context=None)\n--\n\nSchedule callback(*args) after delay seconds; return its TimerHandle.",
        entry: MethodEntry::FastWithKeywords(call_later_entry),
    },
    NativeMethod {
        name: c"call_at",
        doc: c"call_at($self, when, callback, *args, context=None)\n--\n\nSchedule callback(*args) at when on the loop's clock; return its TimerHandle.",
        entry: MethodEntry::FastWithKeywords(call_at_entry),
    },
    NativeMethod {
        name: c"create_task",
        doc: c"create_task($self, coro, *, name=None, context=None, **kwargs)\n--\n\nWrap the coroutine coro in a Task (or what the task factory makes) and schedule its first step.",
        entry: MethodEntry::FastWithKeywords(create_task_entry),
    },
];

/// Installs the hand-written methods on `LoopCore`.
pub(crate) fn install(loop_type: &Bound<'_, PyType>) -> PyResult<()> {
    install_methods(loop_type, &METHODS)
}
