//! Socket addresses as the kernel sees them (`sockaddr_*`) and as Python's `socket` module
//! shows them (`(host, port)`, `(host, port, flowinfo, scope_id)`, a Unix path), for the
//! datagram transport's per-datagram `recvfrom`/`sendto`.
//!
//! Only the common forms are converted here: IPv4 and IPv6 addresses with a numeric host,
//! and received Unix addresses. Anything else (a host name, `"<broadcast>"`, a port out of
//! range, other families) is left to the Python socket's own `sendto`/`recvfrom`, which
//! resolves and reports errors exactly as asyncio's transport would.
//!
//! Invariants: plain data, no Python objects held; conversions to Python need the GIL.

use std::ffi::{c_char, CStr};
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

/// A socket address in the kernel's form.
#[derive(Clone, Copy)]
pub(crate) struct RawAddress {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

impl RawAddress {
    /// An empty address, for `recvfrom` to fill.
    pub(crate) fn empty() -> Self {
        // SAFETY: an all-zero sockaddr_storage is a valid value (family AF_UNSPEC).
        let storage = unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        RawAddress { storage, len: size_of::<libc::sockaddr_storage>() as libc::socklen_t }
    }

    /// The address's bytes (as long as the kernel said).
    fn bytes(&self) -> &[u8] {
        // SAFETY: `storage` is plain data of at least `len` bytes (`len` never exceeds it).
        unsafe {
            std::slice::from_raw_parts(
                (&self.storage as *const libc::sockaddr_storage).cast::<u8>(),
                self.len as usize,
            )
        }
    }

    /// Whether two addresses are the same bytes.
    pub(crate) fn same_as(&self, other: &RawAddress) -> bool {
        self.bytes() == other.bytes()
    }

    /// A pointer for `sendto`.
    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// A pointer and length for `recvfrom` to fill.
    pub(crate) fn as_mut_parts(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        self.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        ((&mut self.storage as *mut libc::sockaddr_storage).cast(), &mut self.len)
    }

    /// Writes `value` at the start of the storage and sets the length to its size.
    fn from_struct<T: Copy>(value: T) -> Self {
        let mut address = RawAddress::empty();
        // SAFETY: every sockaddr_* type fits in sockaddr_storage and is plain data.
        unsafe {
            std::ptr::write(
                (&mut address.storage as *mut libc::sockaddr_storage).cast::<T>(),
                value,
            )
        };
        address.len = size_of::<T>() as libc::socklen_t;
        address
    }

    /// The address of `host` (a numeric IPv4 address) and `port`.
    fn ipv4(host: Ipv4Addr, port: u16) -> Self {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(host).to_be() },
            sin_zero: [0; 8],
        };
        Self::from_struct(sin)
    }

    /// The address of `host` (a numeric IPv6 address), `port`, `flowinfo` and `scope_id`.
    fn ipv6(host: Ipv6Addr, port: u16, flowinfo: u32, scope_id: u32) -> Self {
        let sin6 = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: port.to_be(),
            sin6_flowinfo: flowinfo.to_be(),
            sin6_addr: libc::in6_addr { s6_addr: host.octets() },
            sin6_scope_id: scope_id,
        };
        Self::from_struct(sin6)
    }

    /// The address family.
    fn family(&self) -> libc::c_int {
        libc::c_int::from(self.storage.ss_family)
    }

    /// Reads the storage as `T`.
    fn view<T: Copy>(&self) -> T {
        // SAFETY: called for the struct matching the family; sockaddr_storage is aligned for
        // and at least as large as every sockaddr_* type.
        unsafe { std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast::<T>()) }
    }

    /// The address as Python's `socket` module returns it from `recvfrom`, or None for a
    /// family converted only by Python (the caller then asks the socket itself).
    pub(crate) fn python_address<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if self.len == 0 {
            // An unnamed sender (an unbound Unix datagram socket): Python says None.
            return Ok(Some(py.None().into_bound(py)));
        }
        match self.family() {
            libc::AF_INET => {
                let sin: libc::sockaddr_in = self.view();
                let host = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string();
                Ok(Some((host, u16::from_be(sin.sin_port)).into_pyobject(py)?.into_any()))
            }
            libc::AF_INET6 => {
                let sin6: libc::sockaddr_in6 = self.view();
                let host = ipv6_host(self, &sin6)?;
                let address = (
                    host,
                    u16::from_be(sin6.sin6_port),
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                );
                Ok(Some(address.into_pyobject(py)?.into_any()))
            }
            libc::AF_UNIX => Ok(Some(unix_path(py, self)?)),
            _ => Ok(None),
        }
    }

    /// The kernel form of a Python address for a socket of `family`, when it is a common
    /// numeric form (see the module note); None means "let Python's socket convert it".
    pub(crate) fn from_python(family: libc::c_int, address: &Bound<'_, PyAny>) -> Option<Self> {
        let tuple = address.cast::<PyTuple>().ok()?;
        let host = tuple.get_item(0).ok()?.cast_into::<PyString>().ok()?;
        let host = host.to_str().ok()?;
        let port: u16 = tuple.get_item(1).ok()?.extract().ok()?;
        match (family, tuple.len()) {
            (libc::AF_INET, 2) => Some(Self::ipv4(host.parse().ok()?, port)),
            (libc::AF_INET6, 2..=4) => {
                let flowinfo: u32 = match tuple.get_item(2) {
                    Ok(value) => value.extract().ok().filter(|f| *f <= 0xfffff)?,
                    Err(_) => 0,
                };
                let scope_id: u32 = match tuple.get_item(3) {
                    Ok(value) => value.extract().ok()?,
                    Err(_) => 0,
                };
                Some(Self::ipv6(host.parse().ok()?, port, flowinfo, scope_id))
            }
            _ => None,
        }
    }
}

/// An IPv6 host as Python writes it: `getnameinfo(NI_NUMERICHOST)`'s form (`inet_ntop`'s,
/// with `%interface` appended for a scoped address).
fn ipv6_host(address: &RawAddress, sin6: &libc::sockaddr_in6) -> PyResult<String> {
    let mut text = [0 as c_char; libc::NI_MAXHOST as usize];
    // SAFETY: `text` is writable for its length; the address is valid for its length;
    // getnameinfo NUL-terminates what it writes on success.
    let status = unsafe {
        libc::getnameinfo(
            address.as_ptr(),
            address.len,
            text.as_mut_ptr(),
            text.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NUMERICHOST,
        )
    };
    if status != 0 {
        return Ok(Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_string());
    }
    // SAFETY: NUL-terminated above.
    Ok(unsafe { CStr::from_ptr(text.as_ptr()) }.to_string_lossy().into_owned())
}

/// A Unix socket address as Python gives it: the path as `str` (decoded as file names are),
/// an abstract name as `bytes` (with its leading NUL).
fn unix_path<'py>(py: Python<'py>, address: &RawAddress) -> PyResult<Bound<'py, PyAny>> {
    let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let path = &address.bytes()[offset.min(address.len as usize)..];
    if path.first() == Some(&0) {
        return Ok(PyBytes::new(py, path).into_any());
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    decode_file_name(py, &path[..end])
}

/// `bytes` decoded as Python decodes file names (`PyUnicode_DecodeFSDefaultAndSize`).
fn decode_file_name<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the GIL is held; the pointer and length describe `bytes`; the call returns a new
    // reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyUnicode_DecodeFSDefaultAndSize(
                bytes.as_ptr().cast(),
                bytes.len() as pyo3::ffi::Py_ssize_t,
            ),
        )
    }
}
