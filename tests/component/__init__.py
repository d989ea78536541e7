"""Component tier: one real part (a nats-server, a tool binary such as promtool, a stand-in process)."""
