"""One-off analyses behind numbers quoted in README and docs (not part of the product; see lab/analyses/README.md)."""
