//! The timer heap: callbacks waiting for a deadline, earliest first, with lazy cancellation.
//!
//! Invariants: guarded by its owner (the loop's state cell). Cancelling a timer is O(1): the
//! owner marks its item cancelled and calls [`TimerHeap::note_cancelled`]; the entry stays in
//! the heap until it reaches the top or until cancelled entries are both more than
//! [`PURGE_MIN_TIMERS`] and more than half of the heap, when the heap is rebuilt without them
//! (asyncio's rule). Entries with equal deadlines come out in the order they were pushed.
//! Removed items are handed back to the caller, never dropped here, so a caller holding a
//! lock can drop them after releasing it.
//!
//! An entry's deadline and push order are packed into one integer key, so ordering two
//! entries is one comparison. When a burst of timers is due at once (a large part of the
//! heap), they are taken out by one partition and one sort instead of a heap pop each.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The heap is purged of cancelled entries only when it holds more than this many.
pub const PURGE_MIN_TIMERS: usize = 100;

/// `pop_due` pops one entry at a time at first; after this many, if the due entries look
/// like a large part of the heap, it takes the rest by partitioning and sorting.
const BURST_MIN_POPPED: usize = 32;

/// The burst path is taken when the heap holds at most this many entries per entry already
/// popped in the same call (a partition visits every entry once; a pop costs a heap's depth).
const BURST_HEAP_PER_POPPED: usize = 8;

/// A deadline as an unsigned integer with the same order as `f64::total_cmp`.
fn deadline_key(when: f64) -> u64 {
    let bits = when.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

/// The deadline a key was made from.
fn key_deadline(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 { key & !(1 << 63) } else { !key })
}

/// One scheduled item: its deadline key (high half) and push sequence number (low half).
#[derive(Debug)]
struct Entry<T> {
    order: u128,
    item: T,
}

impl<T> Entry<T> {
    fn new(when: f64, seq: u64, item: T) -> Self {
        Entry { order: u128::from(deadline_key(when)) << 64 | u128::from(seq), item }
    }

    fn when(&self) -> f64 {
        key_deadline((self.order >> 64) as u64)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) yields the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.order.cmp(&self.order)
    }
}

/// A min-heap of items keyed by deadline (seconds on the loop's clock).
#[derive(Debug)]
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    cancelled: usize,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap { heap: BinaryHeap::new(), next_seq: 0, cancelled: 0 }
    }
}

