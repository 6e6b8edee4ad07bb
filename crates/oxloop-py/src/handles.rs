//! `Handle` and `TimerHandle`: a scheduled callback, its arguments and its context.
//!
//! Invariants:
//! - Handles are only touched with the GIL held (every method is called from Python, and the
//!   loop runs them holding the GIL). The callback lives in a [`GilCell`], borrowed for a few
//!   loads by the rule stated there.
//! - `cancel()` drops the callback and its arguments at once (a cancelled
//!   `wait_for(..., 3600)` holds no memory for an hour); the entry left in the timer heap is an
//!   empty shell purged lazily.
//! - Running a handle calls the callback inside its `contextvars.Context` with
//!   `PyContext_Enter`/`PyObject_Vectorcall`/`PyContext_Exit`: no tuple, no bound method.
//! - The garbage collector does not see what a handle refers to (no `__traverse__`:
//!   traversing every pending handle in each collection costs more than the rest of
//!   `call_soon`; handles reused from the freelist are not even tracked). So a handle never
//!   stays in a reference cycle once it is done: a one-shot handle drops its callback when it
//!   has run (after the exception handler has seen it, if it raised), every handle drops it
//!   when cancelled, and the loop drops the callbacks of everything still pending when it
//!   closes or is freed. A handle refers to its loop through [`LoopRef`], never to the Python loop
//!   object, so an unclosed loop is still collected (and warns, as asyncio's does).
//! - The context copy a handle makes for itself is untracked by the collector while the
//!   handle holds it (see [`HandleContext`]).

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use oxloop_core::timers::TimerItem;

use crate::event_loop::LoopRef;
use crate::gil_cell::GilCell;
use crate::glue::{copy_current_context, is_fatal};

/// What a handle calls: the callback and its positional arguments.
pub(crate) struct Callback {
    func: Py<PyAny>,
    args: Py<PyTuple>,
}

impl Callback {
    /// Builds a callback.
    pub(crate) fn new(func: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> Self {
        Callback { func: func.unbind(), args: args.unbind() }
    }
}

/// The `contextvars.Context` a handle runs in: the one given (`context=`), or a copy of the
/// current context, as asyncio does.
///
/// A copy made for the handle is untracked by the garbage collector while only the handle
/// holds it. The handle itself is invisible to the collector (see the module invariants), so
/// tracking its private copy would only make every collection walk the contexts of all
/// pending handles, which it could never free anyway (with 40,000 pending `call_soon`s, a
/// sixth of their cost). While the handle lives, the copy is reachable from it anyway, and
/// the collector cannot free it whoever else refers to it; the copy is tracked again when the
/// handle drops its reference, so that from then on a cycle through it can be freed (and
/// because the context's deallocator expects a tracked object). Dropped only with the GIL
/// held (handles are freed by their `tp_dealloc`).
pub(crate) struct HandleContext(Py<PyAny>);

impl HandleContext {
    /// `context`, or (None) an untracked copy of the current context.
    pub(crate) fn given_or_copied(
        py: Python<'_>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        match context {
            Some(context) if !context.is_none() => Ok(HandleContext(context.unbind())),
            _ => {
                let copy = copy_current_context(py)?;
                // SAFETY: the GIL is held and `copy` is a new context no one else refers to;
                // untracking a tracked container is always allowed.
                unsafe { ffi::PyObject_GC_UnTrack(copy.as_ptr().cast()) };
                Ok(HandleContext(copy))
            }
        }
    }

    /// The context, for running the callback in it.
    fn bind<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.0.bind(py)
    }

    /// A new reference to the context.
    fn clone_ref(&self, py: Python<'_>) -> Py<PyAny> {
        self.0.clone_ref(py)
    }
}

impl Drop for HandleContext {
    fn drop(&mut self) {
        // Tracked again before the reference is dropped: the context's deallocator unlinks it
        // from the collector's lists unconditionally, and something else may keep it alive
        // (in a cycle, possibly).
        track(&self.0);
    }
}

/// Makes the collector track `context` if it does not already.
fn track(context: &Py<PyAny>) {
    // SAFETY: called with the GIL held on a live context object (a GC-capable type); it is
    // tracked only if it is not already, which `PyObject_GC_Track` requires.
    unsafe {
        if ffi::PyObject_GC_IsTracked(context.as_ptr()) == 0 {
            ffi::PyObject_GC_Track(context.as_ptr().cast());
        }
    }
}

