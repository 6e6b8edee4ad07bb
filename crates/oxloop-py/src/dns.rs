//! `getaddrinfo_literal`: the Python face of the address-literal fast path of `getaddrinfo`.
//!
//! Invariants: `getaddrinfo_literal(host, port, family, type, proto, flags)` returns either
//! `None` (declined: the caller asks `socket.getaddrinfo`) or a list equal to what
//! `socket.getaddrinfo` returns for the same arguments, element types included. It declines
//! every argument CPython's `socket.getaddrinfo` would reject or convert in a way not
//! reproduced here, so it never raises for odd input; the answers themselves come from
//! [`oxloop_core::addr_literal::resolve_literal`]. Address families and socket types are
//! `socket.AddressFamily` / `socket.SocketKind` members wherever `socket.getaddrinfo` gives
//! members, looked up once per value and cached. An answered query raises the same
//! `socket.getaddrinfo` audit event as `socket.getaddrinfo` does (and propagates what an audit
//! hook raises). Called from Python, with the GIL held, on any thread; it opens no socket and
//! owns no descriptor.

use std::convert::Infallible;
use std::net::SocketAddr;

use oxloop_core::addr_literal::{self, AddrInfo, Host, Port, Query};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};

/// Adds the DNS functions to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(getaddrinfo_literal, m)?)?;
    Ok(())
}

/// An `int` argument as CPython's `"i"` argument format reads it: `Some` for an `int` (or
/// subclass, `bool` included) that fits in a C `int`, `None` for anything it would reject.
struct CIntArgument(Option<i32>);

impl<'a, 'py> FromPyObject<'a, 'py> for CIntArgument {
    type Error = Infallible;

    fn extract(value: Borrowed<'a, 'py, PyAny>) -> Result<Self, Self::Error> {
        if !value.is_instance_of::<PyInt>() {
            return Ok(Self(None));
        }
        Ok(Self(value.extract::<i32>().ok()))
    }
}

/// Answers `socket.getaddrinfo(host, port, family, type, proto, flags)` natively when the host
/// is an IP address literal or None, and returns None otherwise (then call
/// `socket.getaddrinfo`, which gives the answer or raises the right error).
#[pyfunction]
#[pyo3(
    signature = (
        host,
        port,
        family = CIntArgument(Some(0)),
        r#type = CIntArgument(Some(0)),
        proto = CIntArgument(Some(0)),
        flags = CIntArgument(Some(0)),
    ),
    text_signature = "(host, port, family=0, type=0, proto=0, flags=0)"
)]
fn getaddrinfo_literal<'py>(
    py: Python<'py>,
    host: &Bound<'py, PyAny>,
    port: &Bound<'py, PyAny>,
    family: CIntArgument,
    r#type: CIntArgument,
    proto: CIntArgument,
    flags: CIntArgument,
) -> PyResult<Option<Bound<'py, PyList>>> {
    let (Some(host_text), Some(port_text)) = (host_argument(host), port_argument(port)) else {
        return Ok(None);
    };
    let (Some(family), Some(socktype), Some(protocol), Some(flags)) =
        (family.0, r#type.0, proto.0, flags.0)
    else {
        return Ok(None);
    };
    let query = Query { family, socktype, protocol, flags };
    let Some(answer) = addr_literal::resolve_literal(host_text, port_text, query) else {
        return Ok(None);
    };
    // socket.getaddrinfo raises this audit event before resolving; a declined query gets it
    // from socket.getaddrinfo itself.
    let audit = SYS_AUDIT
        .get_or_try_init(py, || PyResult::Ok(py.import("sys")?.getattr("audit")?.unbind()))?;
    audit.bind(py).call1(("socket.getaddrinfo", host, port, family, socktype, protocol))?;
    let families = ADDRESS_FAMILIES.get_or_try_init(py, || {
        IntEnumMembers::load(py, "AddressFamily", &[libc::AF_INET, libc::AF_INET6])
    })?;
    let socket_kinds = SOCKET_KINDS.get_or_try_init(py, || {
        let common = [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_RAW, libc::SOCK_SEQPACKET];
        IntEnumMembers::load(py, "SocketKind", &common)
    })?;
    let entries = answer
        .iter()
        .map(|entry| entry_tuple(py, entry, families, socket_kinds))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(Some(PyList::new(py, entries)?))
}

/// The host as CPython's `socket.getaddrinfo` hands it to the C library, or `None` where that
/// is not known here: a `str` must be ASCII and pass the `idna` codec's label-length checks
/// (which otherwise raise `UnicodeError`); `bytes` are passed as they are.
fn host_argument<'a>(host: &'a Bound<'_, PyAny>) -> Option<Host<'a>> {
    if host.is_none() {
        return Some(Host::None);
    }
    if let Ok(text) = host.cast::<PyString>() {
        let text = text.to_str().ok()?;
        return (text.is_ascii() && passes_idna_label_checks(text.as_bytes()))
            .then_some(Host::Text(text.as_bytes()));
    }
    if let Ok(bytes) = host.cast::<PyBytes>() {
        return Some(Host::Text(bytes.as_bytes()));
    }
    None
}

