"""The layerfs image store: an OCI image layout with unpacked layers and containers beside it."""