impl<T> TimerHeap<T> {
    /// An empty heap.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `item` for `when`.
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry::new(when, seq, item));
    }

    /// Number of entries, cancelled ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether the heap holds no entry.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Number of entries marked cancelled and not yet removed.
    pub fn cancelled_count(&self) -> usize {
        self.cancelled
    }

    /// Records that one entry still in the heap was cancelled.
    pub fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(Entry::when)
    }

    /// Removes cancelled entries as asyncio does before each poll: rebuild the heap when they
    /// are many, else pop the ones at the top. Removed items are appended to `removed`.
    pub fn purge_cancelled(&mut self, is_cancelled: impl Fn(&T) -> bool, removed: &mut Vec<T>) {
        let total = self.heap.len();
        if total > PURGE_MIN_TIMERS && self.cancelled * 2 > total {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(total - self.cancelled);
            for entry in entries {
                if is_cancelled(&entry.item) {
                    removed.push(entry.item);
                } else {
                    kept.push(entry);
                }
            }
            self.heap = BinaryHeap::from(kept);
            self.cancelled = 0;
        } else {
            while let Some(top) = self.heap.peek() {
                if !is_cancelled(&top.item) {
                    break;
                }
                let entry = self.heap.pop().expect("peeked entry exists");
                self.cancelled = self.cancelled.saturating_sub(1);
                removed.push(entry.item);
            }
        }
    }

    /// Pops every entry due before `end` (deadline `< end`), earliest first, into `due`.
    /// Cancelled entries popped here are returned too (the runner skips them); `is_cancelled`
    /// keeps the cancelled count right.
    pub fn pop_due(&mut self, end: f64, is_cancelled: impl Fn(&T) -> bool, due: &mut impl Extend<T>) {
        let mut popped = 0;
        while let Some(top) = self.heap.peek() {
            if top.when() >= end {
                break;
            }
            if popped >= BURST_MIN_POPPED && self.heap.len() <= popped * BURST_HEAP_PER_POPPED {
                return self.pop_due_burst(end, is_cancelled, due);
            }
            let entry = self.heap.pop().expect("peeked entry exists");
            self.hand_out(entry, &is_cancelled, due);
            popped += 1;
        }
    }

    /// `pop_due` for the rest of a burst: one pass splits the due entries from the others,
    /// which become the heap again; the due ones are sorted and handed out.
    fn pop_due_burst(&mut self, end: f64, is_cancelled: impl Fn(&T) -> bool, due: &mut impl Extend<T>) {
        let (mut ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap).into_vec().into_iter().partition(|entry| entry.when() < end);
        self.heap = BinaryHeap::from(rest);
        ready.sort_unstable_by_key(|entry| entry.order);
        for entry in ready {
            self.hand_out(entry, &is_cancelled, due);
        }
    }

    /// Hands a due entry's item to `due`, counting it out of the cancelled ones if it is.
    fn hand_out(&mut self, entry: Entry<T>, is_cancelled: &impl Fn(&T) -> bool, due: &mut impl Extend<T>) {
        if is_cancelled(&entry.item) {
            self.cancelled = self.cancelled.saturating_sub(1);
        }
        due.extend(std::iter::once(entry.item));
    }

    /// The items, in no particular order (for the garbage collector's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|entry| &entry.item)
    }

    /// Removes and returns every entry (used when the loop closes).
    pub fn drain_all(&mut self) -> Vec<T> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap).into_vec().into_iter().map(|e| e.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn pops_in_deadline_order_then_fifo() {
        let mut heap = TimerHeap::new();
        heap.push(3.0, "c");
        heap.push(1.0, "a1");
        heap.push(2.0, "b");
        heap.push(1.0, "a2");
        let mut due = Vec::new();
        heap.pop_due(2.5, |_| false, &mut due);
        assert_eq!(due, vec!["a1", "a2", "b"]);
        assert_eq!(heap.next_deadline(), Some(3.0));
    }

    #[test]
    fn deadline_equal_to_end_is_not_due() {
        let mut heap = TimerHeap::new();
        heap.push(1.0, 1);
        let mut due = Vec::new();
        heap.pop_due(1.0, |_| false, &mut due);
        assert!(due.is_empty());
    }

    #[test]
    fn cancelled_top_entries_are_popped_lazily() {
        let mut heap = TimerHeap::new();
        for i in 0..5 {
            heap.push(i as f64, i);
        }
        let cancelled = |i: &i32| *i < 2;
        heap.note_cancelled();
        heap.note_cancelled();
        let mut removed = Vec::new();
        heap.purge_cancelled(cancelled, &mut removed);
        assert_eq!(removed, vec![0, 1]);
        assert_eq!(heap.cancelled_count(), 0);
        assert_eq!(heap.next_deadline(), Some(2.0));
    }

    #[test]
    fn many_cancelled_entries_trigger_a_rebuild() {
        let mut heap = TimerHeap::new();
        for i in 0..300 {
            heap.push(i as f64, i);
        }
        // Cancel the later two thirds: none of them is at the top.
        for _ in 100..300 {
            heap.note_cancelled();
        }
        let calls = Cell::new(0);
        let mut removed = Vec::new();
        heap.purge_cancelled(
            |i| {
                calls.set(calls.get() + 1);
                *i >= 100
            },
            &mut removed,
        );
        assert_eq!(removed.len(), 200);
        assert_eq!(heap.len(), 100);
        assert_eq!(heap.cancelled_count(), 0);
        assert_eq!(calls.get(), 300);
    }

    #[test]
    fn few_cancelled_entries_below_the_top_stay() {
        let mut heap = TimerHeap::new();
        for i in 0..10 {
            heap.push(i as f64, i);
        }
        heap.note_cancelled();
        let mut removed = Vec::new();
        heap.purge_cancelled(|i| *i == 5, &mut removed);
        assert!(removed.is_empty());
        assert_eq!(heap.cancelled_count(), 1);
        let mut due = Vec::new();
        heap.pop_due(100.0, |i| *i == 5, &mut due);
        assert_eq!(due.len(), 10);
        assert_eq!(heap.cancelled_count(), 0);
    }

    #[test]
    fn deadline_keys_keep_the_order_of_deadlines() {
        let deadlines = [-1e300, -2.5, -0.0, 0.0, 1e-9, 0.5, 1.0, 3600.0, 1e300, f64::INFINITY];
        for pair in deadlines.windows(2) {
            assert!(deadline_key(pair[0]) < deadline_key(pair[1]), "{pair:?}");
        }
        for when in deadlines {
            assert_eq!(key_deadline(deadline_key(when)).to_bits(), when.to_bits());
        }
    }

    #[test]
    fn a_burst_of_due_timers_comes_out_in_order() {
        // Many due entries (the burst path) among later ones, with repeated deadlines: the
        // same order as one pop at a time, and the later entries stay in the heap.
        let mut heap = TimerHeap::new();
        let mut expected = Vec::new();
        for i in 0..5000u32 {
            let when = f64::from((i * 7919) % 100);
            heap.push(when, i);
            expected.push((when, i));
        }
        for i in 0..1000u32 {
            heap.push(1000.0 + f64::from(i), 5000 + i);
        }
        expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut due = Vec::new();
        heap.pop_due(100.0, |_| false, &mut due);
        assert_eq!(due, expected.iter().map(|&(_, i)| i).collect::<Vec<_>>());
        assert_eq!(heap.len(), 1000);
        assert_eq!(heap.next_deadline(), Some(1000.0));
    }

    #[test]
    fn cancelled_entries_of_a_burst_are_counted_out() {
        let mut heap = TimerHeap::new();
        for i in 0..1000 {
            heap.push(f64::from(i % 10), i);
        }
        for _ in 0..500 {
            heap.note_cancelled();
        }
        let mut due = Vec::new();
        heap.pop_due(10.0, |i| i % 2 == 0, &mut due);
        assert_eq!(due.len(), 1000);
        assert_eq!(heap.cancelled_count(), 0);
    }
}
