//! `oxloop._core`: the native half of oxloop.
//!
//! The modules, by concern:
//! - [`event_loop`]: `LoopCore`, the native half of `oxloop.Loop` (its state, its iteration,
//!   fd watching and the hand-written entries of its per-callback methods);
//! - [`handles`] (with [`handle_alloc`], their free lists): `Handle` and `TimerHandle`;
//! - [`stream`] (with [`stream_methods`]), [`datagram`], [`tls`]: the per-packet halves of the
//!   transports;
//! - [`futures`], [`dns`], [`sockaddr`]: asyncio's futures and tasks, the address-literal path
//!   of `getaddrinfo`, socket addresses;
//! - [`virtual_clock`]: the time of a virtual-clock loop, and what transports tell it;
//! - [`glue`], [`gil_cell`], [`method_table`]: what all of them use.
//!
//! Invariants: every object here is used with the GIL held, except the reactor's wait, which
//! releases it (see `event_loop`). Python code in `python/oxloop/` builds the public `Loop`
//! on top of [`event_loop::LoopCore`]; handles and timers are [`handles::Handle`] and
//! [`handles::TimerHandle`]. No function here owns a caller's file descriptor.

use pyo3::prelude::*;

mod datagram;
mod dns;
mod event_loop;
mod futures;
mod gil_cell;
mod glue;
mod handle_alloc;
mod handles;
mod method_table;
mod sockaddr;
mod stream;
mod stream_methods;
mod tls;
mod virtual_clock;

/// The extension module. It needs the GIL (`gil_used`): the native state is guarded by it
/// (`gil_cell`, the free lists in `handle_alloc`), so a free-threaded interpreter must keep the
/// GIL enabled for it (`oxloop/__init__.py` refuses one that cannot).
#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<event_loop::LoopCore>()?;
    event_loop::fast_methods::install(&py.get_type::<event_loop::LoopCore>())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    handle_alloc::install(
        &py.get_type::<handles::Handle>(),
        &py.get_type::<handles::TimerHandle>(),
    );
    m.add_class::<virtual_clock::VirtualClockCore>()?;
    m.add_class::<stream::StreamTransport>()?;
    m.add_class::<datagram::DatagramTransport>()?;
    stream_methods::register(m)?;
    tls::register(m)?;
    dns::register(m)?;
    m.add_function(wrap_pyfunction!(glue::_panic_for_tests, m)?)?;
    Ok(())
}
