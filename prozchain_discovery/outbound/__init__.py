"""Outbound slots, feelers and anchors: the :class:`~.manager.OutboundManager` and its policy."""
