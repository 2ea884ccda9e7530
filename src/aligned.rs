//! The global allocator: the system's, with a small cache per worker thread for
//! blocks aligned beyond malloc's 16 bytes, and for blocks past glibc's own cache.
//!
//! tokio aligns each task's cell and each socket's readiness state to 128 bytes, so a
//! new connection makes two or three such allocations and a new HTTP/2 stream one.
//! glibc serves them through `posix_memalign`, which carves an aligned block out of a
//! larger one and frees the pieces around it: about 1,000 instructions each, against
//! about 130 for a plain `malloc`. Here a worker thread keeps the aligned blocks it
//! frees (up to [`DEPTH`] of each of [`CLASSES`] sizes, none over [`LARGEST`] bytes)
//! and hands them out again for the same layout.
//!
//! A request's boxed futures and header tables are a few KiB each: past the 1,032
//! bytes of glibc's per-thread cache, each of their mallocs and frees walks glibc's
//! bins, and sweeps its fast bins into them, which slows the small blocks after it.
//! Blocks of malloc's alignment from [`PLAIN_OVER`] to [`LARGEST`] bytes are made
//! [`PLAIN_STEP`]-sized (rounded up), and a worker thread keeps up to [`BUCKET_DEPTH`]
//! of each such size (at most about 4 MiB in all).
//!
//! Small blocks of malloc's alignment (up to [`SMALL_LARGEST`] bytes) are kept the
//! same way, by size rounded up to [`SMALL_STEP`], up to [`SMALL_DEPTH`] of each
//! (at most about 1 MiB in all). glibc's own per-thread cache holds 7 blocks of a
//! size: a request frees more than that of several sizes at once (its header
//! table's entries, its strings, its futures' parts), and the rest went through
//! glibc's bins. Taking a kept block, or keeping one, is a few instructions.
//!
//! Every other allocation, and every thread that is not a worker (tokio's blocking
//! threads come and go, and would leave their blocks behind), goes straight to the
//! system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// What malloc guarantees on the platforms fulcrum runs on: larger alignments are
/// the ones cached.
const MALLOC_ALIGN: usize = 16;
/// Sizes kept apart, each with its own blocks.
pub const CLASSES: usize = 8;
/// Blocks kept per size.
pub const DEPTH: usize = 32;
/// Larger blocks are never kept.
pub const LARGEST: usize = 8192;
/// Blocks of malloc's alignment are rounded up and kept only when larger than this:
/// smaller ones are glibc's per-thread cache's.
pub const PLAIN_OVER: usize = 1032;
/// What the sizes of the larger blocks of malloc's alignment are rounded up to.
pub const PLAIN_STEP: usize = 512;
const BUCKETS: usize = LARGEST / PLAIN_STEP;
/// Blocks kept per rounded size: as many as a full HTTP/2 connection's streams hold
/// at once, and then some.
pub const BUCKET_DEPTH: usize = 64;
/// Small blocks of malloc's alignment up to this size are kept by size.
pub const SMALL_LARGEST: usize = 1024;
/// What the sizes of the small blocks are rounded up to (malloc's own granularity).
pub const SMALL_STEP: usize = 16;
const SMALLS: usize = SMALL_LARGEST / SMALL_STEP;
/// Small blocks kept per rounded size.
pub const SMALL_DEPTH: usize = 32;

/// The small size a block of malloc's alignment is kept by, if it is one.
#[inline]
fn small(layout: Layout) -> Option<usize> {
    (layout.align() <= MALLOC_ALIGN && layout.size() != 0 && layout.size() <= SMALL_LARGEST)
        .then(|| (layout.size() - 1) / SMALL_STEP)
}

/// The layout every block of small size `c` has.
#[inline]
fn small_layout(c: usize) -> Layout {
    // SAFETY: a non-zero multiple of 16 with malloc's (power of two) alignment.
    unsafe { Layout::from_size_align_unchecked((c + 1) * SMALL_STEP, MALLOC_ALIGN) }
}

