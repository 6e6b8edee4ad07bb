//! Load generator for oxloop's network benchmarks (`benchmarks/net_bench.py`).
//!
//! ```text
//! loadgen echo --addr HOST:PORT|--unix PATH [--conns N] [--size BYTES]
//!              [--duration SECS | --requests N] [--warmup SECS] [--threads T] [--tls CAFILE]
//! loadgen bulk --addr HOST:PORT|--unix PATH --bytes TOTAL [--chunk BYTES] [--tls CAFILE]
//! loadgen idle --addr HOST:PORT|--unix PATH [--conns N] [--inflight N]
//! loadgen udp  --addr HOST:PORT [--conns N] [--size BYTES] [--duration SECS] [--warmup SECS]
//!              [--resend-after MS]
//! ```
//!
//! Every mode prints one JSON object on stdout when its measurement is done, and exits with
//! status 1 and a message on stderr if anything goes wrong (a connection refused or closed
//! early, a wrong echo, a wrong byte count). Each mode checks that the server really did the
//! work: `echo` and `udp` compare every echoed byte with what they sent, `bulk` checks the byte
//! count the server acknowledges, `idle` waits for every connection's reply byte.
//!
//! `--tls CAFILE` (echo, bulk): every connection speaks TLS 1.3 (OpenSSL, through the `openssl`
//! crate), trusts only the certificates in CAFILE (PEM), and checks that the server's
//! certificate names the address connected to (its IP address; `localhost` with `--unix`). The
//! handshakes happen before the clock starts; at the end every connection sends its
//! close_notify and waits for the server's, so that the server sees an orderly close.
//!
//! - `echo`: N connections, each in a closed loop: send a message of BYTES (its first 8 bytes a
//!   sequence number, so a stale or duplicated echo is caught), wait for the whole message to
//!   come back, compare, send the next. Non-blocking sockets on epoll, `--threads` threads
//!   (default 1: the harness pins the load generator to one CPU). Requests completed during
//!   `--warmup` are not counted; requests still in flight at the end of `--duration` are
//!   completed (and checked) but not counted. `total_round_trips` counts every round trip,
//!   warm-up and drain included, so a harness can compare it with the server's own count.
//!   `--spin` polls epoll without ever sleeping, so that the load generator's CPU never idles
//!   (waking an idle virtual CPU can be slow); it is for experiments with the load generator
//!   on a CPU of its own.
//! - `bulk`: one connection sends an 8-byte big-endian length and then that many bytes as fast
//!   as the socket takes them; the server answers with the 8-byte big-endian count it received
//!   once it has them all. The time runs from the first byte sent to the answer, so it is the
//!   server's receive path that sets the rate.
//! - `idle`: opens N connections as fast as it can (at most `--inflight` unanswered at a time,
//!   so the server's accept queue never overflows into SYN retransmits); each sends one byte
//!   and waits for one byte back. Prints the time until every connection was answered, then
//!   holds all connections open until its standard input is closed (or it is killed), so that
//!   the harness can measure the server's memory meanwhile.
//! - `udp`: N UDP sockets, each connected to the server and in a closed loop: send a datagram
//!   of BYTES (at least 8: its first 8 bytes are a sequence number), wait for its echo, compare,
//!   send the next. A datagram whose echo has not come back after `--resend-after` ms (default
//!   50) is sent again and counted as `resent`; an echo of an older or already answered
//!   datagram (the original of one that was re-sent after all) is counted as `late` and
//!   ignored. Warm-up, duration and draining as in `echo`; one thread. `datagrams_sent` and
//!   `echoes_received` count every datagram, so a harness can bound the server's own count.
//!
//! The soft RLIMIT_NOFILE is raised to the hard limit at start.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::ssl::{ErrorCode, ShutdownResult, SslConnector, SslMethod, SslStream, SslVersion};

// --- Command line --------------------------------------------------------------------------

const USAGE: &str = "usage:
  loadgen echo --addr HOST:PORT|--unix PATH [--conns N] [--size BYTES]
               [--duration SECS | --requests N] [--warmup SECS] [--threads T] [--spin]
               [--tls CAFILE]
  loadgen bulk --addr HOST:PORT|--unix PATH --bytes TOTAL [--chunk BYTES] [--tls CAFILE]
  loadgen idle --addr HOST:PORT|--unix PATH [--conns N] [--inflight N]
  loadgen udp  --addr HOST:PORT [--conns N] [--size BYTES] [--duration SECS] [--warmup SECS]
               [--resend-after MS]
sizes accept a K/M/G suffix (powers of 1024), e.g. --size 100K --bytes 1G";

struct Options {
    mode: String,
    endpoint: Endpoint,
    conns: usize,
    size: usize,
    duration: Option<f64>,
    requests: Option<u64>,
    warmup: f64,
    threads: usize,
    bytes: u64,
    chunk: usize,
    inflight: usize,
    spin: bool,
    /// echo, bulk: speak TLS, trusting the certificates in this PEM file.
    tls: Option<PathBuf>,
    /// udp: re-send a datagram whose echo has not come back after this many milliseconds.
    resend_after_ms: f64,
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("loadgen: {message}");
    exit(1)
}

