"""HTTP endpoints, one module per resource; ``nobusy.app`` mounts them."""
