"""libvirt helpers: one reconnecting connection (``connection``), the domain's live XML read into plain data and
libvirt's errors mapped to the contract's codes (``domain``), and the project's test guest as a libvirt domain
(``guest``). See shared/docs/libvirt.md for what was measured with libvirt 11.3 and QEMU 10."""
