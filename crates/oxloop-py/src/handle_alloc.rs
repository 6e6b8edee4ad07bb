//! Free lists for `Handle` and `TimerHandle` objects.
//!
//! Every `call_soon` allocates a handle and every run frees one, so their memory is recycled:
//! a freed handle's memory is kept (up to [`CAPACITY`] per type) and handed to the next
//! allocation of the same type. PyO3's own `freelist` option does the same behind a mutex
//! and a lazily initialised cell, which costs more than the allocation it saves; these lists
//! are plain vectors.
//!
//! Invariants:
//! - `tp_alloc` and `tp_free` are only ever called by CPython with the GIL held, so the GIL
//!   serialises all access to a list (this extension targets the GIL-enabled CPython builds).
//! - A list only holds memory of exactly its type (`subtype` is checked on allocation; a
//!   Python subclass, if any, uses the generic allocator), freed by `tp_dealloc`, so the object
//!   is finalised and not tracked by the garbage collector.
//! - Handles are never tracked by the garbage collector: they define no `__traverse__` (the
//!   cycles they could be part of are broken by releasing the callback when the handle runs,
//!   is cancelled or its loop closes), so a collection would visit them for nothing. Fresh
//!   memory comes from `PyObject_GC_New`, which does not track; recycled memory never is.
//! - Memory leaves a list either to become a new object (`PyObject_Init`, as CPython's own
//!   free lists do) or, when the list is full, through `PyObject_GC_Del` (the types are GC
//!   types: that is the inverse of `PyObject_GC_New` and of `PyType_GenericAlloc`).

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// How many freed objects a list keeps at most.
const CAPACITY: usize = 1024;

/// The free memory of one type.
struct FreeList {
    /// The type whose memory this list holds (set at installation).
    owner: AtomicPtr<ffi::PyTypeObject>,
    objects: UnsafeCell<Vec<*mut ffi::PyObject>>,
}

// SAFETY: `objects` is only accessed from tp_alloc/tp_free, which CPython calls with the GIL
// held; the GIL serialises those accesses (see the module invariants).
unsafe impl Sync for FreeList {}

impl FreeList {
    const fn new() -> Self {
        FreeList {
            owner: AtomicPtr::new(std::ptr::null_mut()),
            objects: UnsafeCell::new(Vec::new()),
        }
    }

    /// `tp_alloc`: recycled memory of `subtype`, or a fresh object.
    ///
    /// # Safety
    /// Called by CPython as `tp_alloc`, with the GIL held.
    unsafe fn alloc(
        &self,
        subtype: *mut ffi::PyTypeObject,
        nitems: ffi::Py_ssize_t,
    ) -> *mut ffi::PyObject {
        let exact_type = std::ptr::eq(subtype, self.owner.load(Ordering::Relaxed));
        if nitems == 0 && exact_type {
            // SAFETY: the GIL is held (see the module invariants).
            let objects = unsafe { &mut *self.objects.get() };
            if let Some(object) = objects.pop() {
                // SAFETY: `object` is memory of a finalised object of exactly `subtype`;
                // PyO3's initialisation writes every field after tp_alloc returns, and
                // `PyObject_Init` sets the type and reference count as a new object needs.
                unsafe {
                    std::ptr::write_bytes(object.cast::<u8>(), 0, (*subtype).tp_basicsize as usize);
                    ffi::PyObject_Init(object, subtype);
                }
                return object;
            }
        }
        if nitems == 0 && exact_type {
            // SAFETY: a new GC object of `subtype`, initialised (type, reference count) but,
            // unlike `PyType_GenericAlloc`'s, not tracked, which is what handles need: they
            // hold nothing the collector could visit (they have no tp_traverse of their own).
            // The rest of it is zeroed as `PyType_GenericAlloc` does.
            unsafe {
                let object = ffi::PyObject_GC_New::<ffi::PyObject>(subtype);
                if !object.is_null() {
                    let header = std::mem::size_of::<ffi::PyObject>();
                    std::ptr::write_bytes(
                        object.cast::<u8>().add(header),
                        0,
                        (*subtype).tp_basicsize as usize - header,
                    );
                }
                return object;
            }
        }
        // SAFETY: the generic allocator, as the type would use without this list (a Python
        // subclass, if any).
        unsafe { ffi::PyType_GenericAlloc(subtype, nitems) }
    }

    /// `tp_free`: keeps the memory for reuse, or releases it when the list is full.
    ///
    /// # Safety
    /// Called by CPython (through the type's `tp_dealloc`) as `tp_free`, with the GIL held,
    /// on an object of the owning type.
    unsafe fn free(&self, object: *mut c_void) {
        // SAFETY: the GIL is held (see the module invariants).
        let objects = unsafe { &mut *self.objects.get() };
        if objects.len() < CAPACITY {
            objects.push(object.cast());
        } else {
            // SAFETY: the memory came from PyObject_GC_New or PyType_GenericAlloc of a GC type.
            unsafe { ffi::PyObject_GC_Del(object) };
        }
    }
}

static HANDLES: FreeList = FreeList::new();
static TIMER_HANDLES: FreeList = FreeList::new();

/// `tp_alloc` of `Handle`.
unsafe extern "C" fn alloc_handle(
    subtype: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython as tp_alloc.
    unsafe { HANDLES.alloc(subtype, nitems) }
}

/// `tp_free` of `Handle`.
unsafe extern "C" fn free_handle(object: *mut c_void) {
    // SAFETY: called by CPython as tp_free.
    unsafe { HANDLES.free(object) }
}

/// `tp_alloc` of `TimerHandle`.
unsafe extern "C" fn alloc_timer_handle(
    subtype: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython as tp_alloc.
    unsafe { TIMER_HANDLES.alloc(subtype, nitems) }
}

/// `tp_free` of `TimerHandle`.
unsafe extern "C" fn free_timer_handle(object: *mut c_void) {
    // SAFETY: called by CPython as tp_free.
    unsafe { TIMER_HANDLES.free(object) }
}

/// Installs the free lists as the allocators of the two handle types.
pub(crate) fn install(handle: &Bound<'_, PyType>, timer_handle: &Bound<'_, PyType>) {
    for (ty, list, alloc, free) in [
        (handle, &HANDLES, alloc_handle as ffi::allocfunc, free_handle as ffi::freefunc),
        (timer_handle, &TIMER_HANDLES, alloc_timer_handle, free_timer_handle),
    ] {
        let type_object = ty.as_type_ptr();
        list.owner.store(type_object, Ordering::Relaxed);
        // SAFETY: the types were just created by PyO3 and no instance exists yet; replacing
        // the allocator pair of a heap type before its first instance is what CPython allows
        // (both slots are plain fields of the type object in the non-limited API).
        unsafe {
            (*type_object).tp_alloc = Some(alloc);
            (*type_object).tp_free = Some(free);
        }
    }
}
