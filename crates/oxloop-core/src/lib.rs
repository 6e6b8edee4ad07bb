//! The Python-free core of oxloop.
//!
//! Everything here is plain Rust, generic over the payload it schedules, and tested with
//! `cargo test`. The `oxloop-py` crate instantiates these pieces with Python handles.
//!
//! Invariants shared by every module: none of these types is internally synchronised; the
//! owner (the loop) decides which thread touches them. No type here owns a file descriptor
//! except the reactor's (see [`reactor`]): its two halves share its epoll instance and the
//! [`reactor::Waker`] owns an eventfd; it only *watches* the descriptors registered with it.

pub mod addr_literal;
pub mod clock;
pub mod counters;
pub mod reactor;
pub mod ready;
pub mod timers;
pub mod virtual_time;
pub mod write_buffer;
