"""The reference SSL VPN web-mode portal (``hasyncd portal``), a client of the local API.

``app`` owns the routes and the session rules, ``sessions`` the three API
calls (create, look up, delete), ``users`` the scrypt users file, ``pages``
the HTML and ``tls`` the certificates.  Web sessions are hasyncd records and
survive a failover; tunnel sessions stay in the portal's memory and do not.
"""
