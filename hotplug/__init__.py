"""The ``hotplug`` command line: runs the services, supervises them, and reads back what they did."""
