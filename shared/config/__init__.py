"""The config file (``--config FILE``, ``$HOTPLUG_CONFIG``): typed sections that mirror each command's flags, and
``[[vm]]`` rules that give VMs their own autoscale mode, bounds and policy. Pure, apart from reading the file."""
