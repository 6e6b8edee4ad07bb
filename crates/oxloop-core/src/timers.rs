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
//! An entry is two words: the deadline as an integer key with the same order, and the item.
//! Equal deadlines are ordered by the push number the heap stores in the item
//! ([`TimerItem`]), read only for such ties. When a burst of timers is due at once (a large
//! part of the heap), they are taken out by one partition and one sort instead of a heap pop
//! each, in place.

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

/// On a heap of at least `BURST_MIN_POPPED * BURST_HEAP_PER_POPPED` entries, `pop_due` first
/// looks at this many entries spread over the heap: if half of them are due, so is a large
/// part of the heap, and it takes the burst path at once rather than after many pops.
const BURST_SAMPLES: usize = 8;

/// Reorders `entries` so that those for which `keep` holds come first (in no particular
/// order); returns how many there are.
fn partition_kept_first<E>(entries: &mut [E], keep: impl Fn(&E) -> bool) -> usize {
    // [0, front) are kept, [back, len) are not; each entry is looked at once.
    let (mut front, mut back) = (0, entries.len());
    loop {
        while front < back && keep(&entries[front]) {
            front += 1;
        }
        if front == back {
            return front;
        }
        // entries[front] is not kept: find a kept entry after it to swap it with.
        let mut last = back - 1;
        while last > front && !keep(&entries[last]) {
            last -= 1;
        }
        if last == front {
            return front;
        }
        entries.swap(front, last);
        front += 1;
        back = last;
    }
}

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

/// What the heap needs of the items it holds: a place to keep the number the heap gives each
/// item when it is pushed (0, 1, 2, ...), and to be told when it leaves. Entries with equal
/// deadlines are ordered by that number, so they come out in push order; the number is read
/// only to break such ties, so the heap's entries stay two words (deadline key and item) and
/// cheap to move and compare.
pub trait TimerItem {
    /// Records the item's push number: it is now in the heap (called by [`TimerHeap::push`]).
    fn set_push_number(&self, number: u64);
    /// The number recorded by [`TimerItem::set_push_number`].
    fn push_number(&self) -> u64;
    /// The item has left the heap: popped as due, purged as cancelled, or drained.
    fn left_heap(&self);
}

/// One scheduled item and its deadline key.
#[derive(Debug)]
struct Entry<T> {
    key: u64,
    item: T,
}

impl<T: TimerItem> Entry<T> {
    fn when(&self) -> f64 {
        key_deadline(self.key)
    }

    /// The item, taken out of the heap.
    fn into_item(self) -> T {
        self.item.left_heap();
        self.item
    }

    /// Earliest deadline first; equal deadlines in push order.
    #[inline]
    fn due_order(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| self.item.push_number().cmp(&other.item.push_number()))
    }
}

impl<T: TimerItem> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.due_order(other) == Ordering::Equal
    }
}

impl<T: TimerItem> Eq for Entry<T> {}

impl<T: TimerItem> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: TimerItem> Ord for Entry<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) yields the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.due_order(self)
    }
}

/// A min-heap of items keyed by deadline (seconds on the loop's clock).
#[derive(Debug)]
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_push_number: u64,
    cancelled: usize,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap { heap: BinaryHeap::new(), next_push_number: 0, cancelled: 0 }
    }
}

