"""Where jobs are kept: the contract (``base``) and its stores (``files``, ``memory``).

Import what you need from the submodules; nothing is imported here, so a
module that needs only the contract does not load a store.
"""
