"""QEMU: the guest image, running VMs, QMP and the guest's control channel, shared by the qemu driver,
the qemu collector source and ``hotplug qemu``."""
