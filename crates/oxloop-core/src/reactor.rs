//! The reactor: readiness of file descriptors, on `mio` (epoll on Linux).
//!
//! Invariants:
//! - [`Reactor`] owns the epoll instance's event buffer and is used by exactly one thread at a
//!   time: the loop's, while it waits (with the GIL released by the caller).
//! - [`Registrar`] owns the bookkeeping of what is watched; its owner guards it (the loop's
//!   state cell, borrowed with the GIL held). mio's `Registry` is thread-safe, so registering
//!   never waits for a poll.
//! - Neither owns a watched descriptor: the caller keeps it open while it is registered and
//!   unregisters it before closing it. The waker (an eventfd) is owned by the reactor.
//! - mio is edge-triggered. A [`Trigger::Level`] watch (asyncio's `add_reader` semantics: called
//!   every iteration while the fd is ready) is re-armed after each event it reports, which
//!   makes epoll report it again while it stays ready. [`Trigger::Edge`] watches (native
//!   transports, which read until `EAGAIN`) are not.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

/// Wakes a reactor blocked in [`Reactor::poll`] from any thread.
pub use mio::Waker;

/// Token of the waker; descriptors use their own number as token.
const WAKER_TOKEN: Token = Token(usize::MAX);

/// How many readiness events one poll returns at most.
const EVENTS_CAPACITY: usize = 1024;

/// How a watch reports readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Reported on every poll while the descriptor is ready.
    Level,
    /// Reported once per transition to ready.
    Edge,
}

/// What is watched on one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// Report readability.
    pub readable: bool,
    /// Report writability.
    pub writable: bool,
    /// How readiness is reported.
    pub trigger: Trigger,
}

impl Watch {
    fn interest(&self) -> Option<Interest> {
        match (self.readable, self.writable) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

/// Readiness of one descriptor, as reported by one poll. Errors and hang-ups make a
/// descriptor both readable and writable, as asyncio's selectors report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The descriptor.
    pub fd: RawFd,
    /// A read (or accept) would not block.
    pub readable: bool,
    /// A write (or connect completion) would not block.
    pub writable: bool,
    /// The peer closed its side, or the descriptor has an error: a read that returns data now
    /// will be followed by an end of file or an error, with no further readiness event.
    pub read_closed: bool,
}

/// What one poll saw besides descriptor readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// The wait was interrupted by a signal (`EINTR`); the caller should run signal handlers.
    pub interrupted: bool,
    /// The waker was triggered (a threadsafe call or a stop from another thread).
    pub woken: bool,
}

/// The waiting half of the reactor.
pub struct Reactor {
    poll: Poll,
    events: Events,
}

/// The registering half of the reactor.
pub struct Registrar {
    registry: Registry,
    watches: HashMap<RawFd, Watch>,
}

/// Creates a reactor, its registrar and its waker.
pub fn new() -> io::Result<(Reactor, Registrar, Arc<Waker>)> {
    let poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
    let reactor = Reactor { poll, events: Events::with_capacity(EVENTS_CAPACITY) };
    Ok((reactor, Registrar { registry, watches: HashMap::new() }, waker))
}

impl Reactor {
    /// Waits up to `timeout` (`None`: forever) and appends the ready descriptors to `ready`.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Readiness>,
    ) -> io::Result<PollOutcome> {
        let mut outcome = PollOutcome::default();
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                outcome.interrupted = true;
                return Ok(outcome);
            }
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            if event.token() == WAKER_TOKEN {
                outcome.woken = true;
                continue;
            }
            let failed = event.is_error();
            ready.push(Readiness {
                fd: event.token().0 as RawFd,
                readable: event.is_readable() || event.is_read_closed() || failed,
                writable: event.is_writable() || event.is_write_closed() || failed,
                read_closed: event.is_read_closed() || failed,
            });
        }
        Ok(outcome)
    }
}

impl Registrar {
    /// Sets the whole watch of `fd`: registers, modifies or (nothing to watch) unregisters it.
    pub fn set_watch(&mut self, fd: RawFd, watch: Watch) -> io::Result<()> {
        let previous = self.watches.get(&fd).copied();
        match (previous, watch.interest()) {
            (None, None) => Ok(()),
            (None, Some(interest)) => {
                self.registry.register(&mut SourceFd(&fd), Token(fd as usize), interest)?;
                self.watches.insert(fd, watch);
                Ok(())
            }
            (Some(_), Some(interest)) => {
                match self.registry.reregister(&mut SourceFd(&fd), Token(fd as usize), interest) {
                    Ok(()) => {
                        self.watches.insert(fd, watch);
                        Ok(())
                    }
                    Err(err) => {
                        if closed_while_watched(&err) {
                            // epoll dropped the descriptor when it was closed; its number may
                            // name another file now (ENOENT) or none (EBADF). Forgotten here too.
                            self.watches.remove(&fd);
                        }
                        Err(err)
                    }
                }
            }
            (Some(_), None) => {
                self.watches.remove(&fd);
                // The fd may already be closed (epoll then forgot it): nothing left to undo.
                let _ = self.registry.deregister(&mut SourceFd(&fd));
                Ok(())
            }
        }
    }

    /// Stops watching `fd` entirely. Returns what was watched.
    pub fn unwatch(&mut self, fd: RawFd) -> Option<Watch> {
        let previous = self.watches.get(&fd).copied()?;
        let _ = self
            .set_watch(fd, Watch { readable: false, writable: false, trigger: previous.trigger });
        Some(previous)
    }

