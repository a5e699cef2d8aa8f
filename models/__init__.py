"""Request and response data structures of the node, and their validation."""