/// `PyObject_Vectorcall` as a function that may unwind. On CPython before 3.14 a daemon
/// thread that takes the GIL back once interpreter shutdown has begun (a callback returning
/// from `time.sleep`, say) is ended with `pthread_exit`, whose forced unwinding aborts the
/// process at a call of a function declared "C".
type VectorcallMayUnwind = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// The function, read with a volatile load (see [`vectorcall_may_unwind`]).
// SAFETY: "C" and "C-unwind" functions have the same calling convention; the second only
// allows unwinding out of the call, which is what CPython's `pthread_exit` does.
static VECTORCALL_MAY_UNWIND: VectorcallMayUnwind = unsafe {
    std::mem::transmute::<
        unsafe extern "C" fn(
            *mut ffi::PyObject,
            *const *mut ffi::PyObject,
            usize,
            *mut ffi::PyObject,
        ) -> *mut ffi::PyObject,
        VectorcallMayUnwind,
    >(ffi::PyObject_Vectorcall)
};

/// [`VECTORCALL_MAY_UNWIND`], read so that the optimizer cannot see which function it is: PyO3
/// declares the same symbol "C", and a call the optimizer sees going to it loses its landing
/// pad.
#[inline(always)]
fn vectorcall_may_unwind() -> VectorcallMayUnwind {
    // SAFETY: a read of an initialized, never written static.
    unsafe { std::ptr::read_volatile(&VECTORCALL_MAY_UNWIND) }
}

/// Held across a call into Python: dropped only when the thread is being ended by
/// `pthread_exit` during interpreter shutdown (see [`vectorcall_may_unwind`]), it parks the
/// thread forever instead of unwinding through the loop's frames, as PyO3 does when it takes
/// the GIL and as CPython 3.14 does itself. The process exits; the daemon thread never runs again.
struct ParkIfEnded;

impl Drop for ParkIfEnded {
    fn drop(&mut self) {
        loop {
            std::thread::park();
        }
    }
}

/// Calls `func(*args)` inside `context`, without building a tuple or a bound method.
fn call_in_context(
    py: Python<'_>,
    func: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    context: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: all three objects are alive (borrowed from Bound values) and the GIL is held.
    // `args` is an exact tuple, so its items are a contiguous array of `len` pointers, which
    // is exactly what vectorcall takes. Enter and exit are paired whatever the call returns
    // (a call that never returns parks the thread; see `ParkIfEnded`).
    unsafe {
        if ffi::PyContext_Enter(context.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        let nargs = ffi::PyTuple_GET_SIZE(args.as_ptr());
        let items = (*args.as_ptr().cast::<ffi::PyTupleObject>()).ob_item.as_mut_ptr();
        let ended = ParkIfEnded;
        let result =
            vectorcall_may_unwind()(func.as_ptr(), items, nargs as usize, std::ptr::null_mut());
        std::mem::forget(ended);
        let call_result = if result.is_null() {
            Err(PyErr::fetch(py))
        } else {
            ffi::Py_DECREF(result);
            Ok(())
        };
        let exit_status: c_int = ffi::PyContext_Exit(context.as_ptr());
        if exit_status < 0 && call_result.is_ok() {
            return Err(PyErr::fetch(py));
        }
        call_result
    }
}

/// `asyncio.format_helpers._format_callback_source(func, args)`, looked up once. From Python
/// 3.13 it shows the arguments only in debug mode (they may hold secrets), and asyncio's
/// handles pass it their loop's `debug` flag; before 3.13 it always shows them.
fn format_callback_source(
    py: Python<'_>,
    func: &Py<PyAny>,
    args: &Py<PyTuple>,
    debug: bool,
) -> PyResult<String> {
    static FORMAT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let format = FORMAT.import(py, "asyncio.format_helpers", "_format_callback_source")?;
    if py.version_info() >= (3, 13) {
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "debug"), debug)?;
        format.call((func, args), Some(&kwargs))?.extract()
    } else {
        format.call1((func, args))?.extract()
    }
}

/// What few handles carry (boxed: most never have any): what debug mode records, and the
/// deadline given to `call_at` when it was not a float.
#[derive(Default)]
struct RareFields {
    /// Where the handle was created: asyncio's `_source_traceback`.
    source_traceback: Option<Py<PyAny>>,
    /// The repr captured when the handle was cancelled, as asyncio keeps it.
    cancelled_repr: Option<String>,
    /// `call_at`'s `when` as given (an int, say): asyncio's `when()` returns it unchanged.
    given_when: Option<Py<PyAny>>,
}

