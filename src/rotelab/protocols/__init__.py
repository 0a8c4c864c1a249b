"""Protocols: each file registers one (see rotelab.registry). Their runs live and end by rotelab.runner."""
