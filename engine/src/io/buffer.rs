//! Aligned buffers for direct I/O, allocated once when a shard starts.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// A zeroed heap buffer whose address and length are multiples of `align`.
///
/// The buffer never moves or shrinks while it lives, which is what lets its
/// address be handed to the kernel for an in-flight write.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two);
    /// `len` is rounded up to a multiple of `align`.
    pub fn new(len: usize, align: usize) -> Self {
        assert!(
            align.is_power_of_two(),
            "alignment {align} is not a power of two"
        );
        let len = round_up(len.max(1), align);
        let layout =
            Layout::from_size_align(len, align).expect("aligned buffer layout within isize");
        if len >= LAZY_ZERO_BYTES
            && page_bytes().is_multiple_of(align)
            && len.is_multiple_of(page_bytes())
        {
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc::alloc(layout) };
            let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
            let mut b = AlignedBuf { ptr, layout };
            // Whole pages, zeroed by the kernel as they are first touched,
            // instead of written with zeros now: a large buffer takes
            // memory only where data lands in it.
            if !b.release_pages(0, len) {
                // SAFETY: ptr is valid for len bytes, owned here.
                unsafe { std::ptr::write_bytes(b.ptr.as_ptr(), 0, len) };
            }
            return b;
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// The alignment of its address and length.
    pub fn align(&self) -> usize {
        self.layout.align()
    }

    /// Always false: buffers have at least one alignment unit.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address, for handing to the kernel.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The mutable address, for reads from the kernel.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Hands the memory pages wholly inside `from..to` back to the kernel:
    /// they read as zeros from now on and take no memory until written
    /// again (a replay buffer's bytes already replayed). Parts of a page at
    /// either end are left as they are.
    pub fn release(&mut self, from: usize, to: usize) {
        assert!(
            from <= to && to <= self.len(),
            "release {from}..{to} of {self:?}"
        );
        let page = page_bytes();
        let (start, end) = (round_up(from, page), to / page * page);
        if start < end {
            // A failure only leaves the pages resident.
            let _ = self.release_pages(start, end);
        }
    }

    /// `MADV_DONTNEED` of the page-aligned `start..end`; whether it took.
    fn release_pages(&mut self, start: usize, end: usize) -> bool {
        debug_assert!(
            start.is_multiple_of(page_bytes())
                && end.is_multiple_of(page_bytes())
                && end <= self.len()
        );
        // SAFETY: `start..end` lies inside this buffer's allocation, which
        // it owns, and `&mut self` means no slice of it is alive. The
        // memory comes from the global allocator, private and anonymous:
        // MADV_DONTNEED makes its pages read as zeros, bytes a zeroed
        // buffer may hold, so the buffer stays valid.
        let r = unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(start).cast::<libc::c_void>(),
                end - start,
                libc::MADV_DONTNEED,
            )
        };
        r == 0
    }
}

/// Buffers from this size on are zeroed lazily, by the kernel.
const LAZY_ZERO_BYTES: usize = 2 << 20;

/// The memory page size.
fn page_bytes() -> usize {
    // SAFETY: sysconf only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AlignedBuf({} bytes, {}-aligned)",
            self.len(),
            self.align()
        )
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialized (zeroed at allocation) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// `n` rounded up to a multiple of `to`, a power of two.
pub(crate) const fn round_up(n: usize, to: usize) -> usize {
    (n + to - 1) & !(to - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let b = AlignedBuf::new(5000, 4096);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert!(b.iter().all(|&x| x == 0));
    }

    /// A large buffer is zero however it is made, and released pages read
    /// as zeros again while the rest keeps its bytes.
    #[test]
    fn large_and_released_buffers_read_as_zeros() {
        let mut b = AlignedBuf::new(8 << 20, 4096);
        assert!(b.iter().all(|&x| x == 0));
        b.fill(7);
        b.release(4096 + 1, 3 << 20);
        assert_eq!(b[4096 + 1], 7, "a partial page stays");
        assert!(b[2 * 4096..3 << 20].iter().all(|&x| x == 0));
        assert!(b[3 << 20..].iter().all(|&x| x == 7));
    }
}
