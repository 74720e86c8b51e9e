"""Built-in engines: extensions written on the public SDK (`ringfence.sdk`) and the stdlib only.

They get no back door: each is published through the `ringfence.extensions` entry point group, runs in
its own sandboxed process, and could have been written by a third-party vendor. An import-linter
contract forbids them the host side (broker, sensors, extensions, agent, response, outputs).

- `reputation`: denies the exec of files whose sha256 is on a blocklist.
"""