/// The part of a handle that changes: its callback goes when it has run or is cancelled.
struct HandleState {
    callback: Option<Callback>,
    rare: Option<Box<RareFields>>,
}

/// A callback scheduled on the loop: returned by `call_soon`, `add_reader` and friends.
///
/// Small on purpose (a pending `call_soon` is this object and its context copy): with many
/// callbacks pending, their memory is what the loop spends its time on.
#[pyclass(module = "oxloop._core", subclass, weakref, frozen)]
pub struct Handle {
    state: GilCell<HandleState>,
    /// The `contextvars.Context` the callback runs in; kept after cancellation, as asyncio does.
    context: HandleContext,
    shared: LoopRef,
    cancelled: AtomicBool,
    /// Dropped after the first run (`call_soon`, timers) rather than kept (fd watchers).
    one_shot: bool,
}

impl Handle {
    /// A new, not yet scheduled handle.
    pub(crate) fn new(
        shared: LoopRef,
        callback: Callback,
        context: HandleContext,
        one_shot: bool,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        let rare = source_traceback
            .map(|tb| Box::new(RareFields { source_traceback: Some(tb), ..RareFields::default() }));
        Handle {
            state: GilCell::new(HandleState { callback: Some(callback), rare }),
            context,
            shared,
            cancelled: AtomicBool::new(false),
            one_shot,
        }
    }

