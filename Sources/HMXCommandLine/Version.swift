// SPDX-License-Identifier: Apache-2.0

/// The release version of hmx-gateway, hmx-emulator and hmx-cat, printed by `--version`.
/// The one place it is written: scripts/package reads it for the Debian package's version.
public let hmxVersion = "0.1.0"