fn usage_error(message: impl std::fmt::Display) -> ! {
    eprintln!("loadgen: {message}\n{USAGE}");
    exit(2)
}

fn parse_size(text: &str) -> u64 {
    let (digits, scale) = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&text[..text.len() - 1], 1u64 << 10),
        Some('M') => (&text[..text.len() - 1], 1 << 20),
        Some('G') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    match digits.parse::<u64>() {
        Ok(value) => value * scale,
        Err(_) => usage_error(format!("not a size: {text:?}")),
    }
}

fn parse_number<T: std::str::FromStr>(flag: &str, text: &str) -> T {
    text.parse()
        .unwrap_or_else(|_| usage_error(format!("{flag}: not a number: {text:?}")))
}

fn parse_options() -> Options {
    let mut arguments = std::env::args().skip(1);
    let mode = arguments
        .next()
        .unwrap_or_else(|| usage_error("no mode given"));
    if mode == "-h" || mode == "--help" {
        println!("{USAGE}");
        exit(0);
    }
    if !matches!(mode.as_str(), "echo" | "bulk" | "idle" | "udp") {
        usage_error(format!("unknown mode {mode:?}"));
    }
    let mut options = Options {
        mode,
        endpoint: Endpoint::Unset,
        conns: 1,
        size: 1024,
        duration: None,
        requests: None,
        warmup: 0.0,
        threads: 1,
        bytes: 1 << 30,
        chunk: 256 << 10,
        inflight: 512,
        spin: false,
        tls: None,
        resend_after_ms: 50.0,
    };
    while let Some(flag) = arguments.next() {
        if flag == "--spin" {
            options.spin = true;
            continue;
        }
        let value = arguments
            .next()
            .unwrap_or_else(|| usage_error(format!("{flag} needs a value")));
        match flag.as_str() {
            "--addr" => {
                let address = value
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut addresses| addresses.next())
                    .unwrap_or_else(|| usage_error(format!("cannot resolve {value:?}")));
                options.endpoint = Endpoint::Tcp(address);
            }
            "--unix" => options.endpoint = Endpoint::Unix(PathBuf::from(value)),
            "--conns" => options.conns = parse_number(&flag, &value),
            "--size" => options.size = parse_size(&value) as usize,
            "--duration" => options.duration = Some(parse_number(&flag, &value)),
            "--requests" => options.requests = Some(parse_number(&flag, &value)),
            "--warmup" => options.warmup = parse_number(&flag, &value),
            "--threads" => options.threads = parse_number(&flag, &value),
            "--bytes" => options.bytes = parse_size(&value),
            "--chunk" => options.chunk = parse_size(&value) as usize,
            "--inflight" => options.inflight = parse_number(&flag, &value),
            "--tls" => options.tls = Some(PathBuf::from(value)),
            "--resend-after" => options.resend_after_ms = parse_number(&flag, &value),
            _ => usage_error(format!("unknown option {flag}")),
        }
    }
    if matches!(options.endpoint, Endpoint::Unset) {
        usage_error("give --addr HOST:PORT or --unix PATH");
    }
    if options.conns == 0 || options.size == 0 || options.threads == 0 || options.chunk == 0 {
        usage_error("--conns, --size, --threads and --chunk must be positive");
    }
    if options.inflight == 0 {
        usage_error("--inflight must be positive");
    }
    if options.tls.is_some() && !matches!(options.mode.as_str(), "echo" | "bulk") {
        usage_error("--tls is for echo and bulk");
    }
    if options.mode == "udp" {
        if !matches!(options.endpoint, Endpoint::Tcp(_)) {
            usage_error("udp needs --addr HOST:PORT");
        }
        if options.requests.is_some() || options.threads != 1 || options.spin {
            usage_error("udp takes --duration, not --requests, and runs one thread");
        }
        if !(UDP_MIN_SIZE..=UDP_MAX_SIZE).contains(&options.size) {
            usage_error(format!(
                "udp: --size must be {UDP_MIN_SIZE} to {UDP_MAX_SIZE} bytes"
            ));
        }
        if options.resend_after_ms.is_nan() || options.resend_after_ms <= 0.0 {
            usage_error("--resend-after must be > 0");
        }
    }
    if matches!(options.mode.as_str(), "echo" | "udp") {
        match (options.duration, options.requests) {
            (None, None) => options.duration = Some(5.0),
            (Some(_), Some(_)) => usage_error("give --duration or --requests, not both"),
            (Some(duration), None) if duration.is_nan() || duration <= 0.0 => {
                usage_error("--duration must be > 0")
            }
            (None, Some(0)) => usage_error("--requests must be positive"),
            _ => {}
        }
        if options.warmup.is_nan() || options.warmup < 0.0 {
            usage_error("--warmup must be >= 0");
        }
    }
    options
}

