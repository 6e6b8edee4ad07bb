//! The ready queue: callbacks to run in the next loop iteration, first in, first out.
//!
//! Invariants: the queue is guarded by its owner (the loop keeps it in its state cell, borrowed
//! only with the GIL held and never while Python code runs). An iteration takes a *batch*: exactly
//! the items that were queued when it started ([`ReadyQueue::take_batch`]); items queued while the
//! batch runs wait for the next iteration. If a batch is interrupted, [`ReadyQueue::requeue_front`]
//! puts the rest back at the head, in order, so nothing is lost or reordered.

use std::collections::VecDeque;

/// A FIFO of items ready to run.
#[derive(Debug)]
pub struct ReadyQueue<T> {
    items: VecDeque<T>,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        ReadyQueue { items: VecDeque::new() }
    }
}

impl<T> ReadyQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an item at the tail.
    #[inline]
    pub fn push(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// Makes room for `additional` more items at once (rather than growing step by step).
    pub fn reserve(&mut self, additional: usize) {
        self.items.reserve(additional);
    }

    /// Number of queued items.
    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Moves every item queued now into `batch` (which the caller reuses between
    /// iterations to avoid allocating), leaving the queue empty.
    pub fn take_batch(&mut self, batch: &mut VecDeque<T>) {
        debug_assert!(batch.is_empty());
        std::mem::swap(&mut self.items, batch);
    }

    /// Puts the unrun remainder of an interrupted batch back at the head of the queue,
    /// ahead of anything queued since, preserving order.
    pub fn requeue_front(&mut self, rest: &mut VecDeque<T>) {
        while let Some(item) = rest.pop_back() {
            self.items.push_front(item);
        }
    }

    /// The queued items, head first (for the garbage collector's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Removes and returns every queued item (used when the loop closes).
    pub fn drain_all(&mut self) -> Vec<T> {
        self.items.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_holds_only_what_was_ready() {
        let mut q = ReadyQueue::new();
        q.push(1);
        q.push(2);
        let mut batch = VecDeque::new();
        q.take_batch(&mut batch);
        q.push(3); // queued while the batch runs
        assert_eq!(batch.into_iter().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(q.drain_all(), vec![3]);
    }

    #[test]
    fn interrupted_batch_is_requeued_in_order() {
        let mut q = ReadyQueue::new();
        for i in 0..4 {
            q.push(i);
        }
        let mut batch = VecDeque::new();
        q.take_batch(&mut batch);
        assert_eq!(batch.pop_front(), Some(0));
        q.push(10);
        q.requeue_front(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(q.drain_all(), vec![1, 2, 3, 10]);
    }
}
