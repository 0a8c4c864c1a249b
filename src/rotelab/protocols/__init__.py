"""Protocols: each file registers one (see rotelab.protocol). Their runs live and end by rotelab.runner."""
