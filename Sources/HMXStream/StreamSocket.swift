// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// The local end of one connection, as the ``StreamDriver`` drives it: a socket's glue
/// handler in the gateway, a simulated application in tests. Called on the driver's
/// event loop.
public protocol StreamSocket: AnyObject {
    /// Bytes from the peer. Report when the socket took them with
    /// ``StreamDriver/localWriteCompleted(_:count:)``: that returns credit to the peer.
    func write(_ bytes: ByteBuffer)
    /// Pushes out what was written in this turn.
    func flush()
    /// Reads once more (the peer granted credit and its queue has room).
    func read()
    /// No more data will come: shut the output after the pending writes.
    func shutdownOutput()
    /// Close with a reset: the application sees an abort.
    func abort()
}
