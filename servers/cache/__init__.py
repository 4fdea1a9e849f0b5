"""The disc cache manager (docs/architecture.md §4): physical-sector-aligned pages, wait lists, writeback.

``protocol`` holds the messages, ``geometry`` the page grid of a device,
``pages`` the pure page-state core and ``server`` the :class:`CacheServer` shell.
"""