    /// asyncio's `_source_traceback`: where the handle was created, in debug mode.
    fn source_traceback<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let state = self.state.borrow_mut(py);
        state.rare.as_ref().and_then(|r| r.source_traceback.as_ref()).map(|tb| tb.bind(py).clone())
    }

    /// The deadline `call_at` was given, when it was not a float.
    fn given_when(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let state = self.state.borrow_mut(py);
        state.rare.as_ref().and_then(|r| r.given_when.as_ref()).map(|when| when.clone_ref(py))
    }

    /// Keeps the deadline `call_at` was given (not a float) for `TimerHandle.when()`.
    pub(crate) fn keep_given_when(&self, py: Python<'_>, when: Py<PyAny>) {
        self.state.borrow_mut(py).rare.get_or_insert_default().given_when = Some(when);
    }

    /// Whether `cancel()` was called.
    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The callback's parts, as new references (so that no borrow is alive during the call).
    fn callback_parts<'py>(
        &self,
        py: Python<'py>,
    ) -> Option<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let state = self.state.borrow_mut(py);
        state.callback.as_ref().map(|cb| (cb.func.bind(py).clone(), cb.args.bind(py).clone()))
    }

    /// Marks the handle cancelled and drops its callback. Returns whether it was live.
    fn cancel_base(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let this = slf.get();
        if this.is_cancelled() {
            return Ok(false);
        }
        this.cancelled.store(true, Ordering::Relaxed);
        if this.shared.debug_enabled() {
            let text = Self::render_repr(slf)?;
            this.state.borrow_mut(slf.py()).rare.get_or_insert_default().cancelled_repr =
                Some(text);
        }
        this.release_callback(slf.py());
        Ok(true)
    }

    /// After the loop ran the handle: a one-shot handle drops its callback.
    pub(crate) fn finish(&self, py: Python<'_>) {
        if self.one_shot {
            self.release_callback(py);
        }
    }

    /// Visits what the handle refers to (callback, arguments, context), for the traversal of
    /// a loop that holds the handle's only reference (see `LoopCore::__traverse__`).
    pub(crate) fn traverse_contents(
        &self,
        py: Python<'_>,
        visit: &PyVisit<'_>,
    ) -> Result<(), PyTraverseError> {
        if let Some(state) = self.state.try_borrow_mut(py) {
            if let Some(callback) = state.callback.as_ref() {
                visit.call(&callback.func)?;
                visit.call(&callback.args)?;
            }
        }
        visit.call(&self.context.0)
    }

    /// Drops the callback, its arguments and its context (the handle is done or abandoned).
    pub(crate) fn release_callback(&self, py: Python<'_>) {
        let dropped = self.state.borrow_mut(py).callback.take();
        drop(dropped); // after the borrow ends: dropping may run arbitrary finalizers
    }

    /// Runs the callback in its context. Exceptions other than `SystemExit` and
    /// `KeyboardInterrupt` go to the loop's exception handler, as asyncio's `Handle._run` does;
    /// those two (and an exception raised by the handler itself) propagate.
    ///
    /// With `consume`, a one-shot handle gives up its callback for the call (the loop's fast
    /// path); otherwise the loop calls [`Handle::finish`] when it is done with the handle.
    pub(crate) fn run(slf: &Bound<'_, Self>, consume: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let consumed = consume && this.one_shot;
        let parts = if consumed {
            this.state
                .borrow_mut(py)
                .callback
                .take()
                .map(|cb| (cb.func.into_bound(py), cb.args.into_bound(py)))
        } else {
            this.callback_parts(py)
        };
        let Some((func, args)) = parts else {
            return Ok(());
        };
        match call_in_context(py, &func, &args, this.context.bind(py)) {
            Ok(()) => Ok(()),
            Err(err) => {
                if is_fatal(py, &err) {
                    return Err(err);
                }
                this.shared.note_callback_error(py);
                let (func, args) = (func.unbind(), args.unbind());
                let source = format_callback_source(py, &func, &args, this.shared.debug_enabled())?;
                if consumed {
                    // The exception handler sees the handle as asyncio shows it: with its callback.
                    this.state.borrow_mut(py).callback = Some(Callback { func, args });
                }
                let context = PyDict::new(py);
                context.set_item("message", format!("Exception in callback {source}"))?;
                context.set_item("exception", err.value(py))?;
                context.set_item("handle", slf)?;
                if let Some(tb) = this.source_traceback(py) {
                    if tb.is_truthy()? {
                        context.set_item("source_traceback", tb)?;
                    }
                }
                let reported = match this.shared.loop_object(py) {
                    Some(event_loop) => {
                        event_loop.call_method1("call_exception_handler", (context,)).map(drop)
                    }
                    None => {
                        err.write_unraisable(py, Some(slf.as_any()));
                        Ok(())
                    }
                };
                if consumed {
                    this.release_callback(py);
                }
                reported
            }
        }
    }

    /// The words of asyncio's `Handle._repr_info()`.
    fn repr_info(slf: &Bound<'_, Self>) -> PyResult<Vec<String>> {
        let py = slf.py();
        let this = slf.get();
        let mut info = vec![slf.get_type().name()?.to_string()];
        if this.is_cancelled() {
            info.push("cancelled".to_owned());
        }
        let parts = this.callback_parts(py);
        if let Some((func, args)) = parts {
            info.push(format_callback_source(
                py,
                &func.unbind(),
                &args.unbind(),
                this.shared.debug_enabled(),
            )?);
        }
        if let Some(tb) = this.source_traceback(py) {
            if tb.is_truthy()? {
                let frame = tb.get_item(-1)?;
                info.push(format!("created at {}:{}", frame.get_item(0)?, frame.get_item(1)?));
            }
        }
        Ok(info)
    }

    /// `<Handle callback(args) at file:line>`, or the repr captured at cancellation.
    fn render_repr(slf: &Bound<'_, Self>) -> PyResult<String> {
        let cancelled_repr = slf
            .get()
            .state
            .borrow_mut(slf.py())
            .rare
            .as_ref()
            .and_then(|r| r.cancelled_repr.clone());
        if let Some(text) = cancelled_repr {
            return Ok(text);
        }
        let mut info = Self::repr_info(slf)?;
        if let Ok(timer) = slf.cast::<TimerHandle>() {
            let when = TimerHandle::when(timer)?.bind(slf.py()).str()?;
            info.insert(if slf.get().is_cancelled() { 2 } else { 1 }, format!("when={when}"));
        }
        Ok(format!("<{}>", info.join(" ")))
    }
}

#[pymethods]
impl Handle {
    /// Cancels the call: the callback will not run, and its references are dropped now.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::cancel_base(slf)?;
        Ok(())
    }

    /// Whether the call was cancelled.
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The `contextvars.Context` the callback runs in.
    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    /// Runs the callback now, as the loop would (asyncio's `Handle._run`).
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run(slf, false)
    }

    /// The callback, or None once cancelled.
    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let state = self.state.borrow_mut(py);
        state.callback.as_ref().map(|cb| cb.func.clone_ref(py))
    }

    /// The positional arguments, or None once cancelled.
    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        let state = self.state.borrow_mut(py);
        state.callback.as_ref().map(|cb| cb.args.clone_ref(py))
    }

    /// Whether the call was cancelled (asyncio's attribute).
    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The loop the handle belongs to (None once that loop was freed).
    #[getter]
    fn _loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.shared.loop_object(py)
    }

    /// The context (asyncio's attribute).
    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.get_context(py)
    }

    /// Where the handle was created, in debug mode; None otherwise.
    #[getter]
    fn _source_traceback<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.source_traceback(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        Self::render_repr(slf)
    }
}

