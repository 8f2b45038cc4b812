"""Outbound connections: the :class:`~.dialer.Dialer` component and its sans-IO race policy."""
