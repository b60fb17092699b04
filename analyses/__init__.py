"""One-off analyses behind numbers quoted in README and docs (not part of the product; see analyses/README.md)."""
