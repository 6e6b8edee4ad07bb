//! Creating asyncio's own futures and tasks for the loop (`create_future`, `create_task`).
//!
//! Invariants: called with the GIL held, on the loop's behalf. The classes are looked up in
//! `asyncio.futures` / `asyncio.tasks` at each call (as asyncio does), so a patched
//! `asyncio.tasks.Task` is honoured; keyword arguments go through vectorcall with interned
//! keyword names, so no dict is built per call.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

/// `module.attribute`, read from the module's namespace each time (so that a patched
/// `asyncio.tasks.Task` is honoured, as asyncio's own `tasks.Task(...)` honours it), without
/// the generic attribute lookup. The namespace is looked up once.
fn module_attribute<'py>(
    py: Python<'py>,
    namespace: &'static PyOnceLock<Py<PyDict>>,
    module: &str,
    attribute: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    let namespace =
        namespace.get_or_try_init(py, || py.import(module).map(|m| m.dict().unbind()))?.bind(py);
    match namespace.get_item(attribute)? {
        Some(value) => Ok(value),
        None => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
            "module '{module}' has no attribute '{attribute}'"
        ))),
    }
}

/// An interned tuple of keyword names.
fn kwnames<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyTuple>>,
    names: &[&str],
) -> PyResult<&'py Bound<'py, PyTuple>> {
    cell.get_or_try_init(py, || {
        let names: Vec<Bound<'_, PyString>> =
            names.iter().map(|n| PyString::intern(py, n)).collect();
        PyTuple::new(py, names).map(Bound::unbind)
    })
    .map(|t| t.bind(py))
}

/// The most arguments [`call_with_keywords`] passes (`Task(coro, loop=, name=, context=)`).
const MAX_ARGUMENTS: usize = 4;

/// `callable(*positional, **dict(zip(names, keywords)))` by vectorcall.
fn call_with_keywords<'py>(
    callable: &Bound<'py, PyAny>,
    positional: &[&Bound<'py, PyAny>],
    keywords: &[&Bound<'py, PyAny>],
    names: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    debug_assert_eq!(keywords.len(), names.len());
    let mut args = [std::ptr::null_mut::<ffi::PyObject>(); MAX_ARGUMENTS];
    for (slot, arg) in args.iter_mut().zip(positional.iter().chain(keywords.iter())) {
        *slot = arg.as_ptr();
    }
    assert!(
        positional.len() + keywords.len() <= MAX_ARGUMENTS,
        "too many arguments for call_with_keywords"
    );
    // SAFETY: every pointer in `args` is borrowed from a live Bound for the whole call; the
    // last `names.len()` entries are the keyword values, as vectorcall's protocol requires;
    // the result is a new reference or NULL with an exception set.
    unsafe {
        let result = ffi::PyObject_Vectorcall(
            callable.as_ptr(),
            args.as_ptr(),
            positional.len(),
            names.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// `asyncio.futures.Future(loop=event_loop)`.
pub(crate) fn create_future<'py>(event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    static FUTURES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    static NAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    let py = event_loop.py();
    let future_class =
        module_attribute(py, &FUTURES, "asyncio.futures", pyo3::intern!(py, "Future"))?;
    call_with_keywords(&future_class, &[], &[event_loop], kwnames(py, &NAMES, &["loop"])?)
}

/// asyncio's `create_task`: `asyncio.tasks.Task(coro, loop=..., name=..., context=...)`, or the
/// task factory's `factory(loop, coro[, context=...], **kwargs)` followed by naming the task.
pub(crate) fn create_task<'py>(
    event_loop: &Bound<'py, PyAny>,
    factory: Option<Bound<'py, PyAny>>,
    coro: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
    context: &Bound<'py, PyAny>,
    extra: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    static TASKS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    static LOOP: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    static LOOP_NAME: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    static LOOP_CONTEXT: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    static LOOP_NAME_CONTEXT: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    let py = event_loop.py();
    let Some(factory) = factory else {
        let task_class = module_attribute(py, &TASKS, "asyncio.tasks", pyo3::intern!(py, "Task"))?;
        if extra.is_some_and(|kw| !kw.is_empty()) {
            let kwargs = extra.expect("checked above").copy()?;
            kwargs.set_item("loop", event_loop)?;
            kwargs.set_item("name", name)?;
            kwargs.set_item("context", context)?;
            return task_class.call((coro,), Some(&kwargs));
        }
        // Keywords that are None are left out: they are the Task's defaults, and each keyword
        // is a dictionary entry (Task has no vectorcall).
        return match (name.is_none(), context.is_none()) {
            (true, true) => call_with_keywords(
                &task_class,
                &[coro],
                &[event_loop],
                kwnames(py, &LOOP, &["loop"])?,
            ),
            (false, true) => call_with_keywords(
                &task_class,
                &[coro],
                &[event_loop, name],
                kwnames(py, &LOOP_NAME, &["loop", "name"])?,
            ),
            (true, false) => call_with_keywords(
                &task_class,
                &[coro],
                &[event_loop, context],
                kwnames(py, &LOOP_CONTEXT, &["loop", "context"])?,
            ),
            (false, false) => call_with_keywords(
                &task_class,
                &[coro],
                &[event_loop, name, context],
                kwnames(py, &LOOP_NAME_CONTEXT, &["loop", "name", "context"])?,
            ),
        };
    };
    let kwargs = match extra {
        Some(kw) => kw.copy()?,
        None => PyDict::new(py),
    };
    if !context.is_none() {
        kwargs.set_item("context", context)?;
    }
    let task = factory.call((event_loop, coro), Some(&kwargs))?;
    if !name.is_none() {
        task.call_method1(pyo3::intern!(py, "set_name"), (name,))?;
    }
    Ok(task)
}

/// asyncio's check of a task factory: callable or None.
pub(crate) fn check_task_factory(factory: &Bound<'_, PyAny>) -> PyResult<()> {
    if !factory.is_none() && !factory.is_callable() {
        return Err(PyTypeError::new_err("task factory must be a callable or None"));
    }
    Ok(())
}