impl<T: TimerItem> TimerHeap<T> {
    /// An empty heap.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `item` for `when`, giving it the next push number.
    pub fn push(&mut self, when: f64, item: T) {
        item.set_push_number(self.next_push_number);
        self.next_push_number += 1;
        self.heap.push(Entry { key: deadline_key(when), item });
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
            let mut entries = std::mem::take(&mut self.heap).into_vec();
            let kept = partition_kept_first(&mut entries, |entry| !is_cancelled(&entry.item));
            removed.extend(entries.drain(kept..).map(Entry::into_item));
            self.heap = BinaryHeap::from(entries);
            self.cancelled = 0;
        } else {
            while let Some(top) = self.heap.peek() {
                if !is_cancelled(&top.item) {
                    break;
                }
                let entry = self.heap.pop().expect("peeked entry exists");
                self.cancelled = self.cancelled.saturating_sub(1);
                removed.push(entry.into_item());
            }
        }
    }

    /// Pops every entry due before `end` (deadline `< end`), earliest first, into `due`.
    /// Cancelled entries popped here are returned too (the runner skips them); `is_cancelled`
    /// keeps the cancelled count right.
    pub fn pop_due(
        &mut self,
        end: f64,
        is_cancelled: impl Fn(&T) -> bool,
        due: &mut impl Extend<T>,
    ) {
        if self.heap.peek().is_some_and(|top| top.when() < end) && self.sample_looks_due(end) {
            return self.pop_due_burst(end, is_cancelled, due);
        }
        let mut popped = 0;
        while let Some(top) = self.heap.peek() {
            if top.when() >= end {
                break;
            }
            if popped >= BURST_MIN_POPPED && self.heap.len() <= popped * BURST_HEAP_PER_POPPED {
                return self.pop_due_burst(end, is_cancelled, due);
            }
            let entry = self.heap.pop().expect("peeked entry exists");
            due.extend(std::iter::once(Self::take_due(&mut self.cancelled, entry, &is_cancelled)));
            popped += 1;
        }
    }

    /// Whether half of [`BURST_SAMPLES`] entries spread over a large heap are due before `end`.
    fn sample_looks_due(&self, end: f64) -> bool {
        let entries = self.heap.as_slice();
        if entries.len() < BURST_MIN_POPPED * BURST_HEAP_PER_POPPED {
            return false;
        }
        let step = entries.len() / BURST_SAMPLES;
        let due = (0..BURST_SAMPLES).filter(|i| entries[i * step + step / 2].when() < end).count();
        due * 2 >= BURST_SAMPLES
    }

    /// `pop_due` for a burst (or its rest), in the heap's own buffer (a burst allocates
    /// nothing): one pass moves the due entries to its end, where they are sorted and handed
    /// out in one `extend` (which can reserve room for all of them); the entries left are
    /// made a heap again.
    fn pop_due_burst(
        &mut self,
        end: f64,
        is_cancelled: impl Fn(&T) -> bool,
        due: &mut impl Extend<T>,
    ) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        let kept = partition_kept_first(&mut entries, |entry| entry.when() >= end);
        entries[kept..].sort_unstable_by(Entry::due_order);
        due.extend(
            entries
                .drain(kept..)
                .map(|entry| Self::take_due(&mut self.cancelled, entry, &is_cancelled)),
        );
        self.heap = BinaryHeap::from(entries);
    }

    /// A due entry's item, taken out of the heap; counted out of `cancelled` (the heap's count
    /// of cancelled entries) if it is cancelled.
    fn take_due(cancelled: &mut usize, entry: Entry<T>, is_cancelled: &impl Fn(&T) -> bool) -> T {
        if is_cancelled(&entry.item) {
            *cancelled = cancelled.saturating_sub(1);
        }
        entry.into_item()
    }

    /// The items, in no particular order (for the garbage collector's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|entry| &entry.item)
    }

    /// Removes and returns every entry (used when the loop closes).
    pub fn drain_all(&mut self) -> Vec<T> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap).into_vec().into_iter().map(Entry::into_item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A test item: a value and the push number the heap gives it.
    #[derive(Debug)]
    struct Item<V> {
        value: V,
        number: Cell<u64>,
    }

    impl<V> TimerItem for Item<V> {
        fn set_push_number(&self, number: u64) {
            self.number.set(number);
        }

        fn push_number(&self) -> u64 {
            self.number.get()
        }

        fn left_heap(&self) {}
    }

    impl<V: PartialEq> PartialEq<V> for Item<V> {
        fn eq(&self, other: &V) -> bool {
            self.value == *other
        }
    }

    fn item<V>(value: V) -> Item<V> {
        Item { value, number: Cell::new(u64::MAX) }
    }

    #[test]
    fn pops_in_deadline_order_then_fifo() {
        let mut heap = TimerHeap::new();
        heap.push(3.0, item("c"));
        heap.push(1.0, item("a1"));
        heap.push(2.0, item("b"));
        heap.push(1.0, item("a2"));
        let mut due = Vec::new();
        heap.pop_due(2.5, |_| false, &mut due);
        assert_eq!(due, vec!["a1", "a2", "b"]);
        assert_eq!(heap.next_deadline(), Some(3.0));
    }

    #[test]
    fn deadline_equal_to_end_is_not_due() {
        let mut heap = TimerHeap::new();
        heap.push(1.0, item(1));
        let mut due = Vec::new();
        heap.pop_due(1.0, |_| false, &mut due);
        assert!(due.is_empty());
    }

    #[test]
    fn cancelled_top_entries_are_popped_lazily() {
        let mut heap = TimerHeap::new();
        for i in 0..5 {
            heap.push(i as f64, item(i));
        }
        let cancelled = |i: &Item<i32>| i.value < 2;
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
            heap.push(i as f64, item(i));
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
                i.value >= 100
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
            heap.push(i as f64, item(i));
        }
        heap.note_cancelled();
        let mut removed = Vec::new();
        heap.purge_cancelled(|i| i.value == 5, &mut removed);
        assert!(removed.is_empty());
        assert_eq!(heap.cancelled_count(), 1);
        let mut due = Vec::new();
        heap.pop_due(100.0, |i| i.value == 5, &mut due);
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
            heap.push(when, item(i));
            expected.push((when, i));
        }
        for i in 0..1000u32 {
            heap.push(1000.0 + f64::from(i), item(5000 + i));
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
            heap.push(f64::from(i % 10), item(i));
        }
        for _ in 0..500 {
            heap.note_cancelled();
        }
        let mut due = Vec::new();
        heap.pop_due(10.0, |i| i.value % 2 == 0, &mut due);
        assert_eq!(due.len(), 1000);
        assert_eq!(heap.cancelled_count(), 0);
    }

    #[test]
    fn partition_puts_kept_entries_first() {
        for len in 0..40usize {
            let mut entries: Vec<usize> = (0..len).map(|i| (i * 7) % 11).collect();
            let calls = Cell::new(0);
            let kept = partition_kept_first(&mut entries, |&v| {
                calls.set(calls.get() + 1);
                v < 5
            });
            assert_eq!(calls.get(), len);
            assert!(entries[..kept].iter().all(|&v| v < 5), "{entries:?}");
            assert!(entries[kept..].iter().all(|&v| v >= 5), "{entries:?}");
            let mut sorted = entries.clone();
            sorted.sort_unstable();
            let mut expected: Vec<usize> = (0..len).map(|i| (i * 7) % 11).collect();
            expected.sort_unstable();
            assert_eq!(sorted, expected);
        }
    }

    #[test]
    fn a_few_due_timers_of_a_large_heap_are_popped_one_by_one() {
        // The sample finds no burst: the due entries are popped and the rest stay a heap.
        let mut heap = TimerHeap::new();
        for i in 0..1000u32 {
            heap.push(f64::from((i * 7919) % 1000), item(i));
        }
        let mut due = Vec::new();
        heap.pop_due(10.0, |_| false, &mut due);
        let mut expected: Vec<u32> = (0..1000u32).filter(|i| (i * 7919) % 1000 < 10).collect();
        expected.sort_by_key(|i| (i * 7919) % 1000);
        assert_eq!(due, expected);
        assert_eq!(heap.len(), 990);
        assert_eq!(heap.next_deadline(), Some(10.0));
    }
}
