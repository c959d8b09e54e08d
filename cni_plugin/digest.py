"""SHA-256 for names derived from runtime strings (host veth names, record keys), without
hashlib: its import sets up OpenSSL's algorithms (~2.5 ms of every standalone call) where
CPython's built-in SHA-256 is all that is needed.  Same digests either way."""

try:
    from _sha2 import sha256  # CPython 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:  # another interpreter, or a build without it
        from hashlib import sha256

__all__ = ["sha256"]
