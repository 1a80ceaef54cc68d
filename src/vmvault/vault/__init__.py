"""The vault format: keys, chunk encoding, packs, index, block records, manifests, points."""
