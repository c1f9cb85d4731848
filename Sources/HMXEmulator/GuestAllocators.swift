// SPDX-License-Identifier: Apache-2.0

/// A first-in-first-out allocator for hypercall arguments in the staging area.
///
/// Hypercalls complete in the order they were issued, so the oldest allocation is
/// always the first to be released; this makes allocation and release O(1) with no
/// per-request bookkeeping beyond the end offset.
struct StagingArena {
    let size: Int
    private(set) var head = 0
    private(set) var tail = 0
    private(set) var liveCount = 0

    init(size: Int) {
        precondition(size > 0 && size % 16 == 0)
        self.size = size
    }

    /// Reserves `count` bytes (rounded up to 16). Returns the offset, or `nil` if the
    /// arena is too full right now.
    mutating func allocate(_ count: Int) -> (offset: Int, end: Int)? {
        let count = (count + 15) & ~15
        if count > self.size { return nil }
        if self.liveCount == 0 {
            self.head = 0
            self.tail = 0
        }
        let offset: Int
        if self.liveCount == 0 || self.head > self.tail {
            if self.size - self.head >= count {
                offset = self.head
            } else if self.tail >= count {
                offset = 0
            } else {
                return nil
            }
        } else {
            guard self.tail - self.head >= count else { return nil }
            offset = self.head
        }
        self.head = offset + count
        self.liveCount += 1
        return (offset, offset + count)
    }

    /// Bytes between the oldest live allocation and the newest end (with a wrap, also
    /// the unused end of the arena that was skipped).
    var usedBytes: Int {
        if self.liveCount == 0 { return 0 }
        return self.head > self.tail ? self.head - self.tail : self.size - self.tail + self.head
    }

    /// Releases the oldest live allocation, which ended at `end`.
    mutating func releaseOldest(end: Int) {
        precondition(self.liveCount > 0)
        self.liveCount -= 1
        self.tail = end
        if self.liveCount == 0 {
            self.head = 0
            self.tail = 0
        }
    }
}

/// First-fit allocator of contiguous page runs (for ring memory).
///
/// Package-visible so that the in-process test link (HMXTestSupport) lays out domain
/// memory exactly as ``EmulatorLink`` does.
package struct PageAllocator {
    /// Free runs, sorted by start, never adjacent.
    package private(set) var free: [(start: Int, count: Int)]

    package init(firstPage: Int, pageCount: Int) {
        self.free = pageCount > 0 ? [(firstPage, pageCount)] : []
    }

    package var freePages: Int { self.free.reduce(0) { $0 + $1.count } }

    package mutating func allocate(_ count: Int) -> Int? {
        guard count > 0, let index = self.free.firstIndex(where: { $0.count >= count }) else { return nil }
        let start = self.free[index].start
        if self.free[index].count == count {
            self.free.remove(at: index)
        } else {
            self.free[index].start += count
            self.free[index].count -= count
        }
        return start
    }

    package mutating func release(start: Int, count: Int) {
        let index = self.free.firstIndex(where: { $0.start > start }) ?? self.free.count
        self.free.insert((start, count), at: index)
        // Coalesce with the following run, then with the preceding one.
        if index + 1 < self.free.count, self.free[index].start + self.free[index].count == self.free[index + 1].start {
            self.free[index].count += self.free[index + 1].count
            self.free.remove(at: index + 1)
        }
        if index > 0, self.free[index - 1].start + self.free[index - 1].count == self.free[index].start {
            self.free[index - 1].count += self.free[index].count
            self.free.remove(at: index)
        }
    }
}
