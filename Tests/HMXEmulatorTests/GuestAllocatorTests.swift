// SPDX-License-Identifier: Apache-2.0
import Testing

@testable import HMXEmulator

@Suite("Guest memory allocators")
struct GuestAllocatorTests {
    @Test("staging is FIFO: wraps around, never overlaps live allocations")
    func stagingArena() {
        var arena = StagingArena(size: 1024)
        var live: [(offset: Int, end: Int)] = []
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<10_000 {
            if live.count < 8, Bool.random(using: &rng),
                let allocation = arena.allocate(Int.random(in: 1...300, using: &rng))
            {
                for other in live {
                    #expect(allocation.end <= other.offset || allocation.offset >= other.end, "overlap")
                }
                #expect(allocation.offset >= 0 && allocation.end <= 1024 && allocation.offset % 16 == 0)
                live.append(allocation)
            } else if let oldest = live.first {
                arena.releaseOldest(end: oldest.end)
                live.removeFirst()
            }
        }
        #expect(arena.allocate(2048) == nil)
        while let oldest = live.first {
            arena.releaseOldest(end: oldest.end)
            live.removeFirst()
        }
        #expect(arena.allocate(1024)?.offset == 0)
    }

    @Test("pages: first fit, coalescing on release")
    func pageAllocator() {
        var pages = PageAllocator(firstPage: 10, pageCount: 60)
        let a = pages.allocate(10)
        let b = pages.allocate(20)
        let c = pages.allocate(30)
        #expect([a, b, c] == [10, 20, 40])
        #expect(pages.allocate(1) == nil)
        pages.release(start: 20, count: 20)
        #expect(pages.allocate(25) == nil)
        pages.release(start: 10, count: 10)
        #expect(pages.allocate(25) == 10)
        pages.release(start: 10, count: 25)
        pages.release(start: 40, count: 30)
        #expect(pages.freePages == 60)
        #expect(pages.free.count == 1)
    }
}
