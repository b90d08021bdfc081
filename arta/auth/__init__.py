"""Authentication: the shared anonymous token, where it is kept, and how it is made and renewed.

``token`` is the ID token as data (its expiry read from the JWT); ``stores``
keeps it (a file-locked file shared by every process, or memory);
``authenticator`` signs up and refreshes, once for all the processes sharing a store.
"""

from arta.auth.authenticator import Authenticator
from arta.auth.stores import FileTokenStore, MemoryTokenStore, TokenStore
from arta.auth.token import Token

__all__ = ["Authenticator", "FileTokenStore", "MemoryTokenStore", "Token", "TokenStore"]
