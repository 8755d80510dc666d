"""The one gateway for every model call, its transports, the response cache and prices."""
