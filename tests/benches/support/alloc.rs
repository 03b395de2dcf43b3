//! A global allocator that counts: every `alloc`, `alloc_zeroed` and `realloc` is one
//! allocation, and adds the bytes it asked for. Frees are not counted.
//!
//! The counters are process-wide atomics. They are read around a loop of operations that runs on
//! a current-thread runtime while nothing else in the process allocates (criterion is not timing
//! anything then), so the difference divided by the number of operations is what one operation
//! allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

#[inline]
fn record(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    allocations: u64,
    bytes: u64,
}

impl Snapshot {
    pub fn now() -> Self {
        Snapshot {
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
            bytes: BYTES.load(Ordering::Relaxed),
        }
    }

    /// Allocations and bytes per operation since `self`, over `ops` operations.
    pub fn per_op_since(self, later: Snapshot, ops: u64) -> (f64, f64) {
        let ops = ops as f64;
        (
            (later.allocations - self.allocations) as f64 / ops,
            (later.bytes - self.bytes) as f64 / ops,
        )
    }
}
