//! Page-aligned, zero-initialised byte buffers, as O_DIRECT needs.
//!
//! Large buffers (64 KiB and up) are kept per thread and reused: allocating a fresh
//! megabyte costs a mapping and a page fault per page, zeroing a reused one does not.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`]: a page, which satisfies O_DIRECT on every device.
pub const BUF_ALIGN: usize = 4096;
/// Buffers at least this large are reused.
const POOL_MIN: usize = 64 << 10;
/// Buffers kept per thread.
const POOL_DEPTH: usize = 4;

/// A heap buffer whose start is aligned to 4096 bytes (`BUF_ALIGN`).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

/// Free buffers of this thread: (pointer, capacity).
struct Pool(Vec<(NonNull<u8>, usize)>);

impl Drop for Pool {
    fn drop(&mut self) {
        for (ptr, cap) in self.0.drain(..) {
            // SAFETY: pooled pointers were allocated with this capacity and alignment.
            unsafe {
                dealloc(
                    ptr.as_ptr(),
                    Layout::from_size_align(cap, BUF_ALIGN).expect("valid layout"),
                )
            };
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool(Vec::new())) };
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out &[u8], like a Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf {
                ptr: NonNull::dangling(),
                len: 0,
                cap: 0,
            };
        }
        let cap = if len >= POOL_MIN {
            len.next_power_of_two()
        } else {
            len
        };
        if cap >= POOL_MIN
            && let Some(mut b) = AlignedBuf::for_overwrite_pooled(len, cap)
        {
            b.fill(0);
            return b;
        }
        let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer size overflows");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap }
    }

    fn for_overwrite_pooled(len: usize, cap: usize) -> Option<AlignedBuf> {
        POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            let i = p.0.iter().position(|&(_, c)| c == cap)?;
            Some(p.0.swap_remove(i).0)
        })
        .ok()
        .flatten()
        .map(|ptr| AlignedBuf { ptr, len, cap })
    }

    /// A buffer of `len` bytes whose contents are unspecified (a reused buffer keeps
    /// what it held; a new one is zeroed), for callers that overwrite all of it.
    pub fn for_overwrite(len: usize) -> AlignedBuf {
        let cap = if len >= POOL_MIN {
            len.next_power_of_two()
        } else {
            len
        };
        if cap >= POOL_MIN
            && let Some(b) = AlignedBuf::for_overwrite_pooled(len, cap)
        {
            return b;
        }
        AlignedBuf::zeroed(len)
    }

    /// True when `buf` starts at an address O_DIRECT accepts.
    pub fn is_aligned(buf: &[u8]) -> bool {
        (buf.as_ptr() as usize).is_multiple_of(BUF_ALIGN)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
        let (ptr, cap) = (self.ptr, self.cap);
        let kept = cap >= POOL_MIN
            && POOL
                .try_with(|p| {
                    let mut p = p.borrow_mut();
                    if p.0.len() < POOL_DEPTH {
                        p.0.push((ptr, cap));
                        true
                    } else {
                        false
                    }
                })
                .unwrap_or(false);
        if !kept {
            let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("layout was valid");
            // SAFETY: ptr was allocated by alloc_zeroed with this same layout.
            unsafe { dealloc(ptr.as_ptr(), layout) };
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for len in [1, 512, 4096, 1 << 20] {
            let b = AlignedBuf::zeroed(len);
            assert!(AlignedBuf::is_aligned(&b));
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
        }
        assert_eq!(AlignedBuf::zeroed(0).len(), 0);
    }

    #[test]
    fn reused_buffers_come_back_zeroed() {
        let mut b = AlignedBuf::zeroed(1 << 20);
        b.fill(0xee);
        drop(b);
        let b = AlignedBuf::zeroed(1 << 20);
        assert!(b.iter().all(|&x| x == 0));
        let c = AlignedBuf::zeroed((1 << 20) - 4096);
        assert!(c.iter().all(|&x| x == 0) && AlignedBuf::is_aligned(&c));
    }
}
