"""The shared Python core of mhsm-tls-offload.

Both front ends (the PKCS#11 module and the OpenSSL provider) call into this package; it does not
know which one called it. It reads `mhsm-pkcs11.conf`, gets tokens through azure-identity, talks to
Managed HSM over libcurl (pycurl), maps PKCS#11 attributes to key tags, and finds, creates and signs with keys.
"""
