//! `WriteBuffer`: a stream transport's outgoing data not yet accepted by the kernel.
//!
//! The buffer is a queue of chunks: immutable bytes kept by reference (`B`, which the owner
//! chooses: the Python crate keeps `bytes` objects) or copies. Small writes that follow other
//! buffered data are copied into a shared chunk, so that many small writes make few `iovec`s;
//! large ones are kept by reference, never copied.
//!
//! Invariants: plain data, not synchronised; the owner (a transport) decides which thread
//! touches it. `len()` is always the number of unsent bytes over all chunks, and the first
//! chunk's first `sent_of_first` bytes are the only sent bytes still held. The buffer owns no
//! file descriptor: [`WriteBuffer::fill_iovecs`] only describes its data for a send.

use std::collections::VecDeque;
use std::mem::MaybeUninit;

/// Writes up to this size that follow other buffered data are copied into a shared chunk, so
/// that many small writes make few `iovec`s; larger data is kept by reference.
pub const COALESCE_LIMIT: usize = 4 * 1024;
/// The largest shared chunk small writes are copied into.
pub const CHUNK_CAPACITY: usize = 64 * 1024;
/// `iovec`s per send: the most [`WriteBuffer::fill_iovecs`] describes at once.
pub const MAX_IOVECS: usize = 64;

/// One piece of buffered outgoing data.
pub enum Chunk<B> {
    /// Immutable bytes, kept by reference.
    Shared(B),
    /// A copy (of a mutable buffer, or of small writes coalesced together).
    Owned(Vec<u8>),
}

impl<B: AsRef<[u8]>> Chunk<B> {
    /// The chunk's bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Shared(bytes) => bytes.as_ref(),
            Chunk::Owned(data) => data,
        }
    }
}

/// Outgoing data not yet accepted by the kernel, in order.
pub struct WriteBuffer<B> {
    chunks: VecDeque<Chunk<B>>,
    /// Bytes of the first chunk already sent.
    sent_of_first: usize,
    /// Bytes not yet sent, over all chunks.
    len: usize,
}

impl<B> Default for WriteBuffer<B> {
    fn default() -> Self {
        WriteBuffer { chunks: VecDeque::new(), sent_of_first: 0, len: 0 }
    }
}