/// The bucket of a block of malloc's alignment kept by size, if it is one.
#[inline]
fn bucket(layout: Layout) -> Option<usize> {
    (layout.align() <= MALLOC_ALIGN && layout.size() > PLAIN_OVER && layout.size() <= LARGEST)
        .then(|| (layout.size() - 1) / PLAIN_STEP)
}

/// The layout every block of bucket `b` has.
#[inline]
fn bucket_layout(b: usize) -> Layout {
    // SAFETY: a non-zero multiple of 512 with malloc's (power of two) alignment.
    unsafe { Layout::from_size_align_unchecked((b + 1) * PLAIN_STEP, MALLOC_ALIGN) }
}

/// The rounded size a block of malloc's alignment is kept by, small or not, if it
/// is one: blocks of the same are interchangeable.
#[derive(PartialEq, Eq)]
enum Kept {
    Small(usize),
    Bucket(usize),
}

#[inline]
fn kept(layout: Layout) -> Option<Kept> {
    small(layout)
        .map(Kept::Small)
        .or_else(|| bucket(layout).map(Kept::Bucket))
}

/// The global allocator (see the module's documentation).
pub struct Allocator;

struct Class {
    /// 0 while no size has claimed the class.
    size: Cell<usize>,
    align: Cell<usize>,
    len: Cell<usize>,
    blocks: [Cell<*mut u8>; DEPTH],
}

/// Blocks of one rounded size, at most `N`.
struct Bucket<const N: usize> {
    len: Cell<usize>,
    blocks: [Cell<*mut u8>; N],
}

impl<const N: usize> Bucket<N> {
    const fn new() -> Bucket<N> {
        Bucket {
            len: Cell::new(0),
            blocks: [const { Cell::new(std::ptr::null_mut()) }; N],
        }
    }

    #[inline]
    fn take(&self) -> Option<*mut u8> {
        let len = self.len.get().checked_sub(1)?;
        self.len.set(len);
        Some(self.blocks[len].get())
    }

    #[inline]
    fn put(&self, block: *mut u8) -> bool {
        let len = self.len.get();
        if len == N {
            return false;
        }
        self.blocks[len].set(block);
        self.len.set(len + 1);
        true
    }
}

struct Cache {
    on: Cell<bool>,
    classes: [Class; CLASSES],
    buckets: [Bucket<BUCKET_DEPTH>; BUCKETS],
    smalls: [Bucket<SMALL_DEPTH>; SMALLS],
}

impl Cache {
    const fn new() -> Cache {
        Cache {
            on: Cell::new(false),
            classes: [const {
                Class {
                    size: Cell::new(0),
                    align: Cell::new(0),
                    len: Cell::new(0),
                    blocks: [const { Cell::new(std::ptr::null_mut()) }; DEPTH],
                }
            }; CLASSES],
            buckets: [const { Bucket::new() }; BUCKETS],
            smalls: [const { Bucket::new() }; SMALLS],
        }
    }

    /// A kept block of bucket `b`, if there is one.
    #[inline]
    fn take_sized(&self, b: usize) -> Option<*mut u8> {
        self.buckets[b].take()
    }

    /// Keeps `block` of bucket `b` if this thread caches and there is room.
    #[inline]
    fn put_sized(&self, block: *mut u8, b: usize) -> bool {
        self.on.get() && self.buckets[b].put(block)
    }

    /// A kept block of small size `c`, if there is one.
    #[inline]
    fn take_small(&self, c: usize) -> Option<*mut u8> {
        self.smalls[c].take()
    }

    /// Keeps `block` of small size `c` if this thread caches and there is room.
    #[inline]
    fn put_small(&self, block: *mut u8, c: usize) -> bool {
        self.on.get() && self.smalls[c].put(block)
    }

