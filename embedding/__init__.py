"""What both C shims share to boot CPython inside a host: `csrc/embed.c` and its build options.

A package of its own so that neither front end (`pkcs11_compat`, `provider`) depends on the other;
it holds no policy and imports nothing of the core.
"""
