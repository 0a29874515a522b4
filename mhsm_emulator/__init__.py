"""A local Azure Managed HSM + Entra ID emulator, served over real HTTPS on loopback.

It is the test backend of mhsm-tls-offload and the default of `make demo`. It shares no code with
`mhsm_core`: its job is to catch the core's mistakes, so it re-derives every wire fact on its own.
"""