    /// A kept block for `layout`, if there is one.
    #[inline(never)]
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let class = self
            .classes
            .iter()
            .find(|c| c.size.get() == layout.size() && c.align.get() == layout.align())?;
        let len = class.len.get().checked_sub(1)?;
        class.len.set(len);
        Some(class.blocks[len].get())
    }

    /// Keeps `block` (allocated for `layout`) if this thread caches and there is room.
    #[inline(never)]
    fn put(&self, block: *mut u8, layout: Layout) -> bool {
        if !self.on.get() || layout.size() > LARGEST || layout.size() == 0 {
            return false;
        }
        let class = self
            .classes
            .iter()
            .find(|c| c.size.get() == layout.size() && c.align.get() == layout.align())
            .or_else(|| self.classes.iter().find(|c| c.size.get() == 0));
        let Some(class) = class else {
            return false;
        };
        let len = class.len.get();
        if len == DEPTH {
            return false;
        }
        class.size.set(layout.size());
        class.align.set(layout.align());
        class.blocks[len].set(block);
        class.len.set(len + 1);
        true
    }
}

thread_local! {
    // No destructor: reachable from inside the allocator at any point of a thread's
    // life. A worker's kept blocks outlive it only when the process ends.
    static CACHE: Cache = const { Cache::new() };
}

/// Lets this thread keep the aligned blocks it frees: for the threads that live as
/// long as the server (the workers).
pub fn cache_this_thread() {
    let _ = CACHE.try_with(|c| c.on.set(true));
}

// SAFETY: every block comes from `System` with the layout it is asked for (rounded up
// to its bucket's for the blocks kept by size) and is given back to `System` with
// that layout; a kept block is handed out again only for exactly the layout it was
// allocated with (or one of its bucket), and only on the thread that keeps it.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(c) = small(layout) {
            if let Ok(Some(block)) = CACHE.try_with(|k| k.take_small(c)) {
                return block;
            }
            // SAFETY: a larger (or equal) layout than the caller's, of the same alignment.
            return unsafe { System.alloc(small_layout(c)) };
        }
        if let Some(b) = bucket(layout) {
            if let Ok(Some(block)) = CACHE.try_with(|c| c.take_sized(b)) {
                return block;
            }
            // SAFETY: a larger layout than the caller's, of the same alignment.
            return unsafe { System.alloc(bucket_layout(b)) };
        }
        if layout.align() > MALLOC_ALIGN {
            if let Ok(Some(block)) = CACHE.try_with(|c| c.take(layout)) {
                return block;
            }
        }
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if let Some(c) = small(layout) {
            if CACHE.try_with(|k| k.put_small(block, c)) != Ok(true) {
                // SAFETY: `block` came from `System` with its small size's layout.
                unsafe { System.dealloc(block, small_layout(c)) }
            }
            return;
        }
        if let Some(b) = bucket(layout) {
            if CACHE.try_with(|c| c.put_sized(block, b)) != Ok(true) {
                // SAFETY: `block` came from `System` with its bucket's layout.
                unsafe { System.dealloc(block, bucket_layout(b)) }
            }
            return;
        }
        if layout.align() > MALLOC_ALIGN && CACHE.try_with(|c| c.put(block, layout)) == Ok(true) {
            return;
        }
        // SAFETY: `block` came from `System` with `layout`.
        unsafe { System.dealloc(block, layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(c) = small(layout) {
            if let Ok(Some(block)) = CACHE.try_with(|k| k.take_small(c)) {
                // SAFETY: a kept block of at least `layout.size()` bytes, this
                // thread's alone.
                unsafe { block.write_bytes(0, layout.size()) };
                return block;
            }
            // SAFETY: a larger (or equal) layout than the caller's, of the same alignment.
            return unsafe { System.alloc_zeroed(small_layout(c)) };
        }
        if bucket(layout).is_some() {
            // SAFETY: as the caller promised for `layout`.
            let block = unsafe { self.alloc(layout) };
            if !block.is_null() {
                // SAFETY: at least `layout.size()` bytes, the caller's alone.
                unsafe { block.write_bytes(0, layout.size()) };
            }
            return block;
        }
        if layout.align() > MALLOC_ALIGN {
            if let Ok(Some(block)) = CACHE.try_with(|c| c.take(layout)) {
                // SAFETY: a kept block of `layout.size()` bytes, this thread's alone.
                unsafe { block.write_bytes(0, layout.size()) };
                return block;
            }
        }
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller promised: `new_size` is a valid size for the alignment.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old_kept, new_kept) = (kept(layout), kept(new));
        if old_kept.is_none() && new_kept.is_none() {
            // SAFETY: every such block, kept ones included, is `System`'s with `layout`.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        if old_kept.is_some() && old_kept == new_kept {
            // The rounded size holds it already.
            return block;
        }
        // Into or out of the blocks kept by size: moved, so that every block's size
        // stays the one its layout says.
        // SAFETY: `new` is valid (above); the copy stays within both blocks.
        unsafe {
            let moved = self.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            moved
        }
    }
}

