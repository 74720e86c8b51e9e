"""Built-in engines: extensions written on the public SDK (`ringfence.sdk`) and the stdlib only.

They get no back door: each is published through the `ringfence.extensions` entry point group, runs in
its own sandboxed process, and could have been written by a third-party vendor. An import-linter
contract forbids them the host side (broker, sensors, extensions, agent, response, outputs).

- `ioc`: indicators of compromise (plain lists, STIX 2.1 bundles, sha256 blocklists): listed file hashes
  (sha256, sha1, md5) deny exec; listed addresses, networks and domains raise findings on network and
  DNS events.
- `reputation`: the IOC engine under its old id, `ringfence.reputation` (the file-reputation engine it
  grew from).
"""