// --- Sockets -------------------------------------------------------------------------------

enum Endpoint {
    Unset,
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Endpoint {
    /// Connects (blocking) and returns the socket as a `File`, whose `Read`/`Write` are plain
    /// read(2)/write(2): that works for TCP and Unix sockets alike.
    fn connect(&self, nonblocking: bool) -> io::Result<File> {
        let fd: OwnedFd = match self {
            Endpoint::Tcp(address) => {
                let stream = TcpStream::connect(address)?;
                stream.set_nodelay(true)?;
                stream.set_nonblocking(nonblocking)?;
                stream.into()
            }
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_nonblocking(nonblocking)?;
                stream.into()
            }
            Endpoint::Unset => unreachable!(),
        };
        Ok(File::from(fd))
    }

    /// The name the server's certificate must carry: the IP address connected to, or
    /// `localhost` for a Unix socket.
    fn server_name(&self) -> String {
        match self {
            Endpoint::Tcp(address) => address.ip().to_string(),
            Endpoint::Unix(_) => "localhost".into(),
            Endpoint::Unset => unreachable!(),
        }
    }
}

fn raise_open_files_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl only reads and sets the status flags of a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` is ready for `events` (`POLLIN`, `POLLOUT`) or `deadline` passes; returns
/// whether it became ready.
fn poll_until(fd: RawFd, events: i16, deadline: Instant) -> bool {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return false;
        }
        let mut entry = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let timeout_ms = remaining.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: entry is one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut entry, 1, timeout_ms) } {
            n if n > 0 => return true,
            0 => {}
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    fail(format!("poll: {error}"));
                }
            }
        }
    }
}

// --- TLS -----------------------------------------------------------------------------------

/// How long a TLS connection waits for the server's close_notify at the end.
const TLS_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS 1.3 client configuration that trusts only the certificates in `ca_file`.
fn tls_connector(ca_file: &Path) -> SslConnector {
    let build = || -> Result<SslConnector, ErrorStack> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_3))?;
        builder.set_ca_file(ca_file)?;
        Ok(builder.build())
    };
    build().unwrap_or_else(|error| fail(format!("TLS setup with {}: {error}", ca_file.display())))
}

/// A connected stream socket, plain or TLS; read and written alike.
///
/// A non-blocking TLS stream reports `WouldBlock` like a socket does, whether OpenSSL is
/// waiting to read or to write; retrying a write with the same bytes is what OpenSSL expects.
enum Stream {
    Plain(File),
    Tls(SslStream<File>),
}

impl Stream {
    /// Connects (blocking); with `tls`, completes the TLS handshake (blocking) too, and only
    /// then makes the socket non-blocking if asked.
    fn connect(
        endpoint: &Endpoint,
        tls: Option<&SslConnector>,
        nonblocking: bool,
    ) -> Result<Stream, String> {
        let Some(connector) = tls else {
            return endpoint
                .connect(nonblocking)
                .map(Stream::Plain)
                .map_err(|error| format!("connect: {error}"));
        };
        let socket = endpoint
            .connect(false)
            .map_err(|error| format!("connect: {error}"))?;
        let stream = connector
            .connect(&endpoint.server_name(), socket)
            .map_err(|error| format!("TLS handshake: {error}"))?;
        if nonblocking {
            set_nonblocking(stream.get_ref().as_raw_fd())
                .map_err(|error| format!("fcntl: {error}"))?;
        }
        Ok(Stream::Tls(stream))
    }

    /// Ends the connection. A TLS connection first sends its close_notify and waits (at most
    /// `TLS_CLOSE_TIMEOUT`) for the server's, so that the server sees an orderly end of the
    /// session rather than a truncated one; a server that does not answer in kind fails the
    /// run.
    fn close(self) {
        let Stream::Tls(mut stream) = self else {
            return;
        };
        let fd = stream.get_ref().as_raw_fd();
        let deadline = Instant::now() + TLS_CLOSE_TIMEOUT;
        loop {
            let ready_for = match stream.shutdown() {
                Ok(ShutdownResult::Received) => return,
                Ok(ShutdownResult::Sent) => continue, // ours is out; the next call awaits theirs
                Err(error) if error.code() == ErrorCode::WANT_READ => libc::POLLIN,
                Err(error) if error.code() == ErrorCode::WANT_WRITE => libc::POLLOUT,
                Err(error) => fail(format!("TLS close: {error}")),
            };
            if !poll_until(fd, ready_for, deadline) {
                fail(format!(
                    "the server did not answer close_notify within {TLS_CLOSE_TIMEOUT:?}"
                ));
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buffer),
            Stream::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(data),
            Stream::Tls(stream) => stream.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            Stream::Tls(stream) => stream.flush(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(socket) => socket.as_raw_fd(),
            Stream::Tls(stream) => stream.get_ref().as_raw_fd(),
        }
    }
}

// --- epoll ---------------------------------------------------------------------------------

struct Epoll {
    fd: OwnedFd,
}

const READABLE: u32 = libc::EPOLLIN as u32;
const WRITABLE: u32 = libc::EPOLLOUT as u32;
const HANGUP: u32 = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 returns a new descriptor that we own, or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn control(&self, operation: i32, fd: RawFd, events: u32, token: usize) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events,
            u64: token as u64,
        };
        // SAFETY: event is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), operation, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn add(&self, fd: RawFd, events: u32, token: usize) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    fn modify(&self, fd: RawFd, events: u32, token: usize) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout` (None: forever); returns the number of events filled in.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> usize {
        let timeout_ms = match timeout {
            None => -1,
            // Round up, so that a wait for 0.3 ms does not spin at timeout 0.
            Some(timeout) => timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        loop {
            // SAFETY: events is a valid buffer of events.len() epoll_events.
            let n = unsafe {
                libc::epoll_wait(
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout_ms,
                )
            };
            if n >= 0 {
                return n as usize;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                fail(format!("epoll_wait: {error}"));
            }
        }
    }
}

