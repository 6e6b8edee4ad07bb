//! The address-literal fast path of `getaddrinfo`.
//!
//! [`resolve_literal`] answers a `getaddrinfo(host, port, family, type, proto, flags)` query
//! without a worker thread when the host is an IP address literal or absent. It either answers
//! exactly what glibc's `getaddrinfo` answers on this machine at this moment, or declines
//! (`None`) so that the caller asks the C library instead. Declining is always safe.
//!
//! Invariants:
//! - An answer equals glibc's list entry for entry: same order, family, socket type, protocol,
//!   canonical name (on the first entry only), address, port, flow label and scope id.
//! - Every query that glibc rejects with an error is declined, never answered.
//! - Nothing here consults a name service (hosts file, DNS, services database), so nothing here
//!   can block on the network. The C library is called in two places only: `if_nametoindex` for
//!   an IPv6 zone name (the very call glibc makes for it), and `getaddrinfo` itself for an absent
//!   host with an unspecified family, whose order glibc decides at run time (see
//!   [`resolve_literal`]); both ask the kernel only.
//! - Host and port text are the bytes the C library would receive. Text that is not ASCII or
//!   holds a NUL byte is declined.
//! - With another C library than glibc 2.36 or newer, [`resolve_literal`] declines everything:
//!   the behaviour reproduced here is glibc's, as checked against 2.36 (older versions parse
//!   some literals and zones differently).

use std::ffi::{CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;

/// `SOCK_DCCP`, which the `libc` crate does not define for glibc targets.
const SOCK_DCCP: i32 = 6;

/// The flags whose effect on a literal or absent host is known here. `AI_ADDRCONFIG` depends on
/// the machine's configured addresses, and the IDN flags on libidn2: queries with those (or
/// with any unknown flag) are declined.
const UNDERSTOOD_FLAGS: i32 = libc::AI_PASSIVE
    | libc::AI_CANONNAME
    | libc::AI_NUMERICHOST
    | libc::AI_V4MAPPED
    | libc::AI_ALL
    | libc::AI_NUMERICSERV;

/// The host argument of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// No host (C `NULL`): the loopback address, or the wildcard address with `AI_PASSIVE`.
    None,
    /// A host name or address literal, as the bytes handed to the C library (CPython passes a
    /// `str` host IDNA-encoded, which leaves ASCII text unchanged).
    Text(&'a [u8]),
}

/// The port (service) argument of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port<'a> {
    /// No service (C `NULL`): port 0, and raw sockets are allowed.
    None,
    /// An integer, which CPython writes in decimal (`%ld`) before calling the C library.
    Number(i64),
    /// A service as text: a decimal number (glibc reads it with `strtoul`, so leading blanks, a
    /// sign and wrap-around are accepted) or a service name (declined). Empty text counts as no
    /// service.
    Text(&'a [u8]),
}

/// The hints of a query: the `family`, `type`, `proto` and `flags` arguments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// `AF_UNSPEC`, `AF_INET` or `AF_INET6`; other families are declined.
    pub family: i32,
    /// The socket type, 0 for any.
    pub socktype: i32,
    /// The protocol, 0 for any.
    pub protocol: i32,
    /// The `AI_*` flags.
    pub flags: i32,
}

/// One entry of an answer: the fields of a C `struct addrinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    /// `AF_INET` or `AF_INET6`.
    pub family: i32,
    /// The socket type (`SOCK_STREAM`, ...).
    pub socktype: i32,
    /// The protocol (`IPPROTO_TCP`, ...), or whatever the query asked for with `SOCK_RAW`.
    pub protocol: i32,
    /// The canonical name: the host text on the first entry when `AI_CANONNAME` was asked for,
    /// empty otherwise (CPython turns a C `NULL` into an empty string).
    pub canonname: String,
    /// The socket address: IP and port, plus flow label and scope id for IPv6.
    pub address: SocketAddr,
}

/// What glibc makes of the service argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    /// No service, or an empty one.
    Absent,
    /// A numeric service, reduced to the port glibc stores.
    Port(u16),
}

/// One row of glibc's table of socket types and protocols for IPv4 and IPv6.
struct SocketKind {
    /// The socket type answered.
    socktype: i32,
    /// The protocol answered (for raw sockets: the protocol queried instead).
    protocol: i32,
    /// Raw sockets take whatever protocol the query names, and refuse a service.
    is_raw: bool,
}

/// glibc's socket kinds, in the order it searches them when the query names a socket type or
/// a protocol: the first row compatible with both wins.
const SOCKET_KINDS: [SocketKind; 7] = [
    SocketKind { socktype: libc::SOCK_STREAM, protocol: libc::IPPROTO_TCP, is_raw: false },
    SocketKind { socktype: libc::SOCK_DGRAM, protocol: libc::IPPROTO_UDP, is_raw: false },
    SocketKind { socktype: SOCK_DCCP, protocol: libc::IPPROTO_DCCP, is_raw: false },
    SocketKind { socktype: libc::SOCK_DGRAM, protocol: libc::IPPROTO_UDPLITE, is_raw: false },
    SocketKind { socktype: libc::SOCK_STREAM, protocol: libc::IPPROTO_SCTP, is_raw: false },
    SocketKind { socktype: libc::SOCK_SEQPACKET, protocol: libc::IPPROTO_SCTP, is_raw: false },
    SocketKind { socktype: libc::SOCK_RAW, protocol: 0, is_raw: true },
];