impl<B: AsRef<[u8]>> WriteBuffer<B> {
    /// Whether every buffered byte was sent.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not yet sent.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends a copy of `data`, into the last chunk when it is a small copy with room left.
    pub fn push_copy(&mut self, data: &[u8]) {
        self.len += data.len();
        if data.len() <= COALESCE_LIMIT {
            if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
                if last.len() + data.len() <= CHUNK_CAPACITY {
                    last.extend_from_slice(data);
                    return;
                }
            }
        }
        self.chunks.push_back(Chunk::Owned(data.to_vec()));
    }

    /// Appends a copy made by the caller: small ones are coalesced, large ones kept.
    pub fn push_owned(&mut self, data: Vec<u8>) {
        if data.len() <= COALESCE_LIMIT {
            self.push_copy(&data);
        } else {
            self.len += data.len();
            self.chunks.push_back(Chunk::Owned(data));
        }
    }

    /// Appends immutable bytes `data`, which `share` makes a reference to: kept by reference
    /// when they are large or the buffer is empty (the common case of one write per send: no
    /// copy), else copied (coalesced). `share` is called only when the reference is kept.
    #[inline]
    pub fn push_shared(&mut self, data: &[u8], share: impl FnOnce() -> B) {
        if data.len() <= COALESCE_LIMIT && !self.chunks.is_empty() {
            self.push_copy(data);
        } else {
            self.len += data.len();
            self.chunks.push_back(Chunk::Shared(share()));
        }
    }

    /// Fills the start of `iov` with the unsent data, in order (at most [`MAX_IOVECS`]
    /// chunks); returns those entries. They point into the buffer: valid until it changes.
    pub fn fill_iovecs<'a>(
        &self,
        iov: &'a mut [MaybeUninit<libc::iovec>; MAX_IOVECS],
    ) -> &'a [libc::iovec] {
        let mut used = 0;
        for (index, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            let mut data = chunk.as_slice();
            if index == 0 {
                data = &data[self.sent_of_first..];
            }
            iov[used].write(libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            });
            used += 1;
        }
        // SAFETY: the first `used` entries were initialised just above.
        unsafe { std::slice::from_raw_parts(iov.as_ptr().cast::<libc::iovec>(), used) }
    }

    /// Forgets the first `sent` bytes, dropping the chunks fully sent (the owner's `B` decides
    /// what a drop costs: see the Python crate's use).
    ///
    /// `sent` is at most [`Self::len`] (what a send of the filled `iovec`s can report).
    pub fn consume(&mut self, mut sent: usize) {
        self.len -= sent;
        while sent > 0 {
            let first_len = self.chunks.front().expect("sent bytes were buffered").as_slice().len();
            let left_in_first = first_len - self.sent_of_first;
            if sent < left_in_first {
                self.sent_of_first += sent;
                return;
            }
            sent -= left_in_first;
            self.sent_of_first = 0;
            self.chunks.pop_front();
        }
    }

    /// Empties the buffer, returning the chunks (for the owner to drop when it chooses).
    pub fn clear(&mut self) -> VecDeque<Chunk<B>> {
        self.len = 0;
        self.sent_of_first = 0;
        std::mem::take(&mut self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Buffer = WriteBuffer<Vec<u8>>;

    /// The unsent bytes, in order, as `fill_iovecs` describes them.
    fn unsent(buffer: &Buffer) -> Vec<u8> {
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_IOVECS];
        let mut out = Vec::new();
        for piece in buffer.fill_iovecs(&mut iov) {
            // SAFETY: the iovecs describe live chunks of `buffer`, not changed meanwhile.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(piece.iov_base as *const u8, piece.iov_len)
            });
        }
        out
    }

    fn chunk_count(buffer: &Buffer) -> usize {
        buffer.chunks.len()
    }

    #[test]
    fn first_shared_write_is_kept_by_reference() {
        let mut buffer = Buffer::default();
        let mut shared = 0;
        buffer.push_shared(b"hello", || {
            shared += 1;
            b"hello".to_vec()
        });
        assert_eq!(shared, 1);
        assert!(matches!(buffer.chunks.front(), Some(Chunk::Shared(_))));
        assert_eq!(buffer.len(), 5);
        assert_eq!(unsent(&buffer), b"hello");
    }

    #[test]
    fn small_writes_after_other_data_are_coalesced() {
        let mut buffer = Buffer::default();
        buffer.push_copy(b"a");
        buffer.push_shared(b"bc", || panic!("a small write after other data is copied"));
        buffer.push_owned(b"def".to_vec());
        buffer.push_copy(b"g");
        assert_eq!(chunk_count(&buffer), 1);
        assert_eq!(buffer.len(), 7);
        assert_eq!(unsent(&buffer), b"abcdefg");
    }

    #[test]
    fn large_writes_are_kept_whole() {
        let large = vec![7u8; COALESCE_LIMIT + 1];
        let mut buffer = Buffer::default();
        buffer.push_copy(b"x");
        buffer.push_shared(&large, || large.clone());
        buffer.push_owned(large.clone());
        assert_eq!(chunk_count(&buffer), 3);
        assert!(matches!(buffer.chunks[1], Chunk::Shared(_)));
        assert_eq!(buffer.len(), 1 + 2 * large.len());
        // A small copy after a large owned chunk starts a new chunk only if that one is full.
        buffer.push_copy(b"y");
        assert_eq!(chunk_count(&buffer), 3);
    }

    #[test]
    fn coalescing_stops_at_the_chunk_capacity() {
        let piece = vec![1u8; COALESCE_LIMIT];
        let mut buffer = Buffer::default();
        for _ in 0..CHUNK_CAPACITY / COALESCE_LIMIT {
            buffer.push_copy(&piece);
        }
        assert_eq!(chunk_count(&buffer), 1);
        buffer.push_copy(b"z");
        assert_eq!(chunk_count(&buffer), 2);
        assert_eq!(buffer.len(), CHUNK_CAPACITY + 1);
    }

    #[test]
    fn fill_describes_at_most_max_iovecs_chunks() {
        let large = vec![0u8; COALESCE_LIMIT + 1];
        let mut buffer = Buffer::default();
        for _ in 0..MAX_IOVECS + 3 {
            buffer.push_shared(&large, || large.clone());
        }
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_IOVECS];
        assert_eq!(buffer.fill_iovecs(&mut iov).len(), MAX_IOVECS);
    }

    #[test]
    fn consume_within_the_first_chunk_keeps_it() {
        let mut buffer = Buffer::default();
        buffer.push_shared(b"abcdef", || b"abcdef".to_vec());
        buffer.consume(2);
        assert_eq!(buffer.len(), 4);
        assert_eq!(chunk_count(&buffer), 1);
        assert_eq!(unsent(&buffer), b"cdef");
        buffer.consume(3);
        assert_eq!(unsent(&buffer), b"f");
    }

    #[test]
    fn consume_across_chunks_drops_whole_ones() {
        let large = vec![5u8; COALESCE_LIMIT + 1];
        let mut buffer = Buffer::default();
        buffer.push_shared(b"ab", || b"ab".to_vec());
        buffer.push_shared(&large, || large.clone());
        buffer.push_copy(b"cd");
        buffer.consume(1);
        // The rest of the first chunk and all but one byte of the second.
        buffer.consume(1 + large.len() - 1);
        assert_eq!(chunk_count(&buffer), 2);
        assert_eq!(unsent(&buffer), b"\x05cd");
        buffer.consume(3);
        assert!(buffer.is_empty());
        assert_eq!(chunk_count(&buffer), 0);
    }

    #[test]
    fn consume_of_exactly_whole_chunks_leaves_no_partial_offset() {
        let mut buffer = Buffer::default();
        buffer.push_shared(b"abc", || b"abc".to_vec());
        buffer.consume(3);
        assert!(buffer.is_empty());
        buffer.push_shared(b"xyz", || b"xyz".to_vec());
        assert_eq!(unsent(&buffer), b"xyz");
    }

    #[test]
    #[should_panic]
    fn consume_more_than_buffered_panics() {
        let mut buffer = Buffer::default();
        buffer.push_copy(b"ab");
        buffer.consume(3);
    }

    #[test]
    fn clear_returns_the_chunks_and_resets() {
        let mut buffer = Buffer::default();
        buffer.push_shared(b"abc", || b"abc".to_vec());
        buffer.push_copy(b"d");
        buffer.consume(1);
        let chunks = buffer.clear();
        assert_eq!(chunks.len(), 2);
        assert!(buffer.is_empty());
        assert_eq!(buffer.len(), 0);
        buffer.push_copy(b"e");
        assert_eq!(unsent(&buffer), b"e");
    }
}