fn empty_events(n: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; n]
}

// --- JSON output ---------------------------------------------------------------------------

/// A flat JSON object built field by field (values are numbers, strings or nested objects).
struct JsonObject(Vec<String>);

impl JsonObject {
    fn new() -> JsonObject {
        JsonObject(Vec::new())
    }
    fn string(mut self, key: &str, value: &str) -> JsonObject {
        self.0.push(format!(
            "\"{key}\": \"{}\"",
            value.replace('\\', "\\\\").replace('"', "\\\"")
        ));
        self
    }
    fn int(mut self, key: &str, value: u64) -> JsonObject {
        self.0.push(format!("\"{key}\": {value}"));
        self
    }
    fn float(mut self, key: &str, value: f64) -> JsonObject {
        let text = if value.is_finite() {
            format!("{value:.6}")
        } else {
            "null".into()
        };
        self.0.push(format!("\"{key}\": {text}"));
        self
    }
    fn object(mut self, key: &str, value: JsonObject) -> JsonObject {
        self.0.push(format!("\"{key}\": {}", value.render()));
        self
    }
    fn render(&self) -> String {
        format!("{{{}}}", self.0.join(", "))
    }
    fn print(&self) {
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "{}", self.render());
        let _ = stdout.flush();
    }
}

// --- echo ----------------------------------------------------------------------------------

/// When the measurement runs, shared by all echo threads.
#[derive(Clone, Copy)]
struct EchoPlan {
    measure_from: Instant,
    /// Duration mode: completions in [measure_from, measure_until) count.
    measure_until: Option<Instant>,
    /// Requests mode: the requests this thread issues after `measure_from`, all counted.
    requests: Option<u64>,
    /// Poll epoll without ever sleeping, so this CPU never idles.
    spin: bool,
}

struct EchoConnection {
    socket: Stream,
    send: Vec<u8>,
    receive: Vec<u8>,
    sent: usize,
    received: usize,
    started: Instant,
    busy: bool,
    /// Whether this request counts (requests mode; duration mode decides on completion).
    counted: bool,
    wants_writable: bool,
    sequence: u64,
}

#[derive(Default)]
struct EchoOutcome {
    counted: u64,
    total: u64,
    latencies_ns: Vec<u64>,
    last_counted_completion: Option<Instant>,
}