/// The (socket type, protocol) pairs glibc lists when the query names neither.
const DEFAULT_SOCKET_KINDS: [(i32, i32); 3] = [
    (libc::SOCK_STREAM, libc::IPPROTO_TCP),
    (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
    (libc::SOCK_RAW, 0),
];

/// Answers `getaddrinfo(host, port, query)` as glibc would, or declines with `None`.
///
/// Answered: a numeric IPv4 host in any form `inet_aton` accepts (`127.1`, `0x7f.1`,
/// `2130706433`, ...), a numeric IPv6 host (with an interface name or number as zone), and an
/// absent host; a numeric or absent port; families `AF_UNSPEC`, `AF_INET` and `AF_INET6`; any
/// socket type and protocol glibc accepts for them; flags `AI_PASSIVE`, `AI_CANONNAME`,
/// `AI_NUMERICHOST`, `AI_V4MAPPED`, `AI_ALL` and `AI_NUMERICSERV`.
///
/// Declined: host names, service names, `AI_ADDRCONFIG` and the IDN flags, other families, and
/// every query glibc answers with an error.
///
/// An absent host with `AF_UNSPEC` yields an IPv6 and an IPv4 address, which glibc orders with
/// its RFC 3484 sort. That order depends on which addresses are reachable, on their flags, and
/// on the `/etc/gai.conf` tables glibc loaded into this process, so this one case is answered
/// by calling `getaddrinfo` itself: without a host and with a numeric service it asks no name
/// service, only the kernel.
pub fn resolve_literal(host: Host<'_>, port: Port<'_>, query: Query) -> Option<Vec<AddrInfo>> {
    if !libc_behaviour_is_reproduced() {
        return None;
    }
    if let Host::Text(text) = host {
        // glibc reads a host of "*" as no host; such text is left to the C library.
        if !is_plain_ascii(text) || text == b"*" {
            return None;
        }
    }
    let service = service_of(port)?;
    if host == Host::None && service == Service::Absent {
        return None;
    }
    if query.flags & !UNDERSTOOD_FLAGS != 0 {
        return None;
    }
    if query.flags & libc::AI_CANONNAME != 0 && host == Host::None {
        return None;
    }
    if ![libc::AF_UNSPEC, libc::AF_INET, libc::AF_INET6].contains(&query.family) {
        return None;
    }
    let kinds = socket_kinds(query.socktype, query.protocol, service)?;
    let port_number = match service {
        Service::Absent => 0,
        Service::Port(port_number) => port_number,
    };
    let (address, canonname) = match host {
        Host::None => match query.family {
            libc::AF_INET => (absent_host_ipv4(query.flags, port_number), String::new()),
            libc::AF_INET6 => (absent_host_ipv6(query.flags, port_number), String::new()),
            _ => return libc_answer_for_absent_host(service, query),
        },
        Host::Text(text) => {
            let address = numeric_host_address(text, query, port_number)?;
            let canonname = if query.flags & libc::AI_CANONNAME != 0 {
                String::from_utf8(text.to_vec()).ok()?
            } else {
                String::new()
            };
            (address, canonname)
        }
    };
    let family = match address {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let mut canonname = Some(canonname);
    let entries = kinds
        .into_iter()
        .map(|(socktype, protocol)| AddrInfo {
            family,
            socktype,
            protocol,
            canonname: canonname.take().unwrap_or_default(),
            address,
        })
        .collect();
    Some(entries)
}

/// Whether the process runs on a glibc whose `getaddrinfo` behaves as reproduced here.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn libc_behaviour_is_reproduced() -> bool {
    static REPRODUCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REPRODUCED.get_or_init(|| {
        // SAFETY: gnu_get_libc_version takes no argument and returns a pointer to a static
        // NUL-terminated string such as "2.36".
        let version = unsafe { CStr::from_ptr(libc::gnu_get_libc_version()) };
        let mut numbers = version.to_bytes().split(|&byte| byte == b'.').map(decimal_value);
        match (numbers.next(), numbers.next()) {
            (Some(Some(Some(major))), Some(Some(Some(minor)))) => (major, minor) >= (2, 36),
            _ => false,
        }
    })
}

/// Whether the process runs on a glibc whose `getaddrinfo` behaves as reproduced here: never,
/// on targets without glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn libc_behaviour_is_reproduced() -> bool {
    false
}