/// Whether the `idna` codec encodes this ASCII text without error: every dot-separated label
/// but the last has 1 to 63 bytes, and the last has at most 63.
fn passes_idna_label_checks(text: &[u8]) -> bool {
    let labels: Vec<&[u8]> = text.split(|&byte| byte == b'.').collect();
    let (last, leading) = labels.split_last().expect("split yields at least one label");
    leading.iter().all(|label| (1..64).contains(&label.len())) && last.len() < 64
}

/// The port as CPython's `socket.getaddrinfo` hands it to the C library, or `None` for an
/// argument it rejects: an exact `int` that fits in a C `long` (a subclass such as `bool` is
/// refused), a `str`, `bytes`, or None.
fn port_argument<'a>(port: &'a Bound<'_, PyAny>) -> Option<Port<'a>> {
    if port.is_exact_instance_of::<PyInt>() {
        let number = port.extract::<libc::c_long>().ok()?;
        // A C long is narrower than i64 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        return Some(Port::Number(i64::from(number)));
    }
    if let Ok(text) = port.cast::<PyString>() {
        return Some(Port::Text(text.to_str().ok()?.as_bytes()));
    }
    if let Ok(bytes) = port.cast::<PyBytes>() {
        return Some(Port::Text(bytes.as_bytes()));
    }
    port.is_none().then_some(Port::None)
}

/// One entry as `socket.getaddrinfo` presents it: `(family, type, proto, canonname, sockaddr)`.
fn entry_tuple<'py>(
    py: Python<'py>,
    entry: &AddrInfo,
    families: &IntEnumMembers,
    socket_kinds: &IntEnumMembers,
) -> PyResult<Bound<'py, PyTuple>> {
    let socket_address = match entry.address {
        SocketAddr::V4(address) => (address.ip().to_string(), address.port()).into_pyobject(py)?,
        SocketAddr::V6(address) => {
            let text = addr_literal::ipv6_text(address.ip());
            (text, address.port(), address.flowinfo(), address.scope_id()).into_pyobject(py)?
        }
    };
    (
        families.member(py, entry.family)?,
        socket_kinds.member(py, entry.socktype)?,
        entry.protocol,
        entry.canonname.as_str(),
        socket_address,
    )
        .into_pyobject(py)
}

/// `sys.audit`.
static SYS_AUDIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `socket.AddressFamily` members for the families answers hold.
static ADDRESS_FAMILIES: PyOnceLock<IntEnumMembers> = PyOnceLock::new();

/// `socket.SocketKind` members for the common socket types.
static SOCKET_KINDS: PyOnceLock<IntEnumMembers> = PyOnceLock::new();

/// An `IntEnum` class of the `socket` module with the members for some values looked up once.
struct IntEnumMembers {
    enum_class: Py<PyAny>,
    members: Vec<(i32, Py<PyAny>)>,
}

impl IntEnumMembers {
    /// Looks up `socket.<class_name>` and its members for `values`.
    fn load(py: Python<'_>, class_name: &str, values: &[i32]) -> PyResult<Self> {
        let enum_class = py.import("socket")?.getattr(class_name)?;
        let members = values
            .iter()
            .map(|&value| Ok((value, int_enum_value(&enum_class, value)?.unbind())))
            .collect::<PyResult<_>>()?;
        Ok(Self { enum_class: enum_class.unbind(), members })
    }

    /// The member for `value`, from the cache when it holds it.
    fn member<'py>(&self, py: Python<'py>, value: i32) -> PyResult<Bound<'py, PyAny>> {
        match self.members.iter().find(|(cached, _)| *cached == value) {
            Some((_, member)) => Ok(member.bind(py).clone()),
            None => int_enum_value(self.enum_class.bind(py), value),
        }
    }
}

/// What `socket.getaddrinfo` makes of an integer field (its `_intenum_converter`): the
/// enumeration member with that value, or the plain `int` if there is none.
fn int_enum_value<'py>(enum_class: &Bound<'py, PyAny>, value: i32) -> PyResult<Bound<'py, PyAny>> {
    let py = enum_class.py();
    match enum_class.call1((value,)) {
        Ok(member) => Ok(member),
        Err(error) if error.is_instance_of::<PyValueError>(py) => {
            Ok(value.into_pyobject(py)?.into_any())
        }
        Err(error) => Err(error),
    }
}