const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn echo_thread(sockets: Vec<Stream>, size: usize, first_id: usize, plan: EchoPlan) -> EchoOutcome {
    let epoll = Epoll::new().unwrap_or_else(|error| fail(format!("epoll_create1: {error}")));
    let mut connections: Vec<EchoConnection> = sockets
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            let id = (first_id + index) as u8;
            let send = (0..size)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(id))
                .collect();
            EchoConnection {
                socket,
                send,
                receive: vec![0; size],
                sent: 0,
                received: 0,
                started: plan.measure_from,
                busy: false,
                counted: false,
                wants_writable: false,
                sequence: 0,
            }
        })
        .collect();
    for (token, connection) in connections.iter().enumerate() {
        epoll
            .add(connection.socket.as_raw_fd(), READABLE, token)
            .unwrap_or_else(|error| fail(format!("epoll_ctl: {error}")));
    }

    let mut outcome = EchoOutcome::default();
    let issued_counted = std::cell::Cell::new(0u64); // requests mode: counted requests issued
    let mut busy = 0usize;
    let mut drain_deadline: Option<Instant> = None;

    // Starts the next request on `connection` if the plan allows one; returns whether it did.
    let try_begin = |connection: &mut EchoConnection, now: Instant, epoll: &Epoll, token| {
        let counted = match (plan.measure_until, plan.requests) {
            (Some(until), _) => {
                if now >= until {
                    return false;
                }
                false // decided on completion
            }
            (None, Some(quota)) => {
                if now >= plan.measure_from {
                    if issued_counted.get() >= quota {
                        return false;
                    }
                    issued_counted.set(issued_counted.get() + 1);
                    true
                } else {
                    false
                }
            }
            (None, None) => unreachable!(),
        };
        connection.sequence += 1;
        let stamp = connection.sequence.to_le_bytes();
        let stamp_len = stamp.len().min(size);
        connection.send[..stamp_len].copy_from_slice(&stamp[..stamp_len]);
        connection.sent = 0;
        connection.received = 0;
        connection.started = now;
        connection.busy = true;
        connection.counted = counted;
        write_some(connection, epoll, token);
        true
    };

    let start = Instant::now();
    for (token, connection) in connections.iter_mut().enumerate() {
        if try_begin(connection, start, &epoll, token) {
            busy += 1;
        }
    }

    let mut events = empty_events(64);
    while busy > 0 {
        let now = Instant::now();
        let stopping = match (plan.measure_until, plan.requests) {
            (Some(until), _) => now >= until,
            (None, Some(quota)) => issued_counted.get() >= quota,
            (None, None) => unreachable!(),
        };
        if stopping {
            let deadline = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
            if now >= deadline {
                fail(format!(
                    "{busy} request(s) still unanswered {DRAIN_TIMEOUT:?} after the end"
                ));
            }
        }
        // Wake up at the phase boundaries so that idle waiting does not blur them.
        let timeout = [Some(plan.measure_from), plan.measure_until, drain_deadline]
            .into_iter()
            .flatten()
            .filter(|&instant| instant > now)
            .min()
            .map(|instant| instant - now);
        let n = epoll.wait(
            &mut events,
            if plan.spin {
                Some(Duration::ZERO)
            } else {
                timeout
            },
        );
        for event in &events[..n] {
            let token = event.u64 as usize;
            let flags = event.events;
            let connection = &mut connections[token];
            if !connection.busy {
                // Nothing should arrive between requests: read it so the check below fails.
                if flags & (READABLE | HANGUP) != 0 {
                    let mut probe = [0u8; 1];
                    match connection.socket.read(&mut probe) {
                        Ok(0) => fail("the server closed a connection between requests"),
                        Ok(_) => fail("the server sent bytes that were not an echo"),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(error) => fail(format!("read: {error}")),
                    }
                }
                continue;
            }
            if flags & WRITABLE != 0 && connection.sent < size {
                write_some(connection, &epoll, token);
            }
            if flags & (READABLE | HANGUP) != 0 {
                read_some(connection);
            }
            if connection.received == size {
                let done = Instant::now();
                if connection.receive != connection.send {
                    fail(format!(
                        "echo mismatch on connection {} request {}",
                        first_id + token,
                        connection.sequence
                    ));
                }
                outcome.total += 1;
                let counts = match plan.measure_until {
                    Some(until) => done >= plan.measure_from && done < until,
                    None => connection.counted,
                };
                if counts {
                    outcome.counted += 1;
                    outcome
                        .latencies_ns
                        .push((done - connection.started).as_nanos() as u64);
                    outcome.last_counted_completion = Some(done);
                }
                connection.busy = false;
                busy -= 1;
                if try_begin(connection, done, &epoll, token) {
                    busy += 1;
                }
            }
        }
    }
    for connection in connections {
        connection.socket.close();
    }
    outcome
}

/// Writes as much of the current request as the socket takes, and asks epoll for
/// writability exactly while some of it is left.
fn write_some(connection: &mut EchoConnection, epoll: &Epoll, token: usize) {
    while connection.sent < connection.send.len() {
        match connection.socket.write(&connection.send[connection.sent..]) {
            Ok(0) => fail("write returned 0"),
            Ok(n) => connection.sent += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => fail(format!("write: {error}")),
        }
    }
    let wants_writable = connection.sent < connection.send.len();
    if wants_writable != connection.wants_writable {
        let events = if wants_writable {
            READABLE | WRITABLE
        } else {
            READABLE
        };
        epoll
            .modify(connection.socket.as_raw_fd(), events, token)
            .unwrap_or_else(|error| fail(format!("epoll_ctl: {error}")));
        connection.wants_writable = wants_writable;
    }
}