/// A callback scheduled for a point in time: returned by `call_later` and `call_at`.
#[pyclass(module = "oxloop._core", extends = Handle, frozen)]
pub struct TimerHandle {
    when: f64,
    /// The push number the loop's heap gave the timer, shifted left by one, and in the low
    /// bit whether the timer is still in the heap (asyncio's `_scheduled`).
    heap_state: AtomicU64,
}

impl TimerHandle {
    /// A timer due at `when` on the loop's clock, not yet in the heap.
    pub(crate) fn new(when: f64) -> Self {
        TimerHandle { when, heap_state: AtomicU64::new(0) }
    }

    /// The deadline.
    pub(crate) fn deadline(&self) -> f64 {
        self.when
    }

    /// Whether the timer is in the heap.
    fn is_scheduled(&self) -> bool {
        self.heap_state.load(Ordering::Relaxed) & 1 == 1
    }
}

/// A timer as the loop's heap holds it. Being given a push number is being put in the heap,
/// so it also marks the timer scheduled; leaving the heap marks it unscheduled.
pub(crate) struct ScheduledTimer(pub(crate) Py<TimerHandle>);

impl TimerItem for ScheduledTimer {
    fn set_push_number(&self, number: u64) {
        self.0.get().heap_state.store(number << 1 | 1, Ordering::Relaxed);
    }

    fn push_number(&self) -> u64 {
        self.0.get().heap_state.load(Ordering::Relaxed) >> 1
    }

    fn left_heap(&self) {
        self.0.get().heap_state.fetch_and(!1, Ordering::Relaxed);
    }
}

impl std::ops::Deref for ScheduledTimer {
    type Target = Py<TimerHandle>;

    fn deref(&self) -> &Py<TimerHandle> {
        &self.0
    }
}

#[pymethods]
impl TimerHandle {
    /// Cancels the timer; the loop purges it from its heap lazily.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let base = slf.as_super();
        if Handle::cancel_base(base)? && slf.get().is_scheduled() {
            base.get().shared.timer_cancelled(slf.py());
        }
        Ok(())
    }

    /// The absolute time (on the loop's clock) the callback is scheduled for, as `call_at`
    /// was given it (an int stays an int).
    fn when(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match slf.as_super().get().given_when(py) {
            Some(when) => Ok(when),
            None => Ok(slf.get().when.into_pyobject(py)?.into_any().unbind()),
        }
    }

    /// The deadline (asyncio's attribute), as `when()` gives it.
    #[getter]
    fn _when(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Self::when(slf)
    }

    /// Whether the timer is still in the loop's heap (asyncio's attribute).
    #[getter]
    fn _scheduled(&self) -> bool {
        self.is_scheduled()
    }

    /// `hash(when)`, as asyncio's `TimerHandle`.
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.when.into_pyobject(py)?.hash()
    }

    /// Timers order by deadline; equal timers have the same deadline, callback, arguments and
    /// cancellation state (asyncio's `TimerHandle` comparisons).
    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let equal = || -> PyResult<bool> {
            if a != b {
                return Ok(false);
            }
            let (mine, theirs) = (slf.as_super().get(), other.as_super().get());
            if mine.is_cancelled() != theirs.is_cancelled() {
                return Ok(false);
            }
            match (mine.callback_parts(py), theirs.callback_parts(py)) {
                (None, None) => Ok(true),
                (Some((f1, a1)), Some((f2, a2))) => Ok(f1.eq(f2)? && a1.eq(a2)?),
                _ => Ok(false),
            }
        };
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Gt => a > b,
            CompareOp::Le => a < b || equal()?,
            CompareOp::Ge => a > b || equal()?,
            CompareOp::Eq => equal()?,
            CompareOp::Ne => !equal()?,
        };
        Ok(result.into_pyobject(py)?.to_owned().into_any().unbind())
    }
}