    /// After `fd` was reported ready: re-arms a level watch so epoll reports it again while it
    /// stays ready. A descriptor closed behind our back is forgotten.
    pub fn rearm_if_level(&mut self, fd: RawFd) {
        if let Some(watch) = self.watches.get(&fd) {
            if watch.trigger == Trigger::Level {
                if let Some(interest) = watch.interest() {
                    if self
                        .registry
                        .reregister(&mut SourceFd(&fd), Token(fd as usize), interest)
                        .is_err()
                    {
                        self.watches.remove(&fd);
                    }
                }
            }
        }
    }

    /// Unregisters every descriptor (the loop is closing).
    pub fn unwatch_all(&mut self) {
        for fd in self.watches.keys().copied().collect::<Vec<_>>() {
            self.unwatch(fd);
        }
    }

    /// Whether `fd` is watched.
    pub fn is_watched(&self, fd: RawFd) -> bool {
        self.watches.contains_key(&fd)
    }

    /// Whether epoll still watches `fd` itself: false when the descriptor was closed while
    /// watched (epoll then dropped it), which this also forgets. Re-arms the watch.
    pub fn confirm(&mut self, fd: RawFd) -> bool {
        let Some(watch) = self.watches.get(&fd).copied() else { return false };
        self.set_watch(fd, watch).is_ok() || self.is_watched(fd)
    }

    /// Number of watched descriptors.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    /// Whether no descriptor is watched.
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }
}

/// Whether a failed `EPOLL_CTL_MOD` means the watched descriptor was closed behind our back.
fn closed_while_watched(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT | libc::EBADF))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    const SHORT: Option<Duration> = Some(Duration::from_millis(50));

    fn level(readable: bool, writable: bool) -> Watch {
        Watch { readable, writable, trigger: Trigger::Level }
    }

    #[test]
    fn level_watch_reports_until_drained() {
        let (mut reactor, mut registrar, _waker) = new().unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        registrar.set_watch(fd, level(true, false)).unwrap();
        a.write_all(b"hello").unwrap();
        for _ in 0..3 {
            let mut ready = Vec::new();
            reactor.poll(SHORT, &mut ready).unwrap();
            assert_eq!(
                ready,
                vec![Readiness { fd, readable: true, writable: false, read_closed: false }]
            );
            registrar.rearm_if_level(fd);
        }
        let mut buf = [0u8; 16];
        assert_eq!(b.read(&mut buf).unwrap(), 5);
        let mut ready = Vec::new();
        reactor.poll(Some(Duration::ZERO), &mut ready).unwrap();
        assert!(ready.is_empty());
    }

    #[test]
    fn edge_watch_reports_once() {
        let (mut reactor, mut registrar, _waker) = new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        registrar
            .set_watch(fd, Watch { readable: true, writable: false, trigger: Trigger::Edge })
            .unwrap();
        a.write_all(b"x").unwrap();
        let mut ready = Vec::new();
        reactor.poll(SHORT, &mut ready).unwrap();
        assert_eq!(ready.len(), 1);
        registrar.rearm_if_level(fd);
        ready.clear();
        reactor.poll(Some(Duration::ZERO), &mut ready).unwrap();
        assert!(ready.is_empty());
    }

    #[test]
    fn waker_interrupts_a_wait() {
        let (mut reactor, _registrar, waker) = new().unwrap();
        // The test keeps its own reference: closing the eventfd would drop the pending event.
        let remote = Arc::clone(&waker);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            remote.wake().unwrap();
        });
        let mut ready = Vec::new();
        let outcome = reactor.poll(Some(Duration::from_secs(10)), &mut ready).unwrap();
        assert!(outcome.woken);
        thread.join().unwrap();
    }

    #[test]
    fn hangup_is_readable_and_writable() {
        let (mut reactor, mut registrar, _waker) = new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        registrar.set_watch(fd, level(true, false)).unwrap();
        drop(a);
        let mut ready = Vec::new();
        reactor.poll(SHORT, &mut ready).unwrap();
        assert!(ready[0].readable);
    }

    #[test]
    fn confirm_tells_a_live_watch_from_one_closed_behind_our_back() {
        let (_reactor, mut registrar, _waker) = new().unwrap();
        let (_a, b) = UnixStream::pair().unwrap();
        let (_c, d) = UnixStream::pair().unwrap();
        registrar.set_watch(b.as_raw_fd(), level(true, false)).unwrap();
        registrar.set_watch(d.as_raw_fd(), level(true, false)).unwrap();
        let closed = b.as_raw_fd();
        drop(b);
        assert!(registrar.confirm(d.as_raw_fd()));
        assert!(!registrar.confirm(closed));
        assert!(!registrar.is_watched(closed));
    }

    #[test]
    fn modifying_a_descriptor_closed_while_watched_forgets_it() {
        let (_reactor, mut registrar, _waker) = new().unwrap();
        let (_a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        registrar.set_watch(fd, level(true, false)).unwrap();
        drop(b);
        // (Another test's thread may take the number meanwhile: ENOENT then, EBADF if not.)
        let err = registrar.set_watch(fd, level(true, true)).unwrap_err();
        assert!(closed_while_watched(&err), "{err}");
        assert!(!registrar.is_watched(fd));
    }

    #[test]
    fn unwatch_and_modify() {
        let (mut reactor, mut registrar, _waker) = new().unwrap();
        let (_a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        registrar.set_watch(fd, level(true, false)).unwrap();
        registrar.set_watch(fd, level(true, true)).unwrap();
        let mut ready = Vec::new();
        reactor.poll(SHORT, &mut ready).unwrap();
        assert_eq!(
            ready,
            vec![Readiness { fd, readable: false, writable: true, read_closed: false }]
        );
        assert_eq!(registrar.unwatch(fd), Some(level(true, true)));
        assert!(registrar.is_empty());
        ready.clear();
        reactor.poll(Some(Duration::ZERO), &mut ready).unwrap();
        assert!(ready.is_empty());
    }
}