/// Gives the system allocator's free memory back to the kernel after a burst.
///
/// glibc keeps what a burst of requests freed (their futures, buffers and backend
/// reads) in its heaps: without this, a process that once served thousands of
/// requests at once keeps that much resident for good, however few connections it
/// holds afterwards. A task on the runtime looks once a second, and when more than
/// [`TRIM_OVER`] bytes lie free, and more than a quarter of what is in use, has a
/// thread of the blocking pool ask glibc to give back every free page
/// (`malloc_trim`), so that a long trim holds up no worker. Under a steady load
/// little lies free, and nothing is given back only to be taken again.
///
/// The look is a task rather than a thread of its own: with one worker the process
/// then runs on one thread, and the kernel looks up each system call's file
/// descriptor without taking a reference on it (it must while another thread shares
/// the descriptor table).
pub async fn trim_periodically() {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (free, used) = free_and_used();
        if worth_trimming(free, used) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// How often the free memory is looked at.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Free bytes below this are left to the allocator.
pub const TRIM_OVER: usize = 16 << 20;

/// Whether `free` bytes held by the allocator, beside `used` bytes in use, are worth
/// giving back.
fn worth_trimming(free: usize, used: usize) -> bool {
    free > TRIM_OVER && free > used / 4
}

/// The allocator's free and in-use bytes, all arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_and_used() -> (usize, usize) {
    // SAFETY: a thread-safe glibc call without preconditions.
    let info = unsafe { libc::mallinfo2() };
    (info.fordblks, info.uordblks)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: a thread-safe glibc call without preconditions.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_and_used() -> (usize, usize) {
    (0, 0)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_given_back_only_when_much_lies_free_beside_what_is_used() {
        // A little free memory stays, however little is used.
        assert!(!worth_trimming(TRIM_OVER, 0));
        assert!(worth_trimming(TRIM_OVER + 1, 0));
        // Free memory a quarter or less of what is in use stays: a steady load's.
        assert!(!worth_trimming(100 << 20, 400 << 20));
        assert!(worth_trimming((100 << 20) + 1, 400 << 20));
        assert!(worth_trimming(64 << 20, 8 << 20));
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 128).unwrap()
    }

    #[test]
    fn a_freed_aligned_block_is_handed_out_again_only_for_its_own_layout() {
        std::thread::spawn(|| unsafe {
            cache_this_thread();
            let a = Allocator.alloc(layout(256));
            assert_eq!(a as usize % 128, 0);
            a.write_bytes(7, 256);
            Allocator.dealloc(a, layout(256));
            // Another size, or the same size less aligned: not that block.
            let b = Allocator.alloc(layout(384));
            assert_ne!(b, a);
            let c = Allocator.alloc(Layout::from_size_align(256, 64).unwrap());
            assert_ne!(c, a);
            // The same layout: that block, zeroed when asked.
            let d = Allocator.alloc_zeroed(layout(256));
            assert_eq!(d, a);
            assert!(std::slice::from_raw_parts(d, 256).iter().all(|&x| x == 0));
            Allocator.dealloc(b, layout(384));
            Allocator.dealloc(c, Layout::from_size_align(256, 64).unwrap());
            Allocator.dealloc(d, layout(256));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn large_plain_blocks_are_kept_by_rounded_size_small_ones_are_not() {
        std::thread::spawn(|| unsafe {
            cache_this_thread();
            let big = Layout::from_size_align(PLAIN_OVER + 8, 8).unwrap();
            let near = Layout::from_size_align(PLAIN_OVER + 100, 16).unwrap();
            let small = Layout::from_size_align(PLAIN_OVER, 8).unwrap();
            let a = Allocator.alloc(big);
            let s = Allocator.alloc(small);
            Allocator.dealloc(a, big);
            Allocator.dealloc(s, small);
            let kept = || CACHE.with(|c| c.buckets.iter().map(|b| b.len.get()).sum::<usize>());
            assert_eq!(kept(), 1);
            // Any size of the same bucket gets it, all of it usable.
            let b = Allocator.alloc(near);
            assert_eq!(b, a);
            b.write_bytes(1, near.size());
            assert_eq!(kept(), 0);
            Allocator.dealloc(b, near);
            assert_eq!(kept(), 1);
            // At most BUCKET_DEPTH of a size; none over LARGEST.
            let many: Vec<_> = (0..BUCKET_DEPTH + 4)
                .map(|_| Allocator.alloc(big))
                .collect();
            for &m in &many {
                Allocator.dealloc(m, big);
            }
            assert_eq!(kept(), BUCKET_DEPTH);
            let huge = Layout::from_size_align(LARGEST + 1, 8).unwrap();
            let h = Allocator.alloc(huge);
            Allocator.dealloc(h, huge);
            assert_eq!(kept(), BUCKET_DEPTH);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn small_blocks_are_kept_by_rounded_size_and_bounded() {
        std::thread::spawn(|| unsafe {
            cache_this_thread();
            let l = |size| Layout::from_size_align(size, 8).unwrap();
            let kept = || CACHE.with(|c| c.smalls.iter().map(|b| b.len.get()).sum::<usize>());
            let before = kept();
            let a = Allocator.alloc(l(20));
            Allocator.dealloc(a, l(20));
            assert_eq!(kept(), before + 1);
            // Any size that rounds to the same 32 bytes gets it, all of it usable.
            let b = Allocator.alloc(l(32));
            assert_eq!(b, a);
            b.write_bytes(1, 32);
            // Zeroed when asked, whatever it held.
            Allocator.dealloc(b, l(32));
            let z = Allocator.alloc_zeroed(l(17));
            assert_eq!(z, a);
            assert!(std::slice::from_raw_parts(z, 17).iter().all(|&x| x == 0));
            // Another rounded size: not that block.
            let c = Allocator.alloc(l(48));
            assert_ne!(c, z);
            // Growing within the rounded size keeps the block.
            assert_eq!(Allocator.realloc(z, l(17), 30), z);
            Allocator.dealloc(z, l(30));
            Allocator.dealloc(c, l(48));
            // At most SMALL_DEPTH of a size; none over SMALL_LARGEST (those go to
            // glibc's own cache, or the larger buckets).
            let many: Vec<_> = (0..SMALL_DEPTH + 4)
                .map(|_| Allocator.alloc(l(200)))
                .collect();
            let start = CACHE.with(|c| c.smalls[(200 - 1) / SMALL_STEP].len.get());
            for &m in &many {
                Allocator.dealloc(m, l(200));
            }
            assert_eq!(start, 0);
            assert_eq!(
                CACHE.with(|c| c.smalls[(200 - 1) / SMALL_STEP].len.get()),
                SMALL_DEPTH
            );
            let over = Allocator.alloc(l(SMALL_LARGEST + 1));
            let all = kept();
            Allocator.dealloc(over, l(SMALL_LARGEST + 1));
            assert_eq!(kept(), all);
            // More alignment than malloc's: not a small block.
            let aligned = Layout::from_size_align(64, 64).unwrap();
            let x = Allocator.alloc(aligned);
            assert_eq!(x as usize % 64, 0);
            Allocator.dealloc(x, aligned);
            assert_eq!(kept(), all);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn realloc_keeps_the_bytes_across_the_sizes_kept_and_not() {
        std::thread::spawn(|| unsafe {
            cache_this_thread();
            let mut size = 100;
            let mut block = Allocator.alloc(Layout::from_size_align(size, 8).unwrap());
            for i in 0..size {
                *block.add(i) = i as u8;
            }
            // Small -> a larger small size -> a bucket -> the same bucket -> another
            // bucket -> too large -> small -> a smaller small size.
            for new in [500, 2000, 2040, 5000, LARGEST + 100, 300, 40] {
                let old = Layout::from_size_align(size, 8).unwrap();
                block = Allocator.realloc(block, old, new);
                for i in 0..size.min(new) {
                    assert_eq!(
                        *block.add(i),
                        (i % 256) as u8,
                        "at {i} after {size} -> {new}"
                    );
                }
                for i in size.min(new)..new {
                    *block.add(i) = (i % 256) as u8;
                }
                size = new;
            }
            Allocator.dealloc(block, Layout::from_size_align(size, 8).unwrap());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_that_does_not_cache_keeps_nothing() {
        std::thread::spawn(|| unsafe {
            let a = Allocator.alloc(layout(256));
            Allocator.dealloc(a, layout(256));
            let small = Layout::from_size_align(64, 8).unwrap();
            let b = Allocator.alloc(small);
            Allocator.dealloc(b, small);
            CACHE.with(|c| assert!(c.classes.iter().all(|k| k.len.get() == 0)));
            CACHE.with(|c| assert!(c.smalls.iter().all(|k| k.len.get() == 0)));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn what_is_kept_is_bounded() {
        std::thread::spawn(|| unsafe {
            cache_this_thread();
            // More sizes than classes, more blocks than the depth, and blocks too
            // large to keep.
            let sizes: Vec<usize> = (1..=CLASSES + 2)
                .map(|i| i * 128)
                .chain([LARGEST + 128])
                .collect();
            let mut blocks = Vec::new();
            for &s in &sizes {
                for _ in 0..DEPTH + 4 {
                    blocks.push((Allocator.alloc(layout(s)), s));
                }
            }
            let distinct = blocks.len();
            for &(b, s) in &blocks {
                Allocator.dealloc(b, layout(s));
            }
            CACHE.with(|c| {
                assert!(c.classes.iter().all(|k| k.len.get() <= DEPTH));
                assert!(c.classes.iter().all(|k| k.size.get() <= LARGEST));
                let kept: usize = c.classes.iter().map(|k| k.len.get()).sum();
                assert_eq!(kept, CLASSES * DEPTH);
            });
            // Handed out again, every kept block once.
            let mut again = Vec::new();
            for &s in &sizes {
                for _ in 0..DEPTH {
                    let b = Allocator.alloc(layout(s));
                    assert_eq!(b as usize % 128, 0);
                    again.push((b, s));
                }
            }
            let mut ptrs: Vec<usize> = again.iter().map(|&(b, _)| b as usize).collect();
            ptrs.sort_unstable();
            ptrs.dedup();
            assert_eq!(ptrs.len(), again.len());
            assert!(distinct > again.len());
            for (b, s) in again {
                Allocator.dealloc(b, layout(s));
            }
        })
        .join()
        .unwrap();
    }
}
