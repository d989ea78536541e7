"""Contracts and common code of Hot-Plug Heaven: messages, subjects, codec, clock, broker, bus, runtime."""
