// SPDX-License-Identifier: Apache-2.0
import CHMXShims

/// Keeps the data path's buffers on the heap instead of fresh mappings.
///
/// Socket reads (up to 256 KiB) and messages taken off a ring (up to 272 KiB) are
/// larger than glibc's default mmap threshold (128 KiB), and freeing them shrinks the
/// heap again: every such buffer then costs page faults and zeroed pages. With a 1 MiB
/// mmap threshold and 16 MiB of free heap kept before trimming, a bulk transfer reuses
/// the same memory (measured: the receiving gateway's CPU per GB fell by about a
/// third). Memory stays bounded by flow control; only what was freed is kept, up to
/// 16 MiB.
public func tuneAllocatorForDataPath() {
    _ = chmx_set_malloc_thresholds(1 << 20, 16 << 20)
}
