//! `oxloop._core`: the native half of oxloop.
//!
//! Invariants: every object here is used with the GIL held, except the reactor's wait, which
//! releases it (see `event_loop`). Python code in `python/oxloop/` builds the public `Loop`
//! on top of [`event_loop::LoopCore`]; handles and timers are [`handles::Handle`] and
//! [`handles::TimerHandle`]. No function here owns a caller's file descriptor.

use pyo3::prelude::*;

mod alloc;
mod datagram;
mod dns;
mod event_loop;
mod fastcall;
mod futures;
mod gil_cell;
mod handles;
mod sockaddr;
mod tls;
mod transport;
mod transport_methods;

/// Panics with `message`. It exists so the test suite can check that a panic in oxloop's
/// native code surfaces as a Python exception (`pyo3_runtime.PanicException`, a
/// `BaseException`) and never aborts the interpreter.
#[pyfunction]
fn _panic_for_tests(message: &str) -> PyResult<()> {
    panic!("{message}")
}

/// The extension module. It needs the GIL (`gil_used`): the native state is guarded by it
/// (`gil_cell`, the free lists in `alloc`), so a free-threaded interpreter must keep the GIL
/// enabled for it (`oxloop/__init__.py` refuses one that cannot).
#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<event_loop::LoopCore>()?;
    fastcall::install(&m.py().get_type::<event_loop::LoopCore>())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    alloc::install(&m.py().get_type::<handles::Handle>(), &m.py().get_type::<handles::TimerHandle>());
    m.add_class::<transport::StreamTransport>()?;
    m.add_class::<datagram::DatagramTransport>()?;
    transport_methods::register(m)?;
    tls::register(m)?;
    dns::register(m)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    Ok(())
}