fn read_some(connection: &mut EchoConnection) {
    while connection.received < connection.receive.len() {
        match connection
            .socket
            .read(&mut connection.receive[connection.received..])
        {
            Ok(0) => fail(format!(
                "the server closed a connection after echoing {} of {} bytes",
                connection.received,
                connection.receive.len()
            )),
            Ok(n) => connection.received += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => fail(format!("read: {error}")),
        }
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e3
}

fn run_echo(options: &Options) {
    let tls = options.tls.as_deref().map(tls_connector);
    let sockets: Vec<Stream> = (0..options.conns)
        .map(|_| Stream::connect(&options.endpoint, tls.as_ref(), true).unwrap_or_else(|e| fail(e)))
        .collect();
    let threads = options.threads.min(options.conns);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(options.warmup);
    let measure_until = options
        .duration
        .map(|d| measure_from + Duration::from_secs_f64(d));

    // Deal connections (and, in requests mode, requests) out to the threads evenly.
    let mut remaining_sockets = sockets.into_iter();
    let mut handles = Vec::new();
    let mut first_id = 0;
    for thread in 0..threads {
        let count = options.conns / threads + usize::from(thread < options.conns % threads);
        let share: Vec<Stream> = remaining_sockets.by_ref().take(count).collect();
        let requests = options.requests.map(|total| {
            total / threads as u64 + u64::from((thread as u64) < total % threads as u64)
        });
        let plan = EchoPlan {
            measure_from,
            measure_until,
            requests,
            spin: options.spin,
        };
        let size = options.size;
        handles.push(std::thread::spawn(move || {
            echo_thread(share, size, first_id, plan)
        }));
        first_id += count;
    }
    let mut outcome = EchoOutcome::default();
    for handle in handles {
        let part = handle
            .join()
            .unwrap_or_else(|_| fail("an echo thread panicked"));
        outcome.counted += part.counted;
        outcome.total += part.total;
        outcome.latencies_ns.extend(part.latencies_ns);
        outcome.last_counted_completion = outcome
            .last_counted_completion
            .max(part.last_counted_completion);
    }
    let elapsed = match measure_until {
        Some(until) => (until - measure_from).as_secs_f64(),
        None => outcome
            .last_counted_completion
            .map_or(0.0, |last| (last - measure_from).as_secs_f64()),
    };
    if outcome.counted == 0 {
        fail("no round trip completed during the measurement");
    }
    outcome.latencies_ns.sort_unstable();
    let latencies = &outcome.latencies_ns;
    let rate = outcome.counted as f64 / elapsed;
    JsonObject::new()
        .string("mode", "echo")
        .int("conns", options.conns as u64)
        .int("size", options.size as u64)
        .int("threads", threads as u64)
        .int("round_trips", outcome.counted)
        .float("elapsed_s", elapsed)
        .float("round_trips_per_s", rate)
        .float("mb_per_s", rate * options.size as f64 / 1e6)
        .object(
            "latency_us",
            JsonObject::new()
                .float("p50", percentile(latencies, 0.50))
                .float("p90", percentile(latencies, 0.90))
                .float("p99", percentile(latencies, 0.99))
                .float("max", percentile(latencies, 1.0)),
        )
        .int("total_round_trips", outcome.total)
        .print();
}

// --- bulk ----------------------------------------------------------------------------------

fn run_bulk(options: &Options) {
    let tls = options.tls.as_deref().map(tls_connector);
    let mut socket =
        Stream::connect(&options.endpoint, tls.as_ref(), false).unwrap_or_else(|e| fail(e));
    let total = options.bytes;
    let chunk: Vec<u8> = (0..options.chunk)
        .map(|i| (i as u8).wrapping_mul(31))
        .collect();
    let start = Instant::now();
    socket
        .write_all(&total.to_be_bytes())
        .unwrap_or_else(|error| fail(format!("write: {error}")));
    let mut remaining = total;
    while remaining > 0 {
        let n = remaining.min(chunk.len() as u64) as usize;
        socket.write_all(&chunk[..n]).unwrap_or_else(|error| {
            fail(format!("write after {} bytes: {error}", total - remaining))
        });
        remaining -= n as u64;
    }
    let mut answer = [0u8; 8];
    socket
        .read_exact(&mut answer)
        .unwrap_or_else(|error| fail(format!("reading the server's byte count: {error}")));
    let elapsed = start.elapsed().as_secs_f64();
    socket.close();
    let acknowledged = u64::from_be_bytes(answer);
    if acknowledged != total {
        fail(format!(
            "the server says it received {acknowledged} bytes, not {total}"
        ));
    }
    JsonObject::new()
        .string("mode", "bulk")
        .int("bytes", total)
        .int("chunk", options.chunk as u64)
        .float("elapsed_s", elapsed)
        .float("mb_per_s", total as f64 / elapsed / 1e6)
        .print();
}

// --- idle ----------------------------------------------------------------------------------

fn run_idle(options: &Options) {
    let epoll = Epoll::new().unwrap_or_else(|error| fail(format!("epoll_create1: {error}")));
    let n = options.conns;
    let mut sockets: Vec<File> = Vec::with_capacity(n);
    let mut events = empty_events(256);
    let mut unanswered = 0usize;
    let mut answered = 0usize;

    let mut collect_answers = |sockets: &mut Vec<File>, unanswered: &mut usize, timeout| {
        let ready = epoll.wait(&mut events, timeout);
        for event in &events[..ready] {
            let token = event.u64 as usize;
            let socket = &mut sockets[token];
            let mut byte = [0u8; 1];
            match socket.read(&mut byte) {
                Ok(1) => {
                    // Answered: stop watching it, so that nothing wakes us for it again.
                    epoll
                        .delete(socket.as_raw_fd())
                        .unwrap_or_else(|error| fail(format!("epoll_ctl: {error}")));
                    *unanswered -= 1;
                    answered += 1;
                }
                Ok(_) => fail(format!("the server closed connection {token} unanswered")),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => fail(format!("read: {error}")),
            }
        }
        ready
    };

    let start = Instant::now();
    for token in 0..n {
        while unanswered >= options.inflight {
            if collect_answers(&mut sockets, &mut unanswered, Some(Duration::from_secs(30))) == 0 {
                fail(format!(
                    "no answer for 30 s with {unanswered} connections waiting"
                ));
            }
        }
        let mut socket = options.endpoint.connect(true).unwrap_or_else(|error| {
            fail(format!(
                "connect #{token}: {error} (after {token} connections)"
            ))
        });
        match socket.write(b"?") {
            Ok(1) => {}
            Ok(_) => fail("write returned 0"),
            Err(error) => fail(format!("write: {error}")),
        }
        epoll
            .add(socket.as_raw_fd(), READABLE, token)
            .unwrap_or_else(|error| fail(format!("epoll_ctl: {error}")));
        sockets.push(socket);
        unanswered += 1;
        // Pick up answers as they come, so the last one is seen as soon as it arrives.
        collect_answers(&mut sockets, &mut unanswered, Some(Duration::ZERO));
    }
    while unanswered > 0 {
        if collect_answers(&mut sockets, &mut unanswered, Some(Duration::from_secs(30))) == 0 {
            fail(format!(
                "no answer for 30 s with {unanswered} connections waiting"
            ));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(answered, n);
    JsonObject::new()
        .string("mode", "idle")
        .int("conns", n as u64)
        .float("elapsed_s", elapsed)
        .float("conns_per_s", n as f64 / elapsed)
        .print();

    // Hold every connection open until standard input closes (or a signal ends us).
    let mut sink = [0u8; 4096];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(sockets);
}

// --- udp -----------------------------------------------------------------------------------

/// A datagram carries its 8-byte sequence number, so a late or duplicated echo is recognised.
const UDP_MIN_SIZE: usize = 8;
/// The largest UDP payload over IPv4.
const UDP_MAX_SIZE: usize = 65507;

struct UdpClient {
    socket: UdpSocket,
    send: Vec<u8>,
    /// One byte longer than a datagram, so that a longer echo shows as such.
    receive: Vec<u8>,
    sequence: u64,
    /// When the current datagram was first sent.
    started: Instant,
    /// When to send it again if its echo has not come back.
    resend_at: Instant,
    busy: bool,
}

#[derive(Default)]
struct UdpOutcome {
    counted: u64,
    total: u64,
    latencies_ns: Vec<u64>,
    datagrams_sent: u64,
    echoes_received: u64,
    resent: u64,
    late: u64,
}

/// Sends the client's current datagram. A full socket buffer (`WouldBlock`) loses it like the
/// network would: the resend timer sends it again.
fn send_datagram(client: &mut UdpClient, outcome: &mut UdpOutcome) {
    loop {
        match client.socket.send(&client.send) {
            Ok(n) if n == client.send.len() => {
                outcome.datagrams_sent += 1;
                return;
            }
            Ok(n) => fail(format!("send sent {n} of {} bytes", client.send.len())),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                fail("nothing listens on the server's port (ICMP port unreachable)")
            }
            Err(error) => fail(format!("send: {error}")),
        }
    }
}

/// Starts the client's next request: a new sequence number, sent now.
fn begin_datagram(
    client: &mut UdpClient,
    now: Instant,
    resend_after: Duration,
    outcome: &mut UdpOutcome,
) {
    client.sequence += 1;
    client.send[..UDP_MIN_SIZE].copy_from_slice(&client.sequence.to_le_bytes());
    client.started = now;
    client.resend_at = now + resend_after;
    client.busy = true;
    send_datagram(client, outcome);
}

fn run_udp(options: &Options) {
    let Endpoint::Tcp(server) = options.endpoint else {
        unreachable!("checked when parsing")
    };
    let size = options.size;
    let resend_after = Duration::from_secs_f64(options.resend_after_ms / 1e3);
    let epoll = Epoll::new().unwrap_or_else(|error| fail(format!("epoll_create1: {error}")));
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let mut clients: Vec<UdpClient> = (0..options.conns)
        .map(|id| {
            let socket = UdpSocket::bind(local)
                .and_then(|socket| socket.connect(server).map(|()| socket))
                .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
                .unwrap_or_else(|error| fail(format!("UDP socket: {error}")));
            epoll
                .add(socket.as_raw_fd(), READABLE, id)
                .unwrap_or_else(|error| fail(format!("epoll_ctl: {error}")));
            let send = (0..size)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(id as u8))
                .collect();
            UdpClient {
                socket,
                send,
                receive: vec![0; size + 1],
                sequence: 0,
                started: Instant::now(),
                resend_at: Instant::now(),
                busy: false,
            }
        })
        .collect();

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(options.warmup);
    let measure_until =
        measure_from + Duration::from_secs_f64(options.duration.expect("checked when parsing"));
    let mut outcome = UdpOutcome::default();
    for client in clients.iter_mut() {
        begin_datagram(client, start, resend_after, &mut outcome);
    }
    let mut busy = clients.len();
    let mut drain_deadline: Option<Instant> = None;
    let mut events = empty_events(64);
    while busy > 0 {
        let now = Instant::now();
        if now >= measure_until {
            let deadline = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
            if now >= deadline {
                fail(format!(
                    "{busy} datagram(s) still unanswered {DRAIN_TIMEOUT:?} after the end"
                ));
            }
        }
        let mut next_resend: Option<Instant> = None;
        for client in clients.iter_mut().filter(|client| client.busy) {
            if client.resend_at <= now {
                send_datagram(client, &mut outcome);
                outcome.resent += 1;
                client.resend_at = now + resend_after;
            }
            next_resend = Some(next_resend.map_or(client.resend_at, |at| at.min(client.resend_at)));
        }
        // Wake up at the phase boundaries and when a datagram is due to be re-sent.
        let timeout = [
            Some(measure_from),
            Some(measure_until),
            drain_deadline,
            next_resend,
        ]
        .into_iter()
        .flatten()
        .filter(|&instant| instant > now)
        .min()
        .map(|instant| instant - now);
        let n = epoll.wait(&mut events, timeout);
        for event in &events[..n] {
            let token = event.u64 as usize;
            let client = &mut clients[token];
            loop {
                let length = match client.socket.recv(&mut client.receive) {
                    Ok(length) => length,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        fail("nothing listens on the server's port (ICMP port unreachable)")
                    }
                    Err(error) => fail(format!("recv: {error}")),
                };
                outcome.echoes_received += 1;
                if length != size {
                    fail(format!(
                        "socket {token} got a datagram of {length} bytes, not {size}"
                    ));
                }
                let mut stamp = [0u8; UDP_MIN_SIZE];
                stamp.copy_from_slice(&client.receive[..UDP_MIN_SIZE]);
                let sequence = u64::from_le_bytes(stamp);
                if sequence > client.sequence {
                    fail(format!(
                        "socket {token} got an echo of datagram {sequence}, which it never sent"
                    ));
                }
                if sequence < client.sequence || !client.busy {
                    outcome.late += 1; // the echo of a datagram re-sent and answered already
                    continue;
                }
                if client.receive[..size] != client.send[..] {
                    fail(format!(
                        "echo mismatch on socket {token} datagram {sequence}"
                    ));
                }
                let done = Instant::now();
                outcome.total += 1;
                if done >= measure_from && done < measure_until {
                    outcome.counted += 1;
                    outcome
                        .latencies_ns
                        .push((done - client.started).as_nanos() as u64);
                }
                client.busy = false;
                busy -= 1;
                if done < measure_until {
                    begin_datagram(client, done, resend_after, &mut outcome);
                    busy += 1;
                }
            }
        }
    }
    if outcome.counted == 0 {
        fail("no round trip completed during the measurement");
    }
    outcome.latencies_ns.sort_unstable();
    let latencies = &outcome.latencies_ns;
    let elapsed = (measure_until - measure_from).as_secs_f64();
    let rate = outcome.counted as f64 / elapsed;
    JsonObject::new()
        .string("mode", "udp")
        .int("conns", options.conns as u64)
        .int("size", size as u64)
        .int("round_trips", outcome.counted)
        .float("elapsed_s", elapsed)
        .float("round_trips_per_s", rate)
        .float("mb_per_s", rate * size as f64 / 1e6)
        .object(
            "latency_us",
            JsonObject::new()
                .float("p50", percentile(latencies, 0.50))
                .float("p90", percentile(latencies, 0.90))
                .float("p99", percentile(latencies, 0.99))
                .float("max", percentile(latencies, 1.0)),
        )
        .int("total_round_trips", outcome.total)
        .int("datagrams_sent", outcome.datagrams_sent)
        .int("echoes_received", outcome.echoes_received)
        .int("resent", outcome.resent)
        .int("late", outcome.late)
        .print();
}

fn main() {
    let options = parse_options();
    raise_open_files_limit();
    match options.mode.as_str() {
        "echo" => run_echo(&options),
        "bulk" => run_bulk(&options),
        "idle" => run_idle(&options),
        "udp" => run_udp(&options),
        _ => unreachable!(),
    }
}