/// Writes an IPv6 address the way glibc's `inet_ntop` does, which is the text CPython puts in
/// the socket-address tuples of `socket.getaddrinfo`.
///
/// The longest run of two or more zero groups (the first of equal runs) becomes `::`; groups
/// are lower-case hex without leading zeros; an address whose first 96 bits are zero (with
/// some bit set in the seventh group), or that is IPv4-mapped, ends in dotted IPv4.
pub fn ipv6_text(address: &Ipv6Addr) -> String {
    let groups = address.segments();
    let zero_run = longest_zero_run(&groups);
    let ends_in_ipv4 = match zero_run {
        Some((0, 6)) => true,
        Some((0, 5)) => groups[5] == 0xffff,
        _ => false,
    };
    let mut text = String::with_capacity(45);
    let mut index = 0;
    while index < 8 {
        if let Some((start, length)) = zero_run {
            if index == start {
                text.push_str("::");
                index += length;
                continue;
            }
        }
        if !text.is_empty() && !text.ends_with(':') {
            text.push(':');
        }
        if index == 6 && ends_in_ipv4 {
            let [.., a, b, c, d] = address.octets();
            text.push_str(&Ipv4Addr::new(a, b, c, d).to_string());
            break;
        }
        text.push_str(&format!("{:x}", groups[index]));
        index += 1;
    }
    text
}

/// The first longest run of at least two zero groups, as (start, length).
fn longest_zero_run(groups: &[u16; 8]) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    let mut index = 0;
    while index < groups.len() {
        let length = groups[index..].iter().take_while(|&&group| group == 0).count();
        if length >= 2 && best.is_none_or(|(_, best_length)| length > best_length) {
            best = Some((index, length));
        }
        index += length.max(1);
    }
    best
}

/// Whether text is ASCII without NUL bytes, the only host or service text considered here.
fn is_plain_ascii(text: &[u8]) -> bool {
    text.iter().all(|&byte| byte != 0 && byte.is_ascii())
}

/// What glibc makes of the port argument, or `None` for a service name (or text it might read
/// as one).
fn service_of(port: Port<'_>) -> Option<Service> {
    let value = match port {
        Port::None => return Some(Service::Absent),
        Port::Text([]) => return Some(Service::Absent),
        // "%ld" followed by strtoul gives back the two's complement bits of the number.
        Port::Number(number) => number as u64,
        Port::Text(text) => {
            if !is_plain_ascii(text) {
                return None;
            }
            whole_text_strtoul(text)?
        }
    };
    // glibc keeps strtoul's result in an int, takes a negative one for a service name, and
    // stores the low 16 bits of the rest as the port.
    let stored = value as u32 as i32;
    if stored < 0 {
        return None;
    }
    Some(Service::Port(stored as u16))
}

/// C's `strtoul(text, &end, 10)` when it consumes all of `text`, `None` when it stops early.
/// Leading C-locale white space and one sign are accepted; a minus sign negates modulo 2^64;
/// an out-of-range magnitude gives `u64::MAX`, whatever the sign.
fn whole_text_strtoul(text: &[u8]) -> Option<u64> {
    let unsigned_start = text.iter().position(|&byte| !is_c_space(byte))?;
    let (negative, digits) = match text[unsigned_start] {
        b'-' => (true, &text[unsigned_start + 1..]),
        b'+' => (false, &text[unsigned_start + 1..]),
        _ => (false, &text[unsigned_start..]),
    };
    let magnitude = decimal_value(digits)?;
    Some(match magnitude {
        Some(magnitude) if negative => magnitude.wrapping_neg(),
        Some(magnitude) => magnitude,
        None => u64::MAX,
    })
}

/// `isspace` in every glibc locale, for ASCII bytes.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The value of a non-empty run of decimal digits: `None` if it is not one, `Some(None)` if it
/// does not fit in 64 bits.
fn decimal_value(digits: &[u8]) -> Option<Option<u64>> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().try_fold(0u64, |value, &digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    }))
}

/// The (socket type, protocol) pairs glibc answers for a query, or `None` where it fails
/// (no compatible socket kind, or a service with a raw socket).
fn socket_kinds(socktype: i32, protocol: i32, service: Service) -> Option<Vec<(i32, i32)>> {
    if socktype == 0 && protocol == 0 {
        return Some(DEFAULT_SOCKET_KINDS.to_vec());
    }
    let kind = SOCKET_KINDS.iter().find(|kind| {
        (socktype == 0 || socktype == kind.socktype)
            && (protocol == 0 || kind.is_raw || protocol == kind.protocol)
    })?;
    if kind.is_raw {
        if service != Service::Absent {
            return None;
        }
        return Some(vec![(kind.socktype, protocol)]);
    }
    Some(vec![(kind.socktype, kind.protocol)])
}

