"""The services of Hot-Plug Heaven, each an independent asyncio process meeting the others on NATS."""
