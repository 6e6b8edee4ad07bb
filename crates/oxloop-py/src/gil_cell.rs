//! `GilCell`: state that only code holding the GIL reads or writes.
//!
//! The loop, its handles and its transports are Python objects whose Rust state is touched on
//! every callback and every packet. A `Mutex` there costs two atomic read-modify-write
//! instructions per access (about 10 ns a pair on the machines we measure on, a fifth of a
//! `call_soon`) to exclude a concurrency the GIL already excludes. A `GilCell` is a
//! `RefCell` that proves the exclusion instead: borrowing it takes a `Python` token, so only a
//! thread attached to the interpreter can, and the token's lifetime bounds the guard.
//!
//! Invariants:
//! - This extension targets the GIL-enabled CPython builds: a thread holding a `Python` token
//!   holds the GIL, and no other thread runs Python or touches a `GilCell` until it lets go.
//!   The GIL's release and acquisition order every access of one thread before the next
//!   thread's.
//! - **The rule of a borrow** (every owner of a `GilCell` follows it; elsewhere it is called
//!   "the state borrow" or "a borrow"): a guard is taken with the GIL held and is never alive
//!   across a call into Python, nor across the drop of a Python object (a deallocation can run
//!   Python code: a finalizer, a weakref callback). Code copies what it needs out of the
//!   borrow, ends it, then calls or drops. The GIL can change hands while a guard is alive only
//!   if the holder runs Python code (or calls `Python::detach`) meanwhile, so under this rule
//!   no other thread ever sees the value mid-change, and nothing re-enters it. Breaking the
//!   rule is caught rather than undefined: the borrow flag makes a second borrow panic.
//! - A guard is neither `Send` nor `Sync` (it holds the `Python` marker), so it cannot be
//!   moved into `Python::detach`.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use pyo3::Python;

/// A value guarded by the GIL (see the module invariants).
pub(crate) struct GilCell<T> {
    borrowed: Cell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through `borrow_mut`, which requires a `Python` token, so
// only the thread holding the GIL reaches it, one borrow at a time (checked by `borrowed`);
// the GIL orders those accesses across threads. `T: Send` because the value is used (and
// dropped) by whichever thread holds the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    /// A cell holding `value`.
    pub(crate) const fn new(value: T) -> Self {
        GilCell { borrowed: Cell::new(false), value: UnsafeCell::new(value) }
    }

    /// Exclusive access while the guard lives; `py` proves that the GIL is held.
    ///
    /// # Panics
    /// If the cell is already borrowed: code under a borrow ran Python code that came back
    /// here (see the module invariants).
    #[inline]
    pub(crate) fn borrow_mut<'a>(&'a self, _py: Python<'a>) -> GilRefMut<'a, T> {
        assert!(
            !self.borrowed.replace(true),
            "GilCell borrowed twice: Python code ran under a borrow"
        );
        GilRefMut { cell: self, _gil: PhantomData }
    }

    /// Like [`Self::borrow_mut`], or None if the cell is already borrowed (for the garbage
    /// collector's traversal, which may run while a borrow allocates).
    #[inline]
    pub(crate) fn try_borrow_mut<'a>(&'a self, _py: Python<'a>) -> Option<GilRefMut<'a, T>> {
        if self.borrowed.replace(true) {
            return None;
        }
        Some(GilRefMut { cell: self, _gil: PhantomData })
    }
}

/// Exclusive access to the value of a [`GilCell`], for as long as the GIL is held.
pub(crate) struct GilRefMut<'a, T> {
    cell: &'a GilCell<T>,
    /// Ties the guard to the GIL token and makes it neither `Send` nor `Sync`.
    _gil: PhantomData<Python<'a>>,
}

impl<T> Deref for GilRefMut<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only borrow of the cell (see `borrow_mut`).
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> DerefMut for GilRefMut<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard is the only borrow of the cell (see `borrow_mut`).
        unsafe { &mut *self.cell.value.get() }
    }
}

impl<T> Drop for GilRefMut<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.cell.borrowed.set(false);
    }
}