/// The address glibc uses for an absent host with `AF_INET`.
fn absent_host_ipv4(flags: i32, port: u16) -> SocketAddr {
    let ip =
        if flags & libc::AI_PASSIVE != 0 { Ipv4Addr::UNSPECIFIED } else { Ipv4Addr::LOCALHOST };
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The address glibc uses for an absent host with `AF_INET6`.
fn absent_host_ipv6(flags: i32, port: u16) -> SocketAddr {
    let ip =
        if flags & libc::AI_PASSIVE != 0 { Ipv6Addr::UNSPECIFIED } else { Ipv6Addr::LOCALHOST };
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

/// The socket address glibc makes of a numeric host, or `None` where glibc fails or would ask
/// a name service.
///
/// glibc first tries the whole text as an `inet_aton` IPv4 address, then the text before the
/// first `%` as an IPv6 address, the rest being its zone.
fn numeric_host_address(text: &[u8], query: Query, port: u16) -> Option<SocketAddr> {
    if let Some(ipv4) = parse_inet_aton(text) {
        return match query.family {
            libc::AF_UNSPEC | libc::AF_INET => Some(SocketAddr::V4(SocketAddrV4::new(ipv4, port))),
            libc::AF_INET6 if query.flags & libc::AI_V4MAPPED != 0 => {
                Some(SocketAddr::V6(SocketAddrV6::new(ipv4.to_ipv6_mapped(), port, 0, 0)))
            }
            _ => None,
        };
    }
    let (address_text, zone) = match text.iter().position(|&byte| byte == b'%') {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let ipv6 = parse_inet_pton6(address_text)?;
    let (address, zone_checked_octets) = match query.family {
        libc::AF_UNSPEC | libc::AF_INET6 => (IpAddr::V6(ipv6), ipv6.octets()),
        libc::AF_INET => {
            let ipv4 = ipv6.to_ipv4_mapped()?;
            // glibc copies the IPv4 address over the first four bytes of the IPv6 one, and
            // checks the zone against that altered address.
            let mut octets = ipv6.octets();
            octets[..4].copy_from_slice(&ipv4.octets());
            (IpAddr::V4(ipv4), octets)
        }
        _ => return None,
    };
    let scope_id = match zone {
        Some(zone) => zone_scope_id(&zone_checked_octets, zone)?,
        None => 0,
    };
    Some(match address {
        IpAddr::V4(ipv4) => SocketAddr::V4(SocketAddrV4::new(ipv4, port)),
        IpAddr::V6(ipv6) => SocketAddr::V6(SocketAddrV6::new(ipv6, port, 0, scope_id)),
    })
}

/// glibc's `inet_aton` on the whole text: one to four parts separated by dots, each a C number
/// (`0x` hex, leading-`0` octal, or decimal); every part but the last is one byte, and the last
/// fills the remaining bytes.
fn parse_inet_aton(text: &[u8]) -> Option<Ipv4Addr> {
    let mut parts = [0u32; 4];
    let mut count = 0;
    for part in text.split(|&byte| byte == b'.') {
        if count == parts.len() {
            return None;
        }
        parts[count] = c_number_value(part)?;
        count += 1;
    }
    let (leading, last) = (&parts[..count - 1], parts[count - 1]);
    if leading.iter().any(|&part| part > 0xff) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if last_bits < 32 && last >> last_bits != 0 {
        return None;
    }
    let leading_value = leading
        .iter()
        .enumerate()
        .fold(0u32, |value, (index, &part)| value | part << (24 - 8 * index));
    Some(Ipv4Addr::from(leading_value | last))
}

/// The value of a number written as in C source (`0x1f`, `017`, `15`), if it fits in 32 bits.
fn c_number_value(text: &[u8]) -> Option<u32> {
    let (digits, radix) = match text {
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16),
        [b'0', octal @ ..] if !octal.is_empty() => (octal, 8),
        _ => (text, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |value, &digit| {
        let digit = char::from(digit).to_digit(radix)?;
        value.checked_mul(radix)?.checked_add(digit)
    })
}

/// glibc's `inet_pton(AF_INET6, ...)`: eight groups of one to four hex digits, at most one
/// `::` standing for at least one zero group, and optionally a strict dotted IPv4 address in
/// place of the last two groups.
fn parse_inet_pton6(text: &[u8]) -> Option<Ipv6Addr> {
    let double_colon = text.windows(2).position(|pair| pair == b"::");
    let (head, tail) = match double_colon {
        Some(at) => (&text[..at], Some(&text[at + 2..])),
        None => (text, None),
    };
    let mut head_groups = Vec::with_capacity(8);
    let mut tail_groups = Vec::with_capacity(8);
    match tail {
        None => read_groups(head, true, &mut head_groups)?,
        Some(tail) => {
            read_groups(head, false, &mut head_groups)?;
            read_groups(tail, true, &mut tail_groups)?;
        }
    }
    let group_count = head_groups.len() + tail_groups.len();
    let zero_groups = match tail {
        None if group_count == 8 => 0,
        Some(_) if group_count < 8 => 8 - group_count,
        _ => return None,
    };
    let mut groups = head_groups;
    groups.extend(std::iter::repeat_n(0, zero_groups));
    groups.extend(tail_groups);
    let groups: [u16; 8] = groups.try_into().ok()?;
    Some(Ipv6Addr::from(groups))
}

/// Appends the groups of a colon-separated run (which may be empty) to `groups`; the last
/// piece may be a dotted IPv4 address, counting as two groups, if `may_end_in_ipv4`.
fn read_groups(text: &[u8], may_end_in_ipv4: bool, groups: &mut Vec<u16>) -> Option<()> {
    if text.is_empty() {
        return Some(());
    }
    let piece_count = text.split(|&byte| byte == b':').count();
    for (index, piece) in text.split(|&byte| byte == b':').enumerate() {
        if may_end_in_ipv4 && index == piece_count - 1 && piece.contains(&b'.') {
            let [a, b, c, d] = parse_inet_pton4(piece)?.octets();
            groups.push(u16::from_be_bytes([a, b]));
            groups.push(u16::from_be_bytes([c, d]));
        } else {
            groups.push(hex_group_value(piece)?);
        }
        if groups.len() > 8 {
            return None;
        }
    }
    Some(())
}

/// One IPv6 group: one to four hex digits.
fn hex_group_value(text: &[u8]) -> Option<u16> {
    if text.is_empty() || text.len() > 4 {
        return None;
    }
    text.iter()
        .try_fold(0u16, |value, &digit| Some(value << 4 | char::from(digit).to_digit(16)? as u16))
}

/// glibc's `inet_pton(AF_INET, ...)`: exactly four decimal parts of 0 to 255 without leading
/// zeros.
fn parse_inet_pton4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut count = 0;
    for part in text.split(|&byte| byte == b'.') {
        if count == octets.len()
            || part.is_empty()
            || part.len() > 3
            || (part.len() > 1 && part[0] == b'0')
        {
            return None;
        }
        let value = decimal_value(part)??;
        octets[count] = u8::try_from(value).ok()?;
        count += 1;
    }
    (count == octets.len()).then_some(Ipv4Addr::from(octets))
}

/// The scope id glibc gives an IPv6 zone, or `None` where it fails: for link-local unicast and
/// node- or link-local multicast addresses an interface name comes first, then (for any
/// address) a decimal number that fits in 32 bits.
fn zone_scope_id(octets: &[u8; 16], zone: &[u8]) -> Option<u32> {
    let is_link_local = octets[0] == 0xfe && octets[1] & 0xc0 == 0x80;
    let is_local_multicast = octets[0] == 0xff && matches!(octets[1] & 0x0f, 1 | 2);
    if is_link_local || is_local_multicast {
        if let Some(index) = interface_index(zone) {
            return Some(index);
        }
    }
    let value = decimal_value(zone)??;
    u32::try_from(value).ok()
}

/// The index of the network interface with this name, as `if_nametoindex` reports it now.
fn interface_index(name: &[u8]) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call, which only reads
    // it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// glibc's answer to an absent-host query with an unspecified family, or `None` if it fails.
fn libc_answer_for_absent_host(service: Service, query: Query) -> Option<Vec<AddrInfo>> {
    let service_text = match service {
        Service::Absent => None,
        Service::Port(port) => Some(CString::new(port.to_string()).ok()?),
    };
    let hints = libc::addrinfo {
        ai_flags: query.flags,
        ai_family: query.family,
        ai_socktype: query.socktype,
        ai_protocol: query.protocol,
        ai_addrlen: 0,
        ai_addr: ptr::null_mut(),
        ai_canonname: ptr::null_mut(),
        ai_next: ptr::null_mut(),
    };
    let mut list: *mut libc::addrinfo = ptr::null_mut();
    let service_pointer = service_text.as_ref().map_or(ptr::null(), |text| text.as_ptr());
    // SAFETY: the service is NULL or a NUL-terminated string, the hints are a fully initialised
    // struct, and both outlive the call; `list` is a valid place for the result pointer.
    let status = unsafe { libc::getaddrinfo(ptr::null(), service_pointer, &hints, &mut list) };
    if status != 0 {
        return None;
    }
    let mut entries = Some(Vec::new());
    let mut node = list;
    while !node.is_null() {
        // SAFETY: `node` is an entry of the list getaddrinfo returned, which stays valid until
        // the freeaddrinfo below.
        let info = unsafe { &*node };
        let entry = addr_info_from_c(info);
        match (&mut entries, entry) {
            (Some(collected), Some(entry)) => collected.push(entry),
            _ => entries = None,
        }
        node = info.ai_next;
    }
    // SAFETY: `list` came from a successful getaddrinfo and is freed exactly once; no reference
    // into it survives this point.
    unsafe { libc::freeaddrinfo(list) };
    entries
}

/// Copies an entry of a C `getaddrinfo` result, or `None` for one that is not IPv4 or IPv6.
fn addr_info_from_c(info: &libc::addrinfo) -> Option<AddrInfo> {
    let address_length = info.ai_addrlen as usize;
    let address = match info.ai_family {
        libc::AF_INET if address_length >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: glibc points `ai_addr` at a `sockaddr_in` of `ai_addrlen` bytes for an
            // AF_INET entry; the read copes with any alignment.
            let c_address =
                unsafe { ptr::read_unaligned(info.ai_addr.cast::<libc::sockaddr_in>()) };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(c_address.sin_addr.s_addr)),
                u16::from_be(c_address.sin_port),
            ))
        }
        libc::AF_INET6 if address_length >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: glibc points `ai_addr` at a `sockaddr_in6` of `ai_addrlen` bytes for an
            // AF_INET6 entry; the read copes with any alignment.
            let c_address =
                unsafe { ptr::read_unaligned(info.ai_addr.cast::<libc::sockaddr_in6>()) };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(c_address.sin6_addr.s6_addr),
                u16::from_be(c_address.sin6_port),
                u32::from_be(c_address.sin6_flowinfo),
                c_address.sin6_scope_id,
            ))
        }
        _ => return None,
    };
    let canonname = if info.ai_canonname.is_null() {
        String::new()
    } else {
        // SAFETY: a non-NULL `ai_canonname` is a NUL-terminated string owned by the list,
        // valid while `info` is.
        let name = unsafe { CStr::from_ptr(info.ai_canonname) };
        name.to_str().ok()?.to_owned()
    };
    Some(AddrInfo {
        family: info.ai_family,
        socktype: info.ai_socktype,
        protocol: info.ai_protocol,
        canonname,
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The C library's own address parsers and formatter, to compare with (the `libc` crate does
    // not declare them).
    extern "C" {
        fn inet_aton(text: *const libc::c_char, address: *mut libc::in_addr) -> libc::c_int;
        fn inet_pton(
            family: libc::c_int,
            text: *const libc::c_char,
            address: *mut libc::c_void,
        ) -> libc::c_int;
        fn inet_ntop(
            family: libc::c_int,
            address: *const libc::c_void,
            text: *mut libc::c_char,
            size: libc::socklen_t,
        ) -> *const libc::c_char;
    }

    /// A query with the given family, socket type and flags, and protocol 0.
    fn query(family: i32, socktype: i32, flags: i32) -> Query {
        Query { family, socktype, protocol: 0, flags }
    }

    /// The single address of an answer for a stream socket, or `None` if declined.
    fn stream_address(host: &str, port: Port<'_>, family: i32, flags: i32) -> Option<SocketAddr> {
        let answer = resolve_literal(
            Host::Text(host.as_bytes()),
            port,
            query(family, libc::SOCK_STREAM, flags),
        )?;
        assert_eq!(answer.len(), 1);
        Some(answer[0].address)
    }

    /// A deterministic xorshift generator for the comparisons with the C library.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Random text of up to `max_length` bytes drawn from `alphabet`.
        fn text(&mut self, alphabet: &[u8], max_length: u64) -> Vec<u8> {
            let length = self.next() % (max_length + 1);
            (0..length).map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize]).collect()
        }
    }

    #[test]
    fn inet_aton_forms() {
        let cases: &[(&str, Option<[u8; 4]>)] = &[
            ("127.0.0.1", Some([127, 0, 0, 1])),
            ("127.1", Some([127, 0, 0, 1])),
            ("0x7f.1", Some([127, 0, 0, 1])),
            ("0x7f.0.0.1", Some([127, 0, 0, 1])),
            ("0177.0.0.1", Some([127, 0, 0, 1])),
            ("2130706433", Some([127, 0, 0, 1])),
            ("1.2.3", Some([1, 2, 0, 3])),
            ("1.2.65535", Some([1, 2, 255, 255])),
            ("1.16777215", Some([1, 255, 255, 255])),
            ("0xffffffff", Some([255, 255, 255, 255])),
            ("0", Some([0, 0, 0, 0])),
            ("256.1.1.1", None),
            ("1.2.65536", None),
            ("4294967296", None),
            ("08.1.1.1", None),
            ("0x", None),
            ("0x.1", None),
            ("1.2.3.4.", None),
            ("1..2", None),
            (".1.2.3", None),
            ("1.2.3.4.5", None),
            (" 1.2.3.4", None),
            ("1.2.3.4 ", None),
            ("", None),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_inet_aton(text.as_bytes()), expected.map(Ipv4Addr::from), "{text:?}");
        }
    }

    #[test]
    fn inet_aton_agrees_with_the_c_library() {
        let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
        let mut accepted_count = 0;
        for _ in 0..200_000 {
            // No white space: with none, glibc's inet_aton is as strict as getaddrinfo's.
            let text = random.text(b"0123456789.xXaAfFgG", 14);
            let c_text = CString::new(text.clone()).unwrap();
            let mut c_address = libc::in_addr { s_addr: 0 };
            // SAFETY: a NUL-terminated string and a valid in_addr to write to.
            let accepted = unsafe { inet_aton(c_text.as_ptr(), &mut c_address) } != 0;
            let expected = accepted.then(|| Ipv4Addr::from(u32::from_be(c_address.s_addr)));
            assert_eq!(parse_inet_aton(&text), expected, "{:?}", String::from_utf8_lossy(&text));
            accepted_count += usize::from(accepted);
        }
        assert!(accepted_count > 5_000, "only {accepted_count} valid addresses were generated");
    }

    #[test]
    fn inet_pton6_agrees_with_the_c_library() {
        let mut random = Xorshift(0x2545_f491_4f6c_dd1d);
        let seeds: &[&[u8]] =
            &[b"::", b"::1", b"1::", b"::ffff:1.2.3.4", b"1:2:3:4:5:6:7:8", b"fe80::"];
        let mut accepted_count = 0;
        for round in 0..300_000 {
            let text = if round % 3 == 0 {
                // Mutations of valid addresses reach the corner cases more often.
                let mut text = seeds[round % seeds.len()].to_vec();
                let insert_at = (random.next() % (text.len() as u64 + 1)) as usize;
                let extra = random.text(b"0123456789abcdefABCDEF:.g", 6);
                text.splice(insert_at..insert_at, extra);
                text
            } else {
                random.text(b"0123456789abcdef:.:", 45)
            };
            let c_text = CString::new(text.clone()).unwrap();
            let mut octets = [0u8; 16];
            // SAFETY: a NUL-terminated string and 16 writable bytes for the address.
            let accepted =
                unsafe { inet_pton(libc::AF_INET6, c_text.as_ptr(), octets.as_mut_ptr().cast()) }
                    == 1;
            let expected = accepted.then(|| Ipv6Addr::from(octets));
            assert_eq!(parse_inet_pton6(&text), expected, "{:?}", String::from_utf8_lossy(&text));
            accepted_count += usize::from(accepted);
        }
        assert!(accepted_count > 10_000, "only {accepted_count} valid addresses were generated");
    }

    #[test]
    fn inet_pton6_forms() {
        let accepted = [
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7::",
            "::1:2:3:4:5:6:7",
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4",
            "FE80::A",
        ];
        for text in accepted {
            assert_eq!(parse_inet_pton6(text.as_bytes()), Some(text.parse().unwrap()), "{text}");
        }
        let refused = [
            "",
            ":",
            ":::",
            "1:",
            ":1",
            "1::2::3",
            "1:2:3:4:5:6:7:8::",
            "::1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7",
            "00000::1",
            "::ffff:01.2.3.4",
            "::ffff:1.2.3",
            "1:2:3:4:5:6:7:1.2.3.4",
            "1.2.3.4::",
            "[::1]",
            "::1 ",
            "1:2:3:4:5:6::1.2.3.4",
        ];
        for text in refused {
            assert_eq!(parse_inet_pton6(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn ipv6_text_agrees_with_the_c_library() {
        let mut random = Xorshift(0xdead_beef_cafe_f00d);
        for round in 0..100_000 {
            // Mostly zero groups, so that runs of zeros of every length and place turn up.
            let mut groups = [0u16; 8];
            for group in &mut groups {
                *group = match random.next() % 4 {
                    0 => random.next() as u16,
                    1 => 0xffff,
                    _ => 0,
                };
            }
            if round % 5 == 0 {
                groups[..5].fill(0);
            }
            let address = Ipv6Addr::from(groups);
            let octets = address.octets();
            let mut buffer = [0 as libc::c_char; 64];
            // SAFETY: 16 readable address bytes and a 64-byte buffer, larger than
            // INET6_ADDRSTRLEN.
            let written = unsafe {
                inet_ntop(libc::AF_INET6, octets.as_ptr().cast(), buffer.as_mut_ptr(), 64)
            };
            assert!(!written.is_null());
            // SAFETY: inet_ntop succeeded, so the buffer holds a NUL-terminated string.
            let expected = unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_str().unwrap();
            assert_eq!(ipv6_text(&address), expected);
        }
    }

    #[test]
    fn ipv6_text_forms() {
        let cases = [
            ("::", "::"),
            ("::1", "::1"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("1:2:3:4:5:6:102:304", "1:2:3:4:5:6:102:304"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
            ("fe80::1", "fe80::1"),
        ];
        for (address, text) in cases {
            assert_eq!(ipv6_text(&address.parse().unwrap()), text);
        }
    }

    #[test]
    fn service_text_is_read_like_strtoul() {
        let cases: &[(&[u8], Option<Service>)] = &[
            (b"", Some(Service::Absent)),
            (b"80", Some(Service::Port(80))),
            (b"  80", Some(Service::Port(80))),
            (b"\t+80", Some(Service::Port(80))),
            (b"65536", Some(Service::Port(0))),
            (b"4294967297", Some(Service::Port(1))),
            (b"-4294967295", Some(Service::Port(1))),
            (b"-1", None),
            (b"2147483648", None),
            (b"99999999999999999999", None),
            (b"80 ", None),
            (b"0x50", None),
            (b"http", None),
            (b" ", None),
            (b"+", None),
        ];
        for &(text, expected) in cases {
            assert_eq!(
                service_of(Port::Text(text)),
                expected,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(service_of(Port::Number(65537)), Some(Service::Port(1)));
        assert_eq!(service_of(Port::Number(-1)), None);
        assert_eq!(service_of(Port::Number(1 << 40)), Some(Service::Port(0)));
        assert_eq!(service_of(Port::None), Some(Service::Absent));
    }

    #[test]
    fn socket_kinds_follow_glibc_table() {
        let port = Service::Port(80);
        let all = DEFAULT_SOCKET_KINDS.to_vec();
        assert_eq!(socket_kinds(0, 0, port), Some(all));
        assert_eq!(
            socket_kinds(0, libc::IPPROTO_TCP, port),
            Some(vec![(libc::SOCK_STREAM, libc::IPPROTO_TCP)])
        );
        assert_eq!(
            socket_kinds(0, libc::IPPROTO_SCTP, port),
            Some(vec![(libc::SOCK_STREAM, libc::IPPROTO_SCTP)])
        );
        assert_eq!(
            socket_kinds(libc::SOCK_SEQPACKET, 0, port),
            Some(vec![(libc::SOCK_SEQPACKET, libc::IPPROTO_SCTP)])
        );
        assert_eq!(socket_kinds(libc::SOCK_RAW, 0, port), None);
        assert_eq!(
            socket_kinds(libc::SOCK_RAW, 17, Service::Absent),
            Some(vec![(libc::SOCK_RAW, 17)])
        );
        assert_eq!(socket_kinds(0, 1, Service::Absent), Some(vec![(libc::SOCK_RAW, 1)]));
        assert_eq!(socket_kinds(libc::SOCK_STREAM, libc::IPPROTO_UDP, Service::Absent), None);
        assert_eq!(socket_kinds(4, 0, Service::Absent), None);
    }

    #[test]
    fn zone_ids() {
        let v6 = |host: &str, family| stream_address(host, Port::Number(80), family, 0);
        let scope = |host: &str| match v6(host, libc::AF_UNSPEC) {
            Some(SocketAddr::V6(address)) => Some(address.scope_id()),
            _ => None,
        };
        // SAFETY: a NUL-terminated interface name.
        let loopback_index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(loopback_index, 0);
        assert_eq!(scope("fe80::1%lo"), Some(loopback_index));
        assert_eq!(scope("ff02::1%lo"), Some(loopback_index));
        assert_eq!(scope("fe80::1%1"), Some(1));
        assert_eq!(scope("fe80::1%01"), Some(1));
        assert_eq!(scope("::1%99"), Some(99));
        assert_eq!(scope("fe80::1%4294967295"), Some(u32::MAX));
        for refused in [
            "fe80::1%4294967296",
            "::1%lo",
            "ff05::1%lo",
            "fe80::1%",
            "fe80::1%+1",
            "fe80::1% 1",
            "fe80::1%nonexistent",
            "fe80::1%lo%",
        ] {
            assert_eq!(scope(refused), None, "{refused}");
        }
        // Under AF_INET the zone is checked against the IPv6 address with its first four bytes
        // overwritten by the IPv4 address.
        assert_eq!(v6("::ffff:1.2.3.4%1", libc::AF_INET), Some("1.2.3.4:80".parse().unwrap()));
        assert_eq!(
            v6("::ffff:254.128.0.1%lo", libc::AF_INET),
            Some("254.128.0.1:80".parse().unwrap())
        );
        assert_eq!(v6("::ffff:1.2.3.4%lo", libc::AF_INET), None);
    }

    #[test]
    fn families_and_mapping() {
        let v4mapped = libc::AI_V4MAPPED;
        assert_eq!(stream_address("127.1", Port::Number(80), libc::AF_INET6, 0), None);
        assert_eq!(
            stream_address("127.1", Port::Number(80), libc::AF_INET6, v4mapped),
            Some("[::ffff:127.0.0.1]:80".parse().unwrap())
        );
        assert_eq!(stream_address("127.1", Port::Number(80), libc::AF_INET6, libc::AI_ALL), None);
        assert_eq!(stream_address("::1", Port::Number(80), libc::AF_INET, 0), None);
        assert_eq!(
            stream_address("::ffff:1.2.3.4", Port::Number(80), libc::AF_INET, 0),
            Some("1.2.3.4:80".parse().unwrap())
        );
        assert_eq!(stream_address("127.0.0.1", Port::Number(80), libc::AF_UNIX, 0), None);
        assert_eq!(stream_address("localhost", Port::Number(80), libc::AF_UNSPEC, 0), None);
        assert_eq!(stream_address("*", Port::Number(80), libc::AF_UNSPEC, 0), None);
        assert_eq!(
            stream_address("127.0.0.1", Port::Number(80), libc::AF_UNSPEC, libc::AI_ADDRCONFIG),
            None
        );
    }

    #[test]
    fn unspecified_socket_type_lists_three_kinds_with_canonname_on_the_first() {
        let answer = resolve_literal(
            Host::Text(b"::1"),
            Port::Text(b"443"),
            query(0, 0, libc::AI_CANONNAME),
        )
        .unwrap();
        let kinds: Vec<_> = answer.iter().map(|entry| (entry.socktype, entry.protocol)).collect();
        assert_eq!(kinds, DEFAULT_SOCKET_KINDS.to_vec());
        let names: Vec<_> = answer.iter().map(|entry| entry.canonname.as_str()).collect();
        assert_eq!(names, ["::1", "", ""]);
        assert!(answer.iter().all(|entry| entry.address == "[::1]:443".parse().unwrap()));
    }

    #[test]
    fn absent_host() {
        let passive = libc::AI_PASSIVE;
        let v4 = resolve_literal(
            Host::None,
            Port::Number(80),
            query(libc::AF_INET, libc::SOCK_STREAM, passive),
        )
        .unwrap();
        assert_eq!(v4[0].address, "0.0.0.0:80".parse().unwrap());
        let v6 = resolve_literal(
            Host::None,
            Port::Number(80),
            query(libc::AF_INET6, libc::SOCK_STREAM, 0),
        )
        .unwrap();
        assert_eq!(v6[0].address, "[::1]:80".parse().unwrap());
        let both =
            resolve_literal(Host::None, Port::Number(80), query(0, libc::SOCK_STREAM, passive))
                .unwrap();
        let mut families: Vec<_> = both.iter().map(|entry| entry.family).collect();
        families.sort_unstable();
        assert_eq!(families, [libc::AF_INET, libc::AF_INET6]);
        assert_eq!(resolve_literal(Host::None, Port::None, query(0, 0, 0)), None);
        assert_eq!(
            resolve_literal(Host::None, Port::Number(80), query(0, 0, libc::AI_CANONNAME)),
            None
        );
    }
}
